"""Weight-only int8 / fp8 and the int8 KV cache: memory saving reported, outputs close to full precision."""

from __future__ import annotations

import pytest
import torch

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


def test_int8_per_channel_roundtrip_error_is_small():
    weight = torch.randn(64, 128)
    q, scale = quantize_int8_per_channel(weight)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-6).all()
    for in_features in (128, 172):  # 172: not a multiple of 16, so not the int8 kernel (it would crash)
        weight = torch.randn(64, in_features)
        layer = Int8Linear(weight)
        assert layer.use_int8_kernel == (in_features % 16 == 0)
        x = torch.randn(3, in_features)
        assert torch.nn.functional.cosine_similarity(layer(x), x @ weight.t(), dim=-1).min() > 0.999


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
        assert (got - want).norm() / want.norm() < 5e-3  # bf16 activations: ~2e-3 relative
    x = torch.randn(linear.INT8_DEQUANT_MIN_ROWS, 128)
    small = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])  # row by row: the int8 kernel
    torch.testing.assert_close(layer(x), small, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("quantization", ["int8", "fp8"])
def test_weight_quantization_saves_memory_and_tracks_fp32(llama_dir, quantization):
    full = LLMEngine(llama_dir)
    quant = LLMEngine(llama_dir, quantization=quantization)
    report = quant.memory_report()
    assert report["linear_weight_bytes_unquantized"] == full.memory_report()["linear_weight_bytes"]
    assert report["linear_weight_saving"] >= 0.70
    ids = full.tokenizer.encode(PROMPT)
    similarity = torch.nn.functional.cosine_similarity(prefill_logits(full, ids), prefill_logits(quant, ids), dim=0)
    assert similarity > 0.99
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
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    ids = full.tokenizer.encode(PROMPT)
    for engine in (full, int8):
        engine.add_request("r", {"prompt_token_ids": ids}, params)
    outs = {}
    for name, engine in (("full", full), ("int8", int8)):
        while engine.has_unfinished_requests():
            for out in engine.step():
                outs[name] = out.outputs[0].token_ids
    agree = sum(a == b for a, b in zip(outs["full"], outs["int8"])) / len(outs["full"])
    assert agree >= 0.5  # a random tiny model has near-tied logits; real models agree far more


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", [None, "int8", "fp8"])
def test_cuda_bf16_paths(llama_dir, quantization):
    cpu = LLMEngine(llama_dir, device="cpu", dtype="float32")
    gpu = LLMEngine(llama_dir, device="cuda", dtype="bfloat16", quantization=quantization)
    ids = cpu.tokenizer.encode(PROMPT)
    similarity = torch.nn.functional.cosine_similarity(prefill_logits(cpu, ids), prefill_logits(gpu, ids).cpu(), dim=0)
    assert similarity > 0.98
