"""BlockManager: allocation, prefix caching by content hash, ref counts, LRU eviction, fork."""

from __future__ import annotations

import pytest

from runtime.engine.block_manager import BlockManager
from runtime.engine.sampling_params import SamplingParams
from runtime.engine.sequence import Request, Sequence


def make_seq(tokens: list[int], order: int = 0) -> Sequence:
    return Request(f"r{order}", None, tokens, SamplingParams(), order, None).seqs[0]


def allocate(bm: BlockManager, seq: Sequence) -> int:
    cached = bm.find_cached_blocks(seq)
    assert bm.allocate(seq, cached, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq)
    return len(cached) * bm.block_size


def test_allocate_and_free_returns_every_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(list(range(10)))
    allocate(bm, seq)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    assert bm.append_slots(seq, 3)  # 13 tokens -> 4 blocks
    assert len(seq.block_table) == 4
    bm.free(seq)
    assert bm.num_free_blocks == 8 and seq.block_table == []
    assert all(count == 0 for count in bm.ref_counts)


def test_prefix_hit_shares_full_blocks_and_leaves_one_token_to_compute():
    bm = BlockManager(num_blocks=16, block_size=4)
    first = make_seq(list(range(12)), 0)
    allocate(bm, first)
    second = make_seq(list(range(8)) + [99, 98, 97], 1)  # shares two full blocks
    assert allocate(bm, second) == 8
    assert second.block_table[:2] == first.block_table[:2]
    assert bm.ref_counts[first.block_table[0]] == 2
    same = make_seq(list(range(12)), 2)  # identical prompt: the last block is recomputed
    assert allocate(bm, same) == 8
    assert bm.prefix_cache_hit_rate == pytest.approx(16 / 35)
    for seq in (first, second, same):
        bm.free(seq)
    assert bm.num_free_blocks == 16


def test_freed_cached_blocks_are_reused_until_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_seq(list(range(9)), 0)  # 2 full blocks cached + a partial one
    allocate(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4
    b = make_seq(list(range(9)), 1)
    assert allocate(bm, b) == 8  # revived from the free queue
    bm.free(b)
    c = make_seq([50 + i for i in range(16)], 2)  # needs all four blocks: evicts the cached ones
    assert allocate(bm, c) == 0
    bm.free(c)
    d = make_seq(list(range(9)), 3)
    assert bm.find_cached_blocks(d) == []
    assert len(bm.cached_blocks) == 4  # only c's four blocks remain cached


def test_eviction_takes_unhashed_blocks_first():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_seq(list(range(6)), 0)  # one full (hashed) + one partial block
    allocate(bm, a)
    partial = a.block_table[1]
    bm.free(a)
    assert next(iter(bm.free_blocks)) == partial


def test_allocate_fails_without_room_and_changes_nothing():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = make_seq(list(range(12)))
    assert not bm.allocate(seq, [], 12)
    assert bm.num_free_blocks == 2 and seq.block_table == []


def test_fork_shares_full_blocks_only():
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = make_seq(list(range(10)))
    allocate(bm, parent)
    child = Sequence(parent.request, list(range(10)), 10, index=1)
    bm.fork(parent, child)
    assert child.block_table == parent.block_table[:2] and child.num_computed_tokens == 8
    assert bm.ref_counts[parent.block_table[0]] == 2
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 8


def test_prefix_caching_disabled_never_hits():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = make_seq(list(range(9)), 0)
    allocate(bm, a)
    assert allocate(bm, make_seq(list(range(9)), 1)) == 0
