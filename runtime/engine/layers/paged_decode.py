"""Compiled (numba) decode attention that reads K/V in place from the paged cache (CPU).

The torch path gathers every decoding sequence's blocks into a dense [kv_heads, D, L, head_dim] copy
per layer and then reads that copy again in two bmm calls; with 64 decodes of ~400 tokens that copy is
~50 MB per layer per step. This kernel walks each sequence's block table instead: one task per
(sequence, KV head) computes the scores of the query heads grouped under that KV head (GQA), a softmax
in fp32 and the weighted V sum, reading each cached K and V row once. Ragged context lengths need no
padding or mask. An int8 cache (per token and head scales) is dequantized on the fly.

`available(cache)` is False when numba is not installed, for caches numba cannot read (bf16/fp16)
and off CPU; the caller then uses the torch gather path. Compiled code is cached on disk
(`cache=True`: ~3 s to compile once, ~0.3 s to load) and `warm_up()` does that at engine start so no
request pays for it. numba's thread count follows torch's (`torch.get_num_threads()`) and its OpenMP
layer is preferred, so the two never oversubscribe the CPUs.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:
    import numba
except ImportError:  # pragma: no cover - numba is a core dependency; the torch path stays as fallback
    numba = None

AVAILABLE = numba is not None
if AVAILABLE and "NUMBA_THREADING_LAYER" not in os.environ:
    # OpenMP first: interleaved with torch's OpenMP GEMMs it costs ~5% over the two run apart, the
    # 'workqueue' layer ~20% (threads contending); see benchmarks/results/engine_mixed_kernels.txt.
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def _paged_decode(q, k, v, k_scale, v_scale, block_tables, context_lens, num_kv_heads, block_size, scale,
                  quantized, out):  # pragma: no cover - compiled
    """q [D, heads * d]; k, v [kv_heads * slots, d] (rows of one layer's cache); k_scale, v_scale
    [kv_heads * slots] (read only when `quantized`); block_tables [D, nb]; context_lens [D];
    out [D, heads * d]. Flat indexing throughout: array views inside the loops would cost a
    reference count each."""
    num_seqs = q.shape[0]
    head_dim = k.shape[1]
    groups = q.shape[1] // head_dim // num_kv_heads
    group_width = groups * head_dim
    slots = k.shape[0] // num_kv_heads
    num_items = num_seqs * num_kv_heads
    f32 = np.float32
    for item in numba.prange(num_items):
        # Zig-zag over (sequence, KV head): with sequences sorted by length, each thread's static share
        # of the range mixes short and long contexts.
        half = item // 2
        task = half if item % 2 == 0 else num_items - 1 - half
        s = task // num_kv_heads
        h = task - s * num_kv_heads
        n = context_lens[s]
        nblocks = (n + block_size - 1) // block_size
        row0 = h * slots
        qs = np.empty(group_width, dtype=np.float32)
        for j in range(group_width):
            qs[j] = q[s, h * group_width + j]
        scores = np.empty(groups * n, dtype=np.float32)
        for b in range(nblocks):
            base = row0 + block_tables[s, b] * block_size
            t0 = b * block_size
            for o in range(min(block_size, n - t0)):
                r = base + o
                ks = f32(scale) * k_scale[r] if quantized else f32(scale)
                for g in range(groups):
                    dot = f32(0.0)
                    for j in range(head_dim):
                        dot += qs[g * head_dim + j] * f32(k[r, j])
                    scores[g * n + t0 + o] = dot * ks
        for g in range(groups):  # softmax in fp32
            top = scores[g * n]
            for t in range(1, n):
                top = max(top, scores[g * n + t])
            total = f32(0.0)
            for t in range(n):
                e = np.exp(scores[g * n + t] - top)
                scores[g * n + t] = e
                total += e
            inv = f32(1.0) / total
            for t in range(n):
                scores[g * n + t] *= inv
        acc = np.zeros(group_width, dtype=np.float32)
        for b in range(nblocks):
            base = row0 + block_tables[s, b] * block_size
            t0 = b * block_size
            for o in range(min(block_size, n - t0)):
                r = base + o
                vs = v_scale[r] if quantized else f32(1.0)
                for g in range(groups):
                    p = scores[g * n + t0 + o] * vs
                    for j in range(head_dim):
                        acc[g * head_dim + j] += p * f32(v[r, j])
        for j in range(group_width):
            out[s, h * group_width + j] = acc[j]


if AVAILABLE:
    _kernel = numba.njit(parallel=True, fastmath=True, cache=True, nogil=True, boundscheck=False)(_paged_decode)
else:  # pragma: no cover
    _kernel = None

_NO_SCALES = np.zeros(1, dtype=np.float32)


def available(cache) -> bool:
    """Whether `paged_decode_attention` can run on this PagedKVCache."""
    return AVAILABLE and cache.data.device.type == "cpu" and cache.dtype == torch.float32


def set_num_threads() -> int:
    """numba's thread count := torch's (bounded by the threads numba started with)."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


def paged_decode_attention(q: torch.Tensor, cache, layer: int, block_tables: torch.Tensor,
                           context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """q [D, heads, head_dim] (one new token per sequence, already written to the cache) ->
    [D, heads * head_dim], attending over each sequence's first context_lens[i] cached tokens."""
    num_seqs, num_heads, head_dim = q.shape
    out = torch.empty(num_seqs, num_heads * head_dim, dtype=torch.float32)
    rows = cache.num_kv_heads * cache.num_blocks * cache.block_size
    kv = cache.data[layer].numpy().reshape(2, rows, head_dim)
    if cache.int8:
        scales = cache.scales[layer].numpy().reshape(2, rows)
        k_scale, v_scale, quantized = scales[0], scales[1], True
    else:
        k_scale = v_scale = _NO_SCALES
        quantized = False
    with torch.profiler.record_function("strata::paged_decode_attention"):
        _kernel(q.reshape(num_seqs, -1).contiguous().numpy(), kv[0], kv[1], k_scale, v_scale, block_tables.numpy(),
                context_lens.numpy(), cache.num_kv_heads, cache.block_size, float(scale), quantized, out.numpy())
    return out


def warm_up(cache) -> None:
    """Compile (or load from numba's on-disk cache) the kernel for this cache's types before the
    first request, with the same array layouts the forward passes."""
    set_num_threads()
    table = torch.zeros(1, 1, dtype=torch.long)
    lens = torch.ones(1, dtype=torch.long)
    q = torch.zeros(1, cache.num_kv_heads, cache.head_dim)  # any group size: same compiled types
    paged_decode_attention(q, cache, 0, table, lens, 1.0)
