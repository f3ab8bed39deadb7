"""Request and Sequence: the state the scheduler, block manager and engine share.

A Request is what a user submitted; it owns `n` Sequences (one while its prompt is prefilled,
forked into `n` once the first tokens are sampled). A Sequence's `token_ids` are prompt plus
generated tokens; `num_computed_tokens` of them have their K/V in the cache. Whatever is not
computed yet is scheduled next, so prefill, chunked prefill, decode and recompute after
preemption are one code path (as in vLLM v1).
"""

from __future__ import annotations

import enum
import itertools
import time
from typing import TYPE_CHECKING, Any

from runtime.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

    from runtime.engine.kv_package import KVPackage

_seq_counter = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    __slots__ = (
        "seq_id", "index", "request", "token_ids", "num_prompt_tokens", "num_computed_tokens",
        "block_table", "num_hashed_blocks", "block_hashes", "status", "finish_reason", "arrival_order",
        "settled_text", "unsettled_text", "num_emitted_parts", "num_emitted_chars", "num_emitted_tokens",
        "prefix_offset", "read_offset",
        "logprobs", "cumulative_logprob", "pending_kv", "output_token_counts", "matcher",
    )

    def __init__(self, request: Request, token_ids: list[int], num_prompt_tokens: int, index: int = 0):
        self.seq_id = next(_seq_counter)
        self.index = index
        self.request = request
        self.token_ids = token_ids
        self.num_prompt_tokens = num_prompt_tokens
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.num_hashed_blocks = 0
        self.block_hashes: list[bytes] = []  # block_manager.block_hash of each full block
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.arrival_order = request.arrival_order
        # Output text in two parts, so a step appends and emits O(new text), never a copy of the whole:
        # settled chunks no stop string can cut any more, and the unsettled tail (at most the longest stop
        # string minus one character, plus the newest piece) that one still could. See OutputProcessor.
        self.settled_text: list[str] = []
        self.unsettled_text = ""
        self.num_emitted_parts = 0  # settled chunks already handed out in an output
        self.num_emitted_chars = 0
        self.num_emitted_tokens = 0
        self.prefix_offset = max(num_prompt_tokens - 5, 0)
        self.read_offset = num_prompt_tokens
        self.logprobs: list[dict[int, float]] | None = [] if request.params.logprobs is not None else None
        self.cumulative_logprob: float | None = 0.0 if request.params.logprobs is not None else None
        self.pending_kv: KVPackage | None = None
        self.output_token_counts: dict[int, int] = {}
        # Structured outputs: the grammar state after this sequence's output tokens (an llguidance
        # LLMatcher). It depends on the output tokens alone, so it survives preemption by recompute.
        self.matcher: Any = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_token_counts[token_id] = self.output_token_counts.get(token_id, 0) + 1

    def __repr__(self) -> str:
        return (f"Sequence({self.request.request_id}#{self.index}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_table)}, {self.status.value})")


class Request:
    __slots__ = (
        "request_id", "prompt", "prompt_token_ids", "params", "seqs", "arrival_time", "arrival_order",
        "generator", "first_scheduled_time", "first_token_time", "finished_time", "num_cached_tokens",
        "kv_package",
    )

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, arrival_order: int, generator: torch.Generator | None):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.arrival_time = time.time()
        self.arrival_order = arrival_order
        self.generator = generator  # only for seeded requests: the same seed gives the same tokens
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finished_time: float | None = None
        self.num_cached_tokens = 0
        self.kv_package: Any = None
        self.seqs = [Sequence(self, list(prompt_token_ids), len(prompt_token_ids))]

    @property
    def is_finished(self) -> bool:
        return all(seq.is_finished for seq in self.seqs)
