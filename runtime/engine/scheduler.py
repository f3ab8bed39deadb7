"""Continuous-batching scheduler with chunked prefill and preemption by recompute.

Pure Python (no torch). Each step every running sequence gets the tokens it has not computed yet:
one for a decode, a chunk for a prefill, within `max_num_batched_tokens`. Fairness: running
sequences go first in arrival order and a prefill chunk always leaves one token of budget for each
decode behind it, so a long prompt never stalls streams; waiting requests are admitted FIFO; when
blocks run out the latest arrival is preempted (its blocks freed, recomputed later from its tokens)
and goes back to the front of the queue, so no request starves.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from runtime.engine.block_manager import BlockManager
from runtime.engine.sequence import Sequence, SequenceStatus


@dataclass(kw_only=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool = True


@dataclass(slots=True)
class SchedulerOutput:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.seqs


def _order(seq: Sequence) -> tuple[int, int]:
    return (seq.arrival_order, seq.index)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by arrival
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        num_decodes_left = sum(1 for s in self.running if s.num_tokens - s.num_computed_tokens == 1)
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            remaining = seq.num_tokens - seq.num_computed_tokens
            if remaining == 1:
                num_decodes_left -= 1
            num_new = min(remaining, budget - num_decodes_left)
            if num_new <= 0 or (num_new < remaining and not self.config.enable_chunked_prefill):
                i += 1
                continue
            while not self.block_manager.append_slots(seq, num_new):
                victim = self.running[-1]
                if victim is not seq and victim.num_tokens - victim.num_computed_tokens == 1:
                    num_decodes_left -= 1
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                out.seqs.append(seq)
                out.num_new_tokens.append(num_new)
                budget -= num_new
                i += 1
        if not out.preempted:
            self._admit_waiting(out, budget)
        return out

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        bm = self.block_manager
        while self.waiting and len(self.running) < self.config.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            if seq.pending_kv is not None:  # a decode-role request: its prompt K/V arrives in a package
                cached, num_computed = [], seq.num_computed_tokens
            else:
                cached = bm.find_cached_blocks(seq)
                num_computed = len(cached) * bm.block_size
            remaining = seq.num_tokens - num_computed
            num_new = min(remaining, budget)
            if num_new < remaining and not self.config.enable_chunked_prefill:
                break
            if not bm.allocate(seq, cached, num_computed + num_new):
                break
            self.waiting.popleft()
            seq.num_computed_tokens = num_computed
            if seq.pending_kv is None and seq.request.first_scheduled_time is None:
                seq.request.num_cached_tokens = num_computed
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=_order)
            out.seqs.append(seq)
            out.num_new_tokens.append(num_new)
            budget -= num_new

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.pending_kv = None
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def add_forked(self, parent: Sequence, child: Sequence) -> None:
        self.block_manager.fork(parent, child)
        child.status = SequenceStatus.RUNNING
        bisect.insort(self.running, child, key=_order)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Finish (or abort) a sequence wherever it is and free its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.pending_kv = None
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
