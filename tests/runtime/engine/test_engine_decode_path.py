"""The CPU decode speed-ups compute what the plain path computes: oneDNN-packed linears, the fused
residual add, rotary as a matrix, and the batch-1 decode fast path (logits and KV cache)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.tolerances import assert_same_top_k, decoder_tolerance, max_magnitude, reduction_tolerance

from runtime.engine import LLMEngine, SamplingParams
from runtime.engine.layers.linear import (
    DenseLinear,
    Int8Linear,
    PackedLinear,
    can_pack,
    linear_add,
    pack_linear,
)
from runtime.engine.layers.rotary import RotaryEmbedding

needs_onednn = pytest.mark.skipif(not can_pack(torch.zeros(1)), reason="oneDNN is not available in this torch build")


@needs_onednn
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_linear_matches_dense(with_bias):
    torch.manual_seed(0)
    weight = torch.randn(96, 48)
    bias = torch.randn(96) if with_bias else None
    dense = DenseLinear(weight, bias)
    packed = pack_linear(dense)
    assert isinstance(packed, PackedLinear)
    assert packed.weight_bytes == dense.weight_bytes
    for shape in ((1, 48), (7, 48), (2, 3, 48)):
        x = torch.randn(shape)
        expected = F.linear(x, weight, bias)
        # oneDNN and MKL sum the 48 products (+ bias) in other orders: sqrt(49) fp32 steps at the output scale
        tol = reduction_tolerance(48 + 1, max_magnitude(expected))
        torch.testing.assert_close(packed(x), expected, rtol=0, atol=tol)
    x, residual = torch.randn(5, 48), torch.randn(5, 96)
    expected = residual + F.linear(x, weight, bias)
    tol = reduction_tolerance(48 + 2, max_magnitude(expected))  # the residual is one more term of the sum
    torch.testing.assert_close(linear_add(packed, x, residual.clone()), expected, rtol=0, atol=tol)
    torch.testing.assert_close(linear_add(dense, x, residual.clone()), expected, rtol=0, atol=tol)


@needs_onednn
def test_pack_leaves_quantized_and_gpu_layers_alone():
    int8 = Int8Linear(torch.randn(32, 32))
    assert pack_linear(int8) is int8
    assert not can_pack(torch.zeros(2, 2, dtype=torch.float16))


@needs_onednn
def test_tied_lm_head_is_packed_and_embedding_stays_dense(tiny_model_factory):
    model = LLMEngine(tiny_model_factory("qwen2"), num_kvcache_blocks=8, max_model_len=128).runner.model
    assert model.args.tie_word_embeddings and isinstance(model.lm_head, PackedLinear)
    assert model.embed.layout == torch.strided
    assert all(isinstance(layer.qkv, PackedLinear) and layer.qkv.bias is not None for layer in model.layers)


def test_rotary_matrix_equals_apply():
    rotary = RotaryEmbedding(32, 64, 10000.0, None, torch.float32, torch.device("cpu"))
    x = torch.randn(1, 6, 32)
    for position in (0, 1, 17, 63):
        cos, sin = rotary.lookup(torch.tensor([position]))
        # each output is x_i*cos + x_j*sin (the matrix adds exact zeros besides): a sum of 2 terms of
        # magnitude up to max|x| each, rounded in other places by mm and by apply
        tol = reduction_tolerance(2, 2 * max_magnitude(x))
        torch.testing.assert_close(x[0] @ rotary.matrix(position), rotary.apply(x, cos, sin)[0], rtol=0, atol=tol)


@pytest.mark.parametrize(("family", "dtype"), [("llama", "float32"), ("qwen3", "float32"), ("llama", "bfloat16")])
def test_single_decode_fast_path_equals_general_path(tiny_model_factory, family, dtype):  # qwen3: q/k norm
    engine = LLMEngine(tiny_model_factory(family), block_size=4, num_kvcache_blocks=32, max_model_len=128, dtype=dtype)
    engine.add_request("r", {"prompt_token_ids": list(range(5, 18))},
                       SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    for _ in range(2):  # prefill, one decode: the next token's slot (14) is in an allocated block
        engine.step()
    seq = engine.scheduler.running[0]
    runner, model = engine.runner, engine.runner.model
    results = {}
    for fast in (True, False):  # fast first: the new token's slot is still empty, so its own K/V write is checked
        model.single_decode_fast_path = fast
        logits, sampled = runner.execute([seq], [1])
        assert sampled == [seq]
        k, v = runner.read_kv(seq, seq.num_computed_tokens + 1)
        results[fast] = (logits.clone(), k, v)
    # Same math, other kernels and summation orders (rotary as one mm, attention as bmm): the paths
    # differ by the rounding of every value they store, a random walk through the layers
    # (helpers.tolerances). bf16: sqrt(34) ~ 5.8 steps at the largest logit (measured: up to 2.4 over
    # 24 seeded models on AVX2; an off-by-one rotary position is 33-72 steps, a dropped token 21-86).
    args, dtype_ = model.args, getattr(torch, dtype)
    widest = max(args.hidden_size, args.intermediate_size, args.num_heads * args.head_dim, seq.num_computed_tokens + 1)
    fast_logits, general_logits = results[True][0], results[False][0]
    tol = decoder_tolerance(dtype_, general_logits, num_layers=args.num_layers, max_reduction_length=widest)
    torch.testing.assert_close(fast_logits, general_logits, rtol=0, atol=tol)
    assert_same_top_k(fast_logits, general_logits, k=1, tolerance=tol)  # the greedy token
    for i in (1, 2):  # K, V [layers, tokens, kv_heads, head_dim]: earlier tokens untouched, the new one close
        torch.testing.assert_close(results[True][i][:, :-1], results[False][i][:, :-1], rtol=0, atol=0)
        for layer in range(args.num_layers):  # layer l's K/V come out of at most l + 1 layers' roundings
            got, want = results[True][i][layer, -1], results[False][i][layer, -1]
            tol = decoder_tolerance(dtype_, want, num_layers=layer + 1, max_reduction_length=widest, with_head=False)
            torch.testing.assert_close(got, want, rtol=0, atol=tol)
        assert results[True][i][:, -1].abs().sum() > 0
