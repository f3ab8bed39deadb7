"""Paged KV-cache bookkeeping: block allocation, prefix caching by content hash, LRU eviction.

Pure Python (no torch), so it is tested in microseconds. A block holds the K/V of `block_size`
consecutive tokens of one sequence. Full, computed blocks are registered under a SHA-256 chained over
the whole prefix (parent hash + this block's tokens), so a later request with the same prefix reuses
them (ref counted). A cryptographic hash, not Python's hash(): a hit serves another request's KV
without comparing tokens, and hash() of a tuple of ints is easy to collide on purpose. Freed blocks
keep their content and hash until they are reused: the free queue is the LRU list, evicted from the
front; blocks without a hash are put at the front (nothing to lose).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from runtime.engine.sequence import Sequence


def block_hash(parent: bytes | None, token_ids: list[int]) -> bytes:
    """SHA-256 of the parent block's hash (None for the first block) and this block's token ids."""
    digest = hashlib.sha256(b"\x01" + parent if parent is not None else b"\x00")
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_kvcache_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[bytes | None] = [None] * num_blocks
        self.free_blocks: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.cached_blocks: dict[bytes, int] = {}  # prefix hash (block_hash) -> block id
        self.num_prefix_query_tokens = 0
        self.num_prefix_hit_tokens = 0

    # -- queries ---------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free_blocks) / self.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.num_prefix_hit_tokens / self.num_prefix_query_tokens if self.num_prefix_query_tokens else 0.0

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_blocks(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of `seq`; at least one token is always left to compute."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        hits: list[int] = []
        parent: bytes | None = None
        for i in range((seq.num_tokens - 1) // bs):
            key = block_hash(parent, seq.token_ids[i * bs:(i + 1) * bs])
            block = self.cached_blocks.get(key)
            if block is None:
                break
            hits.append(block)
            parent = key
        return hits

    # -- allocation ------------------------------------------------------------------------------

    def allocate(self, seq: Sequence, cached: list[int], num_tokens: int) -> bool:
        """Give a sequence without blocks the `cached` prefix blocks plus room for `num_tokens` in all."""
        assert not seq.block_table, seq
        num_new = self.num_blocks_for(num_tokens) - len(cached)
        num_revived = sum(1 for b in cached if self.ref_counts[b] == 0)
        if num_new > len(self.free_blocks) - num_revived:
            return False
        for block in cached:
            if self.ref_counts[block] == 0:
                del self.free_blocks[block]
            self.ref_counts[block] += 1
            seq.block_hashes.append(self.block_hashes[block])
        seq.block_table = list(cached)
        seq.num_hashed_blocks = len(cached)
        for _ in range(num_new):
            seq.block_table.append(self._take_free_block())
        if self.enable_prefix_caching and seq.pending_kv is None:
            self.num_prefix_query_tokens += seq.num_tokens
            self.num_prefix_hit_tokens += len(cached) * self.block_size
        return True

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Make room for `num_new_tokens` more computed tokens of a running sequence."""
        num_new = self.num_blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if num_new > len(self.free_blocks):
            return False
        for _ in range(num_new):
            seq.block_table.append(self._take_free_block())
        return True

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; the tail goes first so eviction takes tails before heads."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, block
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
                if self.block_hashes[block] is None:
                    self.free_blocks.move_to_end(block, last=False)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_hashed_blocks = 0

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Share the parent's full computed blocks with `child`; the child recomputes the partial tail."""
        num_full = parent.num_computed_tokens // self.block_size
        child.block_table = parent.block_table[:num_full]
        for block in child.block_table:
            self.ref_counts[block] += 1
        child.block_hashes = parent.block_hashes[:num_full]
        child.num_hashed_blocks = len(child.block_hashes)
        child.num_computed_tokens = num_full * self.block_size

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the sequence's newly completed blocks under their prefix hash."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = seq.num_computed_tokens // bs
        for i in range(seq.num_hashed_blocks, num_full):
            parent = seq.block_hashes[i - 1] if i else None
            key = block_hash(parent, seq.token_ids[i * bs:(i + 1) * bs])
            seq.block_hashes.append(key)
            block = seq.block_table[i]
            if key not in self.cached_blocks and self.block_hashes[block] is None:
                self.cached_blocks[key] = block
                self.block_hashes[block] = key
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, num_full)

    def reset_prefix_cache(self) -> None:
        for key, block in list(self.cached_blocks.items()):
            if self.ref_counts[block] == 0:
                del self.cached_blocks[key]
                self.block_hashes[block] = None

    def _take_free_block(self) -> int:
        block, _ = self.free_blocks.popitem(last=False)
        key = self.block_hashes[block]
        if key is not None:
            del self.cached_blocks[key]
            self.block_hashes[block] = None
        self.ref_counts[block] = 1
        return block
