"""Reasoning parsers (`--reasoning-parser`): split `<think>...</think>` off a model's output into
OpenAI's `reasoning_content`, whole (`extract`) or as it streams (`feed` / `finish`).

- qwen3: reasoning only inside an explicit `<think>...</think>`; an output without `<think>` is all
  content. With `thinking_in_prompt` (the chat template ended the prompt inside `<think>`, see
  `prompt_ends_in_thinking`) the output starts in reasoning.
- deepseek_r1: the output always starts in reasoning (its template puts `<think>\\n` in the prompt;
  a `<think>` the model writes itself is dropped) until `</think>`; without `</think>` all of it is
  reasoning (vLLM does the same).

Newlines around the tags are dropped, as the Qwen3 template does when it renders a past turn
(`reasoning_content.strip('\\n')`, `content.lstrip('\\n')`): `<think>\\nA\\n</think>\\n\\nB` gives
reasoning "A" and content "B". (vLLM keeps them verbatim; it does not strip.) Text before `<think>`
stays content. Streaming holds back only what could still be a tag or a newline next to one, so the
concatenated deltas equal `extract`.
"""

from __future__ import annotations

from typing import ClassVar

THINK_START, THINK_END = "<think>", "</think>"

# Where the parser is: content before any <think>; reasoning (at its start, where newlines and a
# repeated <think> are dropped, or inside it); content after </think> (at its start, newlines dropped).
_BEFORE, _REASONING_START, _REASONING, _AFTER_START, _AFTER = range(5)


def prompt_ends_in_thinking(prompt: str) -> bool:
    """Whether a rendered prompt leaves the model inside `<think>` (its last `<think>` is open)."""
    return prompt.rfind(THINK_START) > prompt.rfind(THINK_END)


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class ReasoningParser:
    """One per request. `in_reasoning` says whether the text fed so far ends inside reasoning (a
    partial `</think>` still counts as reasoning), so the server can count reasoning tokens."""

    name: ClassVar[str]
    starts_in_reasoning: ClassVar[bool] = False

    def __init__(self, *, thinking_in_prompt: bool = False):
        self._thinking_in_prompt = thinking_in_prompt
        self._state = _REASONING_START if thinking_in_prompt or self.starts_in_reasoning else _BEFORE
        self._pending = ""  # text not yet classified: a possible tag, or newlines next to one

    @property
    def in_reasoning(self) -> bool:
        return self._state in (_REASONING_START, _REASONING)

    def extract(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning_content, content) of a whole output; None where empty."""
        parser = type(self)(thinking_in_prompt=self._thinking_in_prompt)  # this one's stream is left alone
        reasoning, content = parser.feed(text)
        reasoning_rest, content_rest = parser.finish()
        return (reasoning + reasoning_rest) or None, (content + content_rest) or None

    def feed(self, delta_text: str) -> tuple[str, str]:
        """(reasoning delta, content delta) for the next piece of output."""
        return self._consume(self._pending + delta_text, final=False)

    def finish(self) -> tuple[str, str]:
        return self._consume(self._pending, final=True)

    def _consume(self, text: str, *, final: bool) -> tuple[str, str]:
        reasoning, content = [], []
        self._pending = ""
        while text:
            state = self._state
            if state == _BEFORE:
                index = text.find(THINK_START)
                if index >= 0:
                    content.append(text[:index])
                    text, self._state = text[index + len(THINK_START):], _REASONING_START
                    continue
                keep = 0 if final else _partial_tag_length(text, THINK_START)
                content.append(text[:len(text) - keep])
                self._pending = text[len(text) - keep:]
                break
            if state == _REASONING_START:
                stripped = text.lstrip("\n")
                if stripped.startswith(THINK_START):
                    text = stripped[len(THINK_START):]
                    continue
                if not final and (not stripped or THINK_START.startswith(stripped)):
                    self._pending = text
                    break
                text, self._state = stripped, _REASONING
                continue
            if state == _REASONING:
                index = text.find(THINK_END)
                if index >= 0:
                    reasoning.append(text[:index].rstrip("\n"))
                    text, self._state = text[index + len(THINK_END):], _AFTER_START
                    continue
                keep = 0 if final else _partial_tag_length(text, THINK_END)
                body = text[:len(text) - keep]
                settled = body.rstrip("\n")
                reasoning.append(settled)
                self._pending = "" if final else text[len(settled):]
                break
            if state == _AFTER_START:
                text = text.lstrip("\n")
                if text:
                    self._state = _AFTER
                continue
            content.append(text)
            break
        return "".join(reasoning), "".join(content)


class Qwen3ReasoningParser(ReasoningParser):
    name = "qwen3"


class DeepSeekR1ReasoningParser(ReasoningParser):
    name = "deepseek_r1"
    starts_in_reasoning = True


REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    parser.name: parser for parser in (Qwen3ReasoningParser, DeepSeekR1ReasoningParser)
}


def make_reasoning_parser(name: str, **kwargs) -> ReasoningParser:
    """A fresh parser (one per request) for `--reasoning-parser name`."""
    if name not in REASONING_PARSERS:
        raise ValueError(f"unknown reasoning parser {name!r}; valid: {', '.join(sorted(REASONING_PARSERS))}")
    return REASONING_PARSERS[name](**kwargs)
