"""Turn the engine's outputs (delta or cumulative) into the small delta chunks a server replica streams."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve_apps.llm.choice_parsing import ChoiceParser, ParserSpec


@dataclass(kw_only=True, slots=True)
class _ChoiceState:
    num_tokens: int = 0
    text_len: int = 0
    base_tokens: int = 0  # tokens sent before the engine's cumulative output starts (see rebase)
    base_text_len: int = 0
    finish_reason: str | None = None
    parser: ChoiceParser | None = None


@dataclass(kw_only=True, slots=True)
class DeltaTracker:
    """Per-request cursor over the engine's `CompletionOutput`s (token_ids, text, logprobs).

    The Serve path asks the engine for delta outputs (`SamplingParams.output_kind="delta"`), which carry only
    the new part and where it starts in the whole output (`token_offset`, `text_offset`); a cumulative output
    (or the prefill's first-token answer) starts at 0. Positions make the deltas exact even when a decode
    engine re-reports the first token that the prefill replica already streamed.
    """

    tokenizer: Any
    num_logprobs: int | None
    num_prompt_tokens: int
    parsers: ParserSpec = field(default_factory=ParserSpec)
    num_cached_tokens: int = 0
    choices: dict[int, _ChoiceState] = field(default_factory=dict)

    @property
    def num_output_tokens(self) -> int:
        return sum(choice.num_tokens for choice in self.choices.values())

    def delta(self, completion: Any, finished: bool = False) -> dict[str, Any] | None:
        """The new part of one choice, or None when nothing changed."""
        state = self.choices.get(completion.index)
        if state is None:
            parser = ChoiceParser(self.parsers) if self.parsers.active else None
            state = self.choices[completion.index] = _ChoiceState(parser=parser)
        token_ids = completion.token_ids
        text = completion.text or ""
        token_start = state.base_tokens + getattr(completion, "token_offset", 0)
        text_start = state.base_text_len + getattr(completion, "text_offset", 0)
        seen_tokens = max(0, state.num_tokens - token_start)  # of this output's tokens, already sent
        new_ids = list(token_ids[seen_tokens:])
        new_text = text[max(0, state.text_len - text_start):]
        finish_reason = completion.finish_reason
        if not new_ids and not new_text and finish_reason == state.finish_reason:
            return None
        chunk: dict[str, Any] = {
            "index": completion.index,
            "text": new_text,
            "token_ids": new_ids,
            "finish_reason": finish_reason,
        }
        if state.parser is not None:
            self._parse(state.parser, chunk, ended=finish_reason is not None and state.finish_reason is None)
        if self.num_logprobs is not None and completion.logprobs is not None:
            chunk["logprobs"] = [
                self._logprob_entry(token_id, entry)
                for token_id, entry in zip(new_ids, completion.logprobs[seen_tokens:])
            ]
        state.num_tokens = max(state.num_tokens, token_start + len(token_ids))
        state.text_len = max(state.text_len, text_start + len(text))
        state.finish_reason = finish_reason
        return chunk

    @staticmethod
    def _parse(parser: ChoiceParser, chunk: dict[str, Any], *, ended: bool) -> None:
        """Replace the chunk's raw text with its content; reasoning and tool-call deltas beside it."""
        parsed = parser.feed(chunk["text"], len(chunk["token_ids"]))
        if ended:
            tail = parser.finish()
            parsed.content += tail.content
            parsed.reasoning += tail.reasoning
            parsed.tool_calls += tail.tool_calls
            if chunk["finish_reason"] == "stop" and parser.num_tool_calls:
                chunk["finish_reason"] = "tool_calls"
        chunk["text"] = parsed.content
        if parser.reasoning is not None:
            chunk["reasoning"] = parsed.reasoning
            chunk["reasoning_tokens"] = parsed.reasoning_tokens
        if parsed.tool_calls:
            chunk["tool_calls"] = parsed.tool_calls

    def rebase(self) -> None:
        """The next outputs come from a fresh engine request that continues after what was sent."""
        for state in self.choices.values():
            state.base_tokens = state.num_tokens
            state.base_text_len = state.text_len

    def chunk(self, request_output: Any) -> dict[str, Any] | None:
        """One stream chunk for a RequestOutput: all choices that advanced."""
        self.num_cached_tokens = max(self.num_cached_tokens, getattr(request_output, "num_cached_tokens", 0))
        outputs = [self.delta(c) for c in request_output.outputs]
        outputs = [o for o in outputs if o is not None]
        if not outputs:
            return None
        return {"prompt_tokens": self.num_prompt_tokens, "cached_tokens": self.num_cached_tokens, "outputs": outputs}

    def _logprob_entry(self, token_id: int, entry: dict[int, float]) -> dict[str, Any]:
        ranked = sorted(entry.items(), key=lambda item: item[1], reverse=True)
        top = [[self._token_text(tid), float(lp)] for tid, lp in ranked[: self.num_logprobs or 0]]
        sampled = entry.get(token_id, ranked[0][1] if ranked else 0.0)
        return {"token": self._token_text(token_id), "logprob": float(sampled), "top": top}

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])
