"""Split one choice's streamed text into reasoning, content and tool calls (chat completions only).

The server replica owns one `ChoiceParser` per choice: the reasoning parser (`--reasoning-parser`)
takes `<think>...</think>` out first, then the tool-call parser (`--tool-call-parser`, or the format a
required/named tool choice was constrained to) takes the calls out of what is left. Deltas are what
the stream sends; their concatenation is the non-streamed message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(kw_only=True, slots=True)
class ParsedDelta:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning_tokens: int = 0


@dataclass(kw_only=True, slots=True)
class ParserSpec:
    """Which parsers a request's choices use (picked once per request in `LLMServer.prepare`)."""

    tool_parser: str | None = None
    reasoning_parser: str | None = None
    thinking_in_prompt: bool = False

    @property
    def active(self) -> bool:
        return self.tool_parser is not None or self.reasoning_parser is not None


class ChoiceParser:
    def __init__(self, spec: ParserSpec):
        from serve_apps.llm.reasoning_parsers import make_reasoning_parser
        from serve_apps.llm.tool_parsers import make_tool_parser

        self.reasoning = (make_reasoning_parser(spec.reasoning_parser, thinking_in_prompt=spec.thinking_in_prompt)
                          if spec.reasoning_parser else None)
        self.tools = make_tool_parser(spec.tool_parser) if spec.tool_parser else None
        self.num_tool_calls = 0

    def feed(self, text: str, num_tokens: int) -> ParsedDelta:
        delta = ParsedDelta()
        if self.reasoning is not None:
            if self.reasoning.in_reasoning:
                delta.reasoning_tokens = num_tokens
            delta.reasoning, content = self.reasoning.feed(text)
        else:
            content = text
        self._content(delta, content, final=False)
        return delta

    def finish(self) -> ParsedDelta:
        delta = ParsedDelta()
        content = ""
        if self.reasoning is not None:
            delta.reasoning, content = self.reasoning.finish()
        self._content(delta, content, final=True)
        return delta

    def _content(self, delta: ParsedDelta, content: str, *, final: bool) -> None:
        if self.tools is None:
            delta.content = content
            return
        parts = [self.tools.feed(content)] if content else []
        if final:
            parts.append(self.tools.finish())
        for part in parts:
            delta.content += part.content
            for call in part.tool_calls:
                entry: dict[str, Any] = {"index": call.index, "arguments": call.arguments}
                if call.id is not None:
                    entry["id"] = call.id
                if call.name is not None:
                    entry["name"] = call.name
                delta.tool_calls.append(entry)
                self.num_tool_calls = max(self.num_tool_calls, call.index + 1)
