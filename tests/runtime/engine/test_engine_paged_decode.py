"""The compiled in-place paged decode kernel computes what the gather path computes (fp32 and int8
KV caches, GQA and MHA, ragged lengths across block boundaries), and the engine uses it."""

from __future__ import annotations

import pytest
import torch
from helpers.tolerances import max_magnitude, reduction_tolerance

from runtime.engine import LLMEngine, SamplingParams
from runtime.engine.layers import paged_decode
from runtime.engine.layers.attention import DecodeGroup, PagedKVCache, _decode_attention

needs_numba = pytest.mark.skipif(not paged_decode.AVAILABLE, reason="numba is not installed")

BLOCK_SIZE = 16
NUM_BLOCKS = 48


def make_cache(num_kv_heads: int, head_dim: int, int8: bool, seed: int = 0) -> PagedKVCache:
    torch.manual_seed(seed)
    cache = PagedKVCache(num_layers=2, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE, num_kv_heads=num_kv_heads,
                         head_dim=head_dim, dtype=torch.float32, device=torch.device("cpu"), int8=int8)
    slots = torch.arange(NUM_BLOCKS * BLOCK_SIZE)
    for layer in range(2):
        k = torch.randn(len(slots), num_kv_heads, head_dim)
        v = torch.randn(len(slots), num_kv_heads, head_dim)
        cache.write(layer, slots, k, v)
    return cache


def gather_reference(q, cache, layer, tables, lens, scale):
    """Each sequence alone through the torch gather path (no padding involved)."""
    rows = []
    for i, n in enumerate(lens.tolist()):
        group = DecodeGroup(start=0, end=1, block_tables=tables[i:i + 1, :-(-n // BLOCK_SIZE)], kv_len=n)
        rows.append(_decode_attention(q[i:i + 1], cache, layer, group, scale).reshape(1, -1))
    return torch.cat(rows)


def attention_tolerance(cache: PagedKVCache, layer: int, lens: torch.Tensor, head_dim: int) -> float:
    """Two fp32 attentions over the same K/V: the q.k scores sum head_dim terms, the output sums kv_len
    probability-weighted V rows (partial sums bounded by max|V|): sqrt(kv_len + head_dim) steps at max|V|."""
    _, v = cache.read_tokens(list(range(NUM_BLOCKS)), NUM_BLOCKS * BLOCK_SIZE)  # dequantized if int8
    return reduction_tolerance(int(lens.max()) + head_dim, max_magnitude(v[layer]))


@needs_numba
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8kv"])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(12, 4, 64), (4, 4, 32), (8, 2, 16)],
                         ids=["gqa3", "mha", "gqa4"])
def test_kernel_matches_gather_path(int8, num_heads, num_kv_heads, head_dim):
    cache = make_cache(num_kv_heads, head_dim, int8)
    # ragged: 1 token, exactly one block, one past a block boundary, several blocks, a long one
    lens = torch.tensor([1, 16, 17, 31, 32, 33, 95, 200])
    generator = torch.Generator().manual_seed(1)
    tables = torch.randint(0, NUM_BLOCKS, (len(lens), 13), generator=generator)
    q = torch.randn(len(lens), num_heads, head_dim, generator=generator)
    scale = head_dim ** -0.5
    for layer in range(2):
        got = paged_decode.paged_decode_attention(q, cache, layer, tables, lens, scale)
        want = gather_reference(q, cache, layer, tables, lens, scale)
        assert got.shape == (len(lens), num_heads * head_dim)
        # int8 K/V are dequantized by both paths (here in fp32 on the fly): only float rounding differs
        # (measured: at most 2 steps at max|V|, against sqrt(264) ~ 16)
        torch.testing.assert_close(got, want, rtol=0, atol=attention_tolerance(cache, layer, lens, head_dim))


@needs_numba
def test_kernel_reads_a_strided_query_and_one_block_table_column():
    cache = make_cache(2, 16, False)
    qk = torch.randn(3, 8 + 2, 16)  # the forward passes q as a view of the fused q/k tensor
    tables = torch.tensor([[5], [7], [9]])
    lens = torch.tensor([3, 16, 9])
    got = paged_decode.paged_decode_attention(qk[:, :8], cache, 1, tables, lens, 0.25)
    torch.testing.assert_close(got, gather_reference(qk[:, :8].contiguous(), cache, 1, tables, lens, 0.25),
                               rtol=0, atol=attention_tolerance(cache, 1, lens, 16))


def test_kernel_is_not_offered_for_caches_it_cannot_read():
    bf16 = PagedKVCache(num_layers=1, num_blocks=2, block_size=4, num_kv_heads=1, head_dim=8,
                        dtype=torch.bfloat16, device=torch.device("cpu"))
    assert not paged_decode.available(bf16)


@needs_numba
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
def test_engine_decodes_identically_with_and_without_the_kernel(llama_dir, kv_cache_dtype):
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 40, 9)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    tokens = {}
    for in_place in (True, False):
        engine = LLMEngine(llama_dir, num_kvcache_blocks=64, max_model_len=256, kv_cache_dtype=kv_cache_dtype)
        assert engine.runner.paged_decode_kernel
        engine.runner.paged_decode_kernel = in_place
        for i, prompt in enumerate(prompts):
            engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
        out = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                out[o.request_id] = o.outputs[0].token_ids
        tokens[in_place] = out
    assert tokens[True] == tokens[False]
