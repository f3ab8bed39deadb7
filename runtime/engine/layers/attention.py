"""Attention over a paged KV cache, and the cache itself.

Cache layout per layer: [num_kv_heads, num_blocks * block_size, head_dim] for K and for V, so that
gathering a sequence's blocks yields [kv_heads, tokens, head_dim] slabs that SDPA reads without
another copy. Decodes (one query each) are batched: on CPU with numba, all of them in one compiled
kernel that reads the blocks in place (layers/paged_decode.py); otherwise per group of similar
lengths with one gather, their query heads grouped under their KV head (GQA without repeating K/V).
Each prefill chunk gets its own causal SDPA call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from runtime.engine.layers.paged_decode import paged_decode_attention


@dataclass(slots=True)
class PrefillChunk:
    start: int  # rows of this chunk in the flattened batch
    end: int
    num_cached: int  # tokens of the sequence already in the cache before this chunk
    block_table: torch.Tensor | None = None  # [num_blocks] when num_cached > 0
    mask: torch.Tensor | None = None  # [n, num_cached + n] bool (bottom-right causal)


@dataclass(slots=True)
class DecodeGroup:
    """Single-token decodes of similar context length, attended in one batched call."""

    start: int  # rows of this group in the flattened batch
    end: int
    block_tables: torch.Tensor  # [D, max_blocks]
    kv_len: int  # the longest context in the group
    mask: torch.Tensor | None = None  # [1, D, 1, kv_len] True on padding; None if lengths are equal
    context_lens: torch.Tensor | None = None  # [D]: set when the compiled in-place kernel attends this group


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] cache slot of every new token
    num_decodes: int = 0  # the first `num_decodes` rows are single-token decodes
    decode_groups: list[DecodeGroup] = field(default_factory=list)
    prefills: list[PrefillChunk] = field(default_factory=list)


class PagedKVCache:
    """K/V blocks for every layer; `int8=True` stores int8 values with a scale per token and head."""

    def __init__(self, *, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device, int8: bool = False):
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.int8 = int8
        num_slots = num_blocks * block_size
        shape = (num_layers, 2, num_kv_heads, num_slots, head_dim)
        self.data = torch.zeros(shape, dtype=torch.int8 if int8 else dtype, device=device)
        self.scales = (torch.zeros((num_layers, 2, num_kv_heads, num_slots, 1), dtype=dtype, device=device)
                       if int8 else None)

    @staticmethod
    def bytes_per_block(*, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype, int8: bool) -> int:
        element = dtype.itemsize
        per_token_head = head_dim + element if int8 else head_dim * element
        return 2 * num_layers * block_size * num_kv_heads * per_token_head

    @property
    def nbytes(self) -> int:
        extra = self.scales.numel() * self.scales.element_size() if self.scales is not None else 0
        return self.data.numel() * self.data.element_size() + extra

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v ([T, kv_heads, head_dim]) at `slots`."""
        kv = self.data[layer]
        if self.int8:
            for i, x in enumerate((k, v)):
                scale = (x.abs().amax(dim=-1, keepdim=True).float() / 127.0).clamp_(min=1e-8)
                q = torch.round(x.float() / scale).to(torch.int8)
                kv[i].index_copy_(1, slots, q.transpose(0, 1))
                self.scales[layer, i].index_copy_(1, slots, scale.to(self.dtype).transpose(0, 1))
        else:
            kv[0].index_copy_(1, slots, k.transpose(0, 1))
            kv[1].index_copy_(1, slots, v.transpose(0, 1))

    def gather(self, layer: int, block_tables: torch.Tensor, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the sequences in `block_tables` [B, nb]: each [kv_heads, B, kv_len, head_dim], one
        copy (the block gather) whose [kv_len, head_dim] slabs matmul reads in place."""
        batch = block_tables.shape[0]
        flat = block_tables.reshape(-1)
        blocks = self.data[layer].view(2, self.num_kv_heads, self.num_blocks, self.block_size * self.head_dim)
        picked = blocks.index_select(2, flat).view(2, self.num_kv_heads, batch, -1, self.head_dim)
        if self.int8:
            scales = self.scales[layer].view(2, self.num_kv_heads, self.num_blocks, self.block_size)
            s = scales.index_select(2, flat).view(2, self.num_kv_heads, batch, -1, 1)
            picked = picked[:, :, :, :kv_len].to(self.dtype) * s[:, :, :, :kv_len]
        else:
            picked = picked[:, :, :, :kv_len]
        return picked[0], picked[1]

    def gather_all_layers(self, block_table: torch.Tensor, kv_len: int) -> torch.Tensor:
        """Every layer's K and V of one sequence in one copy: [layers, 2, kv_heads, >= kv_len, head_dim]
        (the batch-1 decode step gathers once per step instead of once per layer)."""
        if self.int8:
            raise ValueError("gather_all_layers reads a dense cache; this one is int8")
        rows = self.num_layers * 2 * self.num_kv_heads
        blocks = self.data.view(rows, self.num_blocks, self.block_size * self.head_dim)
        picked = blocks.index_select(1, block_table[:-(-kv_len // self.block_size)])
        return picked.view(self.num_layers, 2, self.num_kv_heads, -1, self.head_dim)

    def write_slot_all_layers(self, slot: torch.Tensor, kv: torch.Tensor) -> None:
        """Store one token's K/V of every layer ([layers, 2, kv_heads, head_dim]) at `slot` ([1])."""
        self.data.index_copy_(3, slot, kv.unsqueeze(3))

    def read_tokens(self, block_table: list[int], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All layers' K and V of one sequence's first `num_tokens`: [layers, tokens, kv_heads, head_dim]."""
        table = torch.tensor(block_table, dtype=torch.long, device=self.data.device)
        ks, vs = [], []
        for layer in range(self.num_layers):
            k, v = self.gather(layer, table[None, :], num_tokens)
            ks.append(k[:, 0].transpose(0, 1))
            vs.append(v[:, 0].transpose(0, 1))
        return torch.stack(ks), torch.stack(vs)

    def write_tokens(self, block_table: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Inverse of read_tokens: k, v [layers, tokens, kv_heads, head_dim] into the first slots."""
        num_tokens = k.shape[1]
        positions = torch.arange(num_tokens)
        table = torch.tensor(block_table, dtype=torch.long)
        slots = (table[positions // self.block_size] * self.block_size + positions % self.block_size)
        slots = slots.to(self.data.device)
        for layer in range(self.num_layers):
            self.write(layer, slots, k[layer].to(self.data.device, self.dtype), v[layer].to(self.data.device, self.dtype))


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: PagedKVCache, layer: int,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q [T, heads, head_dim], k/v [T, kv_heads, head_dim] of the new tokens -> [T, heads * head_dim]."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    cache.write(layer, meta.slot_mapping, k, v)
    if len(meta.decode_groups) == 1 and not meta.prefills:
        return _decode_attention(q, cache, layer, meta.decode_groups[0], scale).reshape(num_tokens, -1)
    out = torch.empty(num_tokens, num_heads * head_dim, dtype=q.dtype, device=q.device)
    for group in meta.decode_groups:
        attn = _decode_attention(q[group.start:group.end], cache, layer, group, scale)
        out[group.start:group.end] = attn.reshape(group.end - group.start, -1)
    for chunk in meta.prefills:
        n = chunk.end - chunk.start
        qc = q[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)  # [1, heads, n, d]
        if chunk.num_cached == 0:
            kc = k[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)
            vc = v[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, scale=scale,
                                               enable_gqa=num_kv_heads != num_heads)
        else:
            kc, vc = cache.gather(layer, chunk.block_table[None, :], chunk.num_cached + n)
            o = F.scaled_dot_product_attention(qc, kc.transpose(0, 1), vc.transpose(0, 1), attn_mask=chunk.mask, scale=scale,
                                               enable_gqa=num_kv_heads != num_heads)
        out[chunk.start:chunk.end] = o[0].transpose(0, 1).reshape(n, -1)
    return out


def _decode_attention(q: torch.Tensor, cache: PagedKVCache, layer: int, group: DecodeGroup,
                      scale: float) -> torch.Tensor:
    """The compiled kernel reading K/V in place when the runner chose it (`group.context_lens`), else
    gather + plain matmul-softmax-matmul: for one query per sequence that beats the SDPA kernels on
    CPU, whose per-call setup costs more than this whole computation."""
    num_decodes, num_heads, head_dim = q.shape
    if group.context_lens is not None:
        return paged_decode_attention(q, cache, layer, group.block_tables, group.context_lens, scale)
    k, v = cache.gather(layer, group.block_tables, group.kv_len)  # [kv_heads, D, L, d]
    groups = num_heads // cache.num_kv_heads
    # [kv_heads, D, groups, d]: query heads grouped under their KV head (GQA without repeating K/V)
    qg = q.view(num_decodes, cache.num_kv_heads, groups, head_dim).transpose(0, 1)
    scores = torch.matmul(qg, k.transpose(-1, -2))
    if group.mask is not None:
        scores.masked_fill_(group.mask, float("-inf"))
    probs = torch.softmax(scores.mul_(scale), dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs, v).transpose(0, 1)  # [D, kv_heads, groups, d]
