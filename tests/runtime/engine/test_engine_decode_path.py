"""The CPU decode speed-ups compute what the plain path computes: oneDNN-packed linears, the fused
residual add, rotary as a matrix, and the batch-1 decode fast path (logits and KV cache)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
        torch.testing.assert_close(packed(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    x, residual = torch.randn(5, 48), torch.randn(5, 96)
    expected = residual + F.linear(x, weight, bias)
    torch.testing.assert_close(linear_add(packed, x, residual.clone()), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(linear_add(dense, x, residual.clone()), expected, rtol=1e-5, atol=1e-5)


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
        torch.testing.assert_close(x[0] @ rotary.matrix(position), rotary.apply(x, cos, sin)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("family", "dtype"), [("llama", "float32"), ("qwen3", "float32"), ("llama", "bfloat16")])
def test_single_decode_fast_path_equals_general_path(tiny_model_factory, family, dtype):  # qwen3: q/k norm
    engine = LLMEngine(tiny_model_factory(family), block_size=4, num_kvcache_blocks=32, max_model_len=128, dtype=dtype)
    tol = 1e-5 if dtype == "float32" else 2e-2
    engine.add_request("r", {"prompt_token_ids": list(range(5, 18))},
                       SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    for _ in range(2):  # prefill, one decode: the next token's slot (14) is in an allocated block
        engine.step()
    seq = engine.scheduler.running[0]
    runner, model = engine.runner, engine.runner.model
    results = {}
    for fast in (False, True):
        model.single_decode_fast_path = fast
        logits, sampled = runner.execute([seq], [1])
        assert sampled == [seq]
        k, v = runner.read_kv(seq, seq.num_computed_tokens + 1)
        results[fast] = (logits.clone(), k, v)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=tol, atol=tol)
    for i in (1, 2):  # K, V [layers, tokens, kv_heads, head_dim]: earlier tokens untouched, the new one close
        torch.testing.assert_close(results[True][i][:, :-1], results[False][i][:, :-1], rtol=0, atol=0)
        torch.testing.assert_close(results[True][i], results[False][i], rtol=tol, atol=tol)
        assert results[True][i][:, -1].abs().sum() > 0
