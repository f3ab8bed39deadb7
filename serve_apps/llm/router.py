"""Serve request routers: prefill by prefix-cache affinity then load; decode by free KV blocks.

Both plug into Serve's `RequestRouter` (set through `request_router_config`), which then probes
queue lengths among the replicas of the best rank; so each policy only decides the ranking.
Ray's own `PrefixCacheAffinityRouter` matches prompt text in a shared tree actor; here the
prefill request already carries token ids, so a local table of chained block hashes (the same
unit the engine's prefix cache reuses) is enough and costs no remote call per request.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)


def block_hashes(token_ids: list[int], block_size: int) -> list[bytes]:
    """Chained hashes of the full token blocks of a prompt (a block's hash covers its whole prefix)."""
    hashes: list[bytes] = []
    previous = b""
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        block = token_ids[start : start + block_size]
        previous = hashlib.blake2b(previous + repr(block).encode(), digest_size=16).digest()
        hashes.append(previous)
    return hashes


class PrefixTable:
    """LRU map from block hash to the replica that last prefilled it."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._owners: OrderedDict[bytes, ReplicaID] = OrderedDict()

    def longest_match(self, hashes: list[bytes], alive: set[ReplicaID]) -> tuple[ReplicaID | None, int]:
        owner, matched = None, 0
        for block_hash in hashes:
            replica_id = self._owners.get(block_hash)
            if replica_id is None or replica_id not in alive or (owner is not None and replica_id != owner):
                break
            owner, matched = replica_id, matched + 1
        return owner, matched

    def insert(self, hashes: list[bytes], replica_id: ReplicaID) -> None:
        for block_hash in hashes:
            self._owners[block_hash] = replica_id
            self._owners.move_to_end(block_hash)
        while len(self._owners) > self.max_entries:
            self._owners.popitem(last=False)

    def remove(self, replica_id: ReplicaID) -> None:
        for block_hash in [h for h, owner in self._owners.items() if owner == replica_id]:
            del self._owners[block_hash]


def _request_token_ids(pending_request: PendingRequest | None) -> list[int] | None:
    if pending_request is None or not pending_request.args:
        return None
    request = pending_request.args[0]
    if isinstance(request, dict) and isinstance(request.get("prompt_token_ids"), list):
        return request["prompt_token_ids"]
    return None


class PrefixAffinityRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    """Send a prompt to the prefill replica that already holds its longest prefix, unless that
    replica is `imbalanced_threshold` requests busier than the idlest one; otherwise least loaded."""

    def initialize_state(self, block_size: int = 16, max_entries: int = 100_000, imbalanced_threshold: int = 4):
        self.block_size = block_size
        self.imbalanced_threshold = imbalanced_threshold
        self.table = PrefixTable(max_entries)
        self.num_affinity_hits = 0

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        token_ids = _request_token_ids(pending_request)
        if not token_ids or not candidate_replicas:
            return [candidate_replicas]
        hashes = block_hashes(token_ids, self.block_size)
        by_id = {r.replica_id: r for r in candidate_replicas}
        owner, matched = self.table.longest_match(hashes, set(by_id))
        if owner is None or matched == 0:
            return [candidate_replicas]
        queue_lens = {r.replica_id: self._replica_queue_len_cache.get(r.replica_id) for r in candidate_replicas}
        known = [q for q in queue_lens.values() if q is not None]
        owner_len = queue_lens.get(owner)
        if known and owner_len is not None and owner_len - min(known) > self.imbalanced_threshold:
            return [candidate_replicas]
        self.num_affinity_hits += 1
        rest = [r for r in candidate_replicas if r.replica_id != owner]
        return [[by_id[owner]], rest] if rest else [[by_id[owner]]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        token_ids = _request_token_ids(pending_request)
        if token_ids:
            self.table.insert(block_hashes(token_ids, self.block_size), replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.remove(replica_id)


class KVCapacityRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    """Prefer the decode replica with the most free KV blocks (from `record_routing_stats`), less
    `blocks_per_request` for each request this router sent it that is still running."""

    def initialize_state(self, blocks_per_request: int = 8):
        self.blocks_per_request = blocks_per_request
        self._inflight: dict[ReplicaID, int] = {}

    def score(self, replica: RunningReplica) -> float:
        stats = replica.routing_stats or {}
        free = float(stats.get("num_free_blocks", 0))
        return free - self.blocks_per_request * self._inflight.get(replica.replica_id, 0)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if len(candidate_replicas) <= 1:
            return [candidate_replicas]
        ranked = sorted(candidate_replicas, key=self.score, reverse=True)
        if self.score(ranked[0]) == self.score(ranked[-1]):
            return [candidate_replicas]  # no signal: least loaded by queue length
        return [[ranked[0]], ranked[1:]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        self._inflight[replica_id] = self._inflight.get(replica_id, 0) + 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        if self._inflight.get(replica_id, 0) > 0:
            self._inflight[replica_id] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._inflight.pop(replica_id, None)
