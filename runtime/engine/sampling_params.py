"""SamplingParams: how one request picks its tokens (vLLM's names and defaults)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from runtime.engine.structured_outputs import StructuredOutputsParams

MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values
GREEDY_TEMPERATURE = 1e-5  # below this, sampling is greedy (vLLM's _SAMPLING_EPS): logits / 1e-40 overflow


class RequestOutputKind(enum.Enum):
    """What each RequestOutput of a request carries (vLLM's names).

    CUMULATIVE: the whole output so far, every step (cost grows with the output). DELTA: only the tokens,
    text and logprobs that are new since the previous output, with their offsets (what a streaming server
    wants: O(new tokens) per step). FINAL_ONLY: one full output when the request finishes (offline use)."""

    CUMULATIVE = "cumulative"
    DELTA = "delta"
    FINAL_ONLY = "final_only"


@dataclass(kw_only=True, slots=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0): off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int = 16
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top alternatives returned beside the chosen token
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False  # keep the matched stop string at the end of the text
    structured_outputs: StructuredOutputsParams | None = None
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (keys may be digit strings)
    allowed_token_ids: list[int] | None = None  # only these tokens may be sampled
    output_kind: RequestOutputKind | str = RequestOutputKind.CUMULATIVE  # or its value: "delta", "final_only"
    stop_strings: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not math.isfinite(self.temperature) or self.temperature < 0.0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")
        if self.max_tokens is None or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")
        if self.stop is None:
            self.stop_strings = []
        elif isinstance(self.stop, str):
            self.stop_strings = [self.stop]
        else:
            self.stop_strings = list(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        self.stop_token_ids = [int(t) for t in self.stop_token_ids or []]
        if self.top_k == 0:
            self.top_k = -1
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ValueError(f"structured_outputs must be a StructuredOutputsParams, got "
                             f"{type(self.structured_outputs).__name__}")
        self.logit_bias = _logit_bias(self.logit_bias)
        self.output_kind = _output_kind(self.output_kind)
        if self.allowed_token_ids is not None:
            if isinstance(self.allowed_token_ids, str | bytes) or not self.allowed_token_ids:
                raise ValueError(f"allowed_token_ids must be a non-empty list of token ids, got "
                                 f"{self.allowed_token_ids!r}")
            self.allowed_token_ids = [_token_id("allowed_token_ids", t) for t in self.allowed_token_ids]

    def check_vocab(self, vocab_size: int) -> None:
        """ValueError naming the field when a token id the params name lies outside the vocabulary."""
        for name, token_ids in (("logit_bias", self.logit_bias or ()), ("allowed_token_ids", self.allowed_token_ids)):
            outside = [t for t in token_ids or () if not 0 <= t < vocab_size]
            if outside:
                raise ValueError(f"{name} token ids must be in [0, {vocab_size}), got {outside[:5]}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0


def _output_kind(value) -> RequestOutputKind:
    if isinstance(value, RequestOutputKind):
        return value
    try:
        return RequestOutputKind(value)
    except ValueError:
        raise ValueError(f"output_kind must be one of {[kind.value for kind in RequestOutputKind]}, "
                         f"got {value!r}") from None


def _token_id(field_name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).lstrip("-").isdigit():
        raise ValueError(f"{field_name} token ids must be integers, got {value!r}")
    return int(value)


def _logit_bias(logit_bias: dict | None) -> dict[int, float] | None:
    if not logit_bias:
        return None
    if not isinstance(logit_bias, dict):
        raise ValueError(f"logit_bias must be a dict of token id -> bias, got {type(logit_bias).__name__}")
    out = {}
    for token, bias in logit_bias.items():
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias values must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], "
                             f"got {bias!r} for token {token!r}")
        out[_token_id("logit_bias", token)] = float(bias)
    return out
