"""Constrained decoding: one grammar matcher per sequence, applied to the logits as a token mask.

A request's `SamplingParams.structured_outputs` names exactly one constraint (a JSON schema, any
JSON object, a regex, a choice of strings or a Lark grammar). The engine compiles it into an
llguidance `LLMatcher` when the request is added (an invalid one is a ValueError naming the field),
keeps the matcher on the Sequence, masks every token the grammar forbids before penalties and
sampling, and advances the matcher with each accepted token. The matcher's state is a function of
the output tokens alone, so preemption by recompute and prefix-cache hits leave it untouched, and a
decode-role engine rebuilds it by replaying the prefill's first token.

Why llguidance rather than xgrammar (vLLM's and SGLang's default): both compute a token bitmask per
step on CPU, and both cover JSON schema and regex. llguidance is one self-contained Rust wheel with
no Python dependencies (xgrammar pulls in torch-version-specific builds, which this project pins
tightly), takes a HF `tokenizers` JSON directly without transformers, accepts full Lark grammars
with embedded JSON schemas (what grammar-enforced tool calls need), builds its lexer lazily so a
new schema costs no up-front compilation, and fills a whole batch of masks in one call off the
GIL (`LLExecutor`). vLLM ships it as its `guidance` backend, so its behaviour is well exercised.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import llguidance
import llguidance.numpy
import numpy as np
import torch

logger = logging.getLogger(__name__)

CONSTRAINTS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(kw_only=True, slots=True)
class StructuredOutputsParams:
    """Exactly one constraint (vLLM's names): `json` a JSON schema (dict or JSON string),
    `json_object` any JSON object, `regex`, `choice` one of a list of strings, `grammar` Lark."""

    json: dict | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    disable_any_whitespace: bool = False  # JSON: no whitespace between tokens (compact output)

    def __post_init__(self) -> None:
        given = [name for name in CONSTRAINTS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"structured_outputs needs exactly one of {', '.join(CONSTRAINTS)}; got "
                             f"{', '.join(given) or 'none'}")
        if self.json is not None and not isinstance(self.json, dict | str):
            raise ValueError(f"structured_outputs.json must be a JSON schema (dict or str), got "
                             f"{type(self.json).__name__}")
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValueError(f"structured_outputs.regex must be a string, got {type(self.regex).__name__}")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise ValueError(f"structured_outputs.grammar must be a string, got {type(self.grammar).__name__}")
        if self.choice is not None:
            if isinstance(self.choice, str) or not self.choice or \
                    any(not isinstance(c, str) or not c for c in self.choice):
                raise ValueError(f"structured_outputs.choice must be a non-empty list of non-empty strings, "
                                 f"got {self.choice!r}")
            self.choice = list(self.choice)

    @property
    def kind(self) -> str:
        """The name of the one constraint given ("json", "regex", ...)."""
        return next(name for name in CONSTRAINTS if getattr(self, name) not in (None, False))


def grammar_text(params: StructuredOutputsParams) -> str:
    """The llguidance grammar for the constraint (not yet checked against a tokenizer)."""
    kind = params.kind
    if kind in ("json", "json_object"):
        schema = params.json if kind == "json" else {"type": "object"}
        options = {"whitespace_flexible": False} if params.disable_any_whitespace else None
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)
        except ValueError as e:  # a string that is not JSON
            raise ValueError(f"structured_outputs.{kind} is not a valid JSON schema: {e}") from None
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(params.regex)
    if kind == "choice":  # a Lark alternative of JSON-quoted literals, as llguidance's own grammar_from does
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in params.choice))
    return llguidance.LLMatcher.grammar_from_lark(params.grammar)


class GrammarBackend:
    """Compiles StructuredOutputsParams into matchers over one tokenizer and fills their masks.

    The token table is built on first use, so an engine that never sees a constrained request pays
    nothing. Masks of a whole batch are filled in one llguidance call (parallel, off the GIL), started
    before the forward (`prefetch`) so that the two overlap.
    """

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: list[int],
                 num_threads: int | None = None):
        self.vocab_size = vocab_size
        self._tokenizer_json = tokenizer_json
        self._eos_token_ids = eos_token_ids
        self._num_threads = num_threads
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._prefetched: tuple[list[llguidance.LLMatcher], Future] | None = None

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        if self._tokenizer is None:
            self._tokenizer = llguidance.LLTokenizer(self._tokenizer_json, n_vocab=self.vocab_size,
                                                     eos_token=self._eos_token_ids or None)
        return self._tokenizer

    def compile(self, params: StructuredOutputsParams) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(self.tokenizer, grammar_text(params), log_level=0)
        if matcher.is_error():
            raise ValueError(f"structured_outputs.{params.kind} is invalid: {matcher.get_error().strip()}")
        return matcher

    def prefetch(self, matchers: list[llguidance.LLMatcher]) -> None:
        """Start filling these matchers' masks on a background thread (llguidance runs off the GIL), so
        that the work overlaps the model's forward; `forbidden` collects them."""
        if self._prefetched is not None:  # never collected: let it finish, so no two fills share a matcher
            self._prefetched[1].result()
        self._prefetched = None
        if matchers:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")
            self._prefetched = (matchers, self._pool.submit(
                self._fill, [(m, i) for i, m in enumerate(matchers)], len(matchers)))

    def forbidden(self, matchers: list[tuple[llguidance.LLMatcher, int]], num_rows: int, num_columns: int,
                  device: torch.device) -> torch.Tensor:
        """bool [num_rows, num_columns] on `device`: True where a row's matcher forbids the token; rows
        without a matcher forbid nothing. `matchers` pairs each matcher with its row."""
        words = None
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None:
            position = {id(m): i for i, m in enumerate(prefetched[0])}
            ready = prefetched[1].result()
            if all(id(m) in position for m, _ in matchers):  # else a fork's new matcher: fill them all here
                words = np.zeros((num_rows, ready.shape[1]), dtype=ready.dtype)
                words[[row for _, row in matchers]] = ready[[position[id(m)] for m, _ in matchers]]
        if words is None:
            words = self._fill(matchers, num_rows)
        assert num_columns <= self.tokenizer.vocab_size, "the token table covers every logit (engine sizes it)"
        return unpack_bits(words, num_columns, device)

    def _fill(self, matchers: list[tuple[llguidance.LLMatcher, int]], num_rows: int) -> np.ndarray:
        """Packed int32 words [num_rows, vocab/32], a set bit where the token is forbidden."""
        if self._executor is None:
            self._executor = llguidance.LLExecutor(num_threads=self._num_threads)
        words = llguidance.numpy.allocate_token_bitmask(num_rows, self.tokenizer.vocab_size)  # all allowed
        llguidance.numpy.fill_next_token_bitmask_par(self._executor, matchers, words)
        return np.invert(words, out=words)  # on the packed words: 32x less memory than on the bools


def unpack_bits(words: np.ndarray, num_columns: int, device: torch.device) -> torch.Tensor:
    """bool [rows, num_columns] on `device` from packed int32 words (bit j of word w is column 32w + j);
    off the CPU the packed words travel (32x smaller than the bools) and are unpacked there."""
    if device.type == "cpu":
        return torch.from_numpy(np.unpackbits(words.view(np.uint8), axis=1, count=num_columns,
                                              bitorder="little").view(np.bool_))
    return unpack_on_device(torch.from_numpy(words).to(device, non_blocking=True), num_columns)


def unpack_on_device(packed: torch.Tensor, num_columns: int) -> torch.Tensor:
    shifts = torch.arange(32, dtype=torch.int32, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).view(packed.shape[0], -1)[:, :num_columns].bool()


def grammar_matchers_to_sample(seqs: list, num_new_tokens: list[int]) -> list[llguidance.LLMatcher]:
    """The matchers of the sequences that sample a token after this step (all their tokens computed)."""
    return [seq.matcher for seq, n in zip(seqs, num_new_tokens)
            if seq.matcher is not None and seq.num_computed_tokens + n == seq.num_tokens]


def advance(matcher: llguidance.LLMatcher, token_id: int) -> str | None:
    """Feed an accepted token to the matcher; "stop" once the grammar is complete (it allows no
    further text), "abort" if the token broke it (only when a request's own allowed_token_ids
    leave the grammar no token), else None."""
    if not matcher.consume_token(token_id):
        logger.warning("grammar rejected token %d: %s", token_id, matcher.get_error())
        return "abort"
    return "stop" if matcher.is_stopped() else None
