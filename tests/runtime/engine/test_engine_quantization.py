"""Weight-only int8 / fp8 and the int8 KV cache: memory saving reported, outputs close to full precision."""

from __future__ import annotations

import pytest
import torch
from helpers.tolerances import (
    decoder_roundings,
    decoder_tolerance,
    dtype_steps_tolerance,
    max_magnitude,
    quantized_relative_tolerance,
    relative_error,
    ulp,
)

from runtime.engine import LLM, LLMEngine, SamplingParams
from runtime.engine.layers import linear
from runtime.engine.layers.linear import Int8Linear, quantize_int8_per_channel

PROMPT = "The quick brown fox jumps over the lazy dog. Paged attention keeps the KV cache in blocks."


def prefill_logits(engine: LLMEngine, ids: list[int]) -> torch.Tensor:
    from runtime.engine.sequence import Request

    seq = Request("q", None, ids, SamplingParams(), 0, None).seqs[0]
    assert engine.block_manager.allocate(seq, [], len(ids))
    logits, _ = engine.runner.execute([seq], [len(ids)])
    engine.block_manager.free(seq)
    return logits[0]


def num_linears(engine: LLMEngine) -> int:
    return len(engine.runner.model.linear_layers())


def test_int8_per_channel_roundtrip_error_is_small():
    weight = torch.randn(64, 128)
    q, scale = quantize_int8_per_channel(weight)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    # half an int8 step, plus the fp32 rounding of w / scale and q * scale (at the row's largest weight)
    float_slack = 2 * ulp(torch.float32, weight.abs().amax(dim=1))[:, None]
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + float_slack).all()
    for in_features in (128, 172):  # 172: not a multiple of 16, so not the int8 kernel (it would crash)
        weight = torch.randn(64, in_features)
        layer = Int8Linear(weight)
        assert layer.use_int8_kernel == (in_features % 16 == 0)
        x = torch.randn(3, in_features)
        # one int8 rounding of every weight (+ on the kernel path bf16 activations, scale and product), row by row
        tol = quantized_relative_tolerance({"int8": 1, "bfloat16": 3 if layer.use_int8_kernel else 0})
        for got, want in zip(layer(x), x @ weight.t()):
            assert relative_error(got, want) < tol


@pytest.mark.parametrize("chunk_elements", [None, 40 * 128], ids=["whole", "row-chunks"])
def test_int8_kernels_agree_across_batch_sizes(monkeypatch, chunk_elements):
    """Small M runs torch's int8 kernel, M >= INT8_DEQUANT_MIN_ROWS the bf16-dequantized GEMM (in row
    chunks for large weights): both are bf16-activation approximations of the dequantized fp32 product."""
    if chunk_elements is not None:
        monkeypatch.setattr(linear, "INT8_SCRATCH_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    layer = Int8Linear(torch.randn(200, 128) * 0.05, torch.randn(200))
    assert layer.scratch_bytes == 2 * 128 * (40 if chunk_elements else 200)
    exact = torch.nn.functional.linear  # reference: fp32 activations, dequantized weight
    for rows in (1, linear.INT8_DEQUANT_MIN_ROWS - 1, linear.INT8_DEQUANT_MIN_ROWS, 64):
        x = torch.randn(rows, 128)
        want = exact(x, layer.qweight.float() * layer.scale[:, None], layer.bias)
        got = layer(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        # bf16 roundings of the activations, of the kernel's scale and of the output (measured ~2e-3)
        assert relative_error(got - layer.bias, want - layer.bias) < quantized_relative_tolerance({"bfloat16": 3})
    x = torch.randn(linear.INT8_DEQUANT_MIN_ROWS, 128)
    small = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])  # row by row: the int8 kernel
    # Same bf16 activations; the paths differ in the bf16 rounding of the product (one step at most)
    # and of the int8 kernel's scale (half a step): 2 bf16 steps at the product's scale (before the bias).
    torch.testing.assert_close(layer(x), small, rtol=0, atol=dtype_steps_tolerance(torch.bfloat16, small - layer.bias, 2))


