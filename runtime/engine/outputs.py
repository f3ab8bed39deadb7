"""RequestOutput / CompletionOutput: what generate() returns and step() streams (vLLM's shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.engine.kv_package import KVPackage


@dataclass(kw_only=True, slots=True)
class CompletionOutput:
    """One choice. With output_kind CUMULATIVE (or FINAL_ONLY) `text`/`token_ids`/`logprobs` are the whole
    output so far and `delta_*` what is new since the previous output; with DELTA all of them are only the
    new part, which starts at `token_offset` tokens / `text_offset` characters into the whole output."""

    index: int
    text: str
    token_ids: list[int]
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    token_offset: int = 0
    text_offset: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(kw_only=True, slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    kv_package: KVPackage | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def num_cached_tokens(self) -> int:
        return int(self.metrics.get("num_cached_tokens", 0))