@pytest.mark.parametrize("quantization", ["int8", "fp8"])
def test_weight_quantization_saves_memory_and_tracks_fp32(llama_dir, quantization):
    full = LLMEngine(llama_dir)
    quant = LLMEngine(llama_dir, quantization=quantization)
    report = quant.memory_report()
    assert report["linear_weight_bytes_unquantized"] == full.memory_report()["linear_weight_bytes"]
    assert report["linear_weight_saving"] >= 0.70
    ids = full.tokenizer.encode(PROMPT)
    # every weight of every linear rounded once to the int8 / fp8 grid (the int8 kernels also round
    # activations and products to bf16); measured 0.016 (int8) and 0.089 (fp8) against 0.045 and 0.22
    linears = num_linears(full)
    roundings = {"int8": linears, "bfloat16": 2 * linears} if quantization == "int8" else {"fp8": linears}
    assert relative_error(prefill_logits(quant, ids), prefill_logits(full, ids)) < quantized_relative_tolerance(roundings)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    tokens = LLM.__new__(LLM)
    tokens.llm_engine, tokens._ids = quant, iter(range(10))
    assert len(tokens.generate(PROMPT, params)[0].outputs[0].token_ids) == 16


def test_int8_kv_cache_saves_memory_and_tracks_full_cache(llama_dir):
    full = LLMEngine(llama_dir, num_kvcache_blocks=64)
    int8 = LLMEngine(llama_dir, num_kvcache_blocks=64, kv_cache_dtype="int8")
    report = int8.memory_report()
    head_dim = int8.runner.model.args.head_dim
    # int8 values plus one fp32 scale per token and head: (head_dim + 4) bytes instead of 4 * head_dim
    assert report["kv_cache_saving"] == pytest.approx(1 - (head_dim + 4) / (4 * head_dim))
    assert report["kv_cache_bytes"] == pytest.approx((1 - report["kv_cache_saving"]) * full.memory_report()["kv_cache_bytes"])
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=5)
    ids = full.tokenizer.encode(PROMPT)
    for engine in (full, int8):
        engine.add_request("r", {"prompt_token_ids": ids}, params)
    outs = {}
    for name, engine in (("full", full), ("int8", int8)):
        while engine.has_unfinished_requests():
            for out in engine.step():
                outs[name] = out.outputs[0]
    # What a greedy user sees: the same tokens until (if ever) a step where the full cache's top two
    # logits were within reach of the int8 error. That error: one int8 rounding of K and of V per
    # layer, as a relative error of the logits, times the largest logit.
    num_layers = full.runner.model.args.num_layers
    tol = quantized_relative_tolerance({"int8": 2 * num_layers}) * max_magnitude(prefill_logits(full, ids))
    full_out, int8_out = outs["full"], outs["int8"]
    for step, (want, got) in enumerate(zip(full_out.token_ids, int8_out.token_ids)):
        if want != got:  # after a divergence the prefixes differ: nothing more to compare
            choices = full_out.logprobs[step]
            assert got in choices and choices[got] >= choices[want] - 2 * tol, (
                f"step {step}: int8 KV chose {got} over {want}, which led by more than 2 * {tol:.3g}")
            break


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", [None, "int8", "fp8"])
def test_cuda_bf16_paths(llama_dir, quantization):
    cpu = LLMEngine(llama_dir, device="cpu", dtype="float32")
    gpu = LLMEngine(llama_dir, device="cuda", dtype="bfloat16", quantization=quantization)
    ids = cpu.tokenizer.encode(PROMPT)
    want, got = prefill_logits(cpu, ids), prefill_logits(gpu, ids).cpu()
    args = cpu.runner.model.args
    widest = max(args.hidden_size, args.intermediate_size, args.num_heads * args.head_dim, len(ids))
    if quantization is None:  # bf16 stores and bf16 weights, as test_bfloat16_on_cpu_tracks_float32
        tol = decoder_tolerance(torch.bfloat16, want, num_layers=args.num_layers, max_reduction_length=widest,
                                extra_roundings=4 * args.num_layers + 2)
        torch.testing.assert_close(got, want, rtol=0, atol=tol)
        return
    # bf16 stores (+ the embedding's weights), and every linear's weights on the int8 / fp8 grid; fp8 on
    # sm_89+ (torch._scaled_mm) rounds the activations to fp8 too
    stores = decoder_roundings(args.num_layers, dtype=torch.bfloat16, max_reduction_length=widest) + 1
    fp8_activations = quantization == "fp8" and torch.cuda.get_device_capability() >= (8, 9)
    roundings = {"bfloat16": stores, quantization: num_linears(cpu) * (2 if fp8_activations else 1)}
    assert relative_error(got, want) < quantized_relative_tolerance(roundings)
