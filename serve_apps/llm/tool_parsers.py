"""Tool-call parsers (`--tool-call-parser`): split a model's output into content and OpenAI tool calls.

One parser per request. `extract(text)` parses a whole output; `feed(delta)` / `finish()` parse a
stream into OpenAI-shaped deltas: a call's first delta carries its id and name, later ones fragments
of its arguments; the fragments of a call concatenate to its final `arguments`, which is the model's
own JSON text of the arguments object (not re-serialised).

Formats (as each model's chat template renders assistant tool calls):
- hermes (Qwen2.5, Qwen3, Hermes): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
  several in a row for parallel calls, content before (and between) them.
- llama3_json (Llama 3.1/3.2 JSON tool calling): the output is `{"name": ..., "parameters": {...}}`,
  optionally after `<|python_tag|>`, several separated by `;`.
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (tokenizers before v11) or
  `[TOOL_CALLS]name[ARGS]{...}` per call (v11+). `[TOOL_CALLS]` is a special token: decode with
  `skip_special_tokens=False` (`needs_special_tokens`), or the parser never sees it.

Rules shared by all formats:
- A call object is `{"name": "<non-empty string>", ...}` with "name" as its first key, and its
  arguments under "arguments" or "parameters" (a JSON object; absent means `{}`); other keys are ignored.
- Anything that is not a well-formed call stays content, verbatim (a marker whose call is malformed
  is content with everything after it): no text is lost. Whitespace right before or after a call is
  dropped; an output without calls is its own content, unchanged.
- Streaming emits content as soon as it cannot be the start of a marker (trailing whitespace waits
  until it is known not to precede a call). A call is sent once its name and the start of its
  arguments object are known; from then on its arguments stream as they are checked to be a valid
  JSON prefix. The one divergence from `extract`: a call whose arguments break after they started
  streaming (cut off by max_tokens, or invalid JSON) cannot be taken back: the stream keeps the
  call as sent and treats the text after the break as content, while `extract` of the same text
  returns the whole call as content. Under the tool-choice grammar this never happens.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import ClassVar

from serve_apps.llm.json_prefix_scanner import JSON_WHITESPACE, JsonObjectScanner

_ALPHANUMERIC = string.ascii_letters + string.digits
_ARGUMENT_KEYS = ("arguments", "parameters")


def new_tool_call_id() -> str:
    """An OpenAI-style tool call id: "call_" and 24 random alphanumeric characters."""
    return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(24))


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object


@dataclass(frozen=True)
class ExtractedToolCalls:
    content: str | None
    tool_calls: list[ToolCall]


@dataclass
class ToolCallDelta:
    """OpenAI's `delta.tool_calls[i]`: the first delta of a call carries id and name."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class StreamDelta:
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


_Parse = Generator[None, None, object]  # a parsing step: yields while it needs more text


class ToolParser:
    """Base: the streaming machinery. A format implements `_parse_region`, the text from one of its
    `markers` on, as a generator over `self._text` that yields whenever it needs more text."""

    name: ClassVar[str]
    markers: ClassVar[tuple[str, ...]]  # strings that may start a call region
    needs_special_tokens: ClassVar[bool] = False  # a marker is a special token: keep them in the text

    def __init__(self) -> None:
        self._text = ""
        self._pos = 0
        self._final = False
        self._streaming = True  # False in extract(): calls are decided on the whole object
        self._after_call = False  # drop whitespace right after a call
        self._calls: list[list[str]] = []  # [id, name, arguments so far] per call
        self._out = StreamDelta()
        self._parse: _Parse | None = self._run()

    @classmethod
    def new_call_id(cls) -> str:
        return new_tool_call_id()

    def extract(self, text: str) -> ExtractedToolCalls:
        parser = type(self)()
        parser._streaming = False
        parser._text, parser._final = text, True
        delta = parser._advance()
        calls = [ToolCall(id=call_id, name=name, arguments=arguments) for call_id, name, arguments in parser._calls]
        return ExtractedToolCalls(content=delta.content or None, tool_calls=calls)

    def feed(self, delta_text: str) -> StreamDelta:
        if self._final:
            raise RuntimeError(f"{type(self).__name__}.feed() after finish()")
        self._text += delta_text
        return self._advance()

    def finish(self) -> StreamDelta:
        self._final = True
        return self._advance()

    def _advance(self) -> StreamDelta:
        self._out = StreamDelta()
        if self._parse is not None:
            try:
                next(self._parse)
            except StopIteration:
                self._parse = None
            assert self._parse is None or not self._final, "a parse step waited for text after finish()"
        return self._out

    # -- output ---------------------------------------------------------------------------------

    def _emit_content(self, text: str) -> None:
        self._out.content += text

    def _start_call(self, name: str) -> int:
        index = len(self._calls)
        call_id = self.new_call_id()
        self._calls.append([call_id, name, ""])
        self._out.tool_calls.append(ToolCallDelta(index=index, id=call_id, name=name))
        return index

    def _emit_arguments(self, index: int, text: str) -> None:
        if not text:
            return
        self._calls[index][2] += text
        deltas = self._out.tool_calls
        if deltas and deltas[-1].index == index:
            deltas[-1].arguments += text
        else:
            deltas.append(ToolCallDelta(index=index, arguments=text))

    # -- reading --------------------------------------------------------------------------------

    def _run(self) -> _Parse:
        while True:
            found = yield from self._scan_content()
            if found is None:
                return
            region_start, marker_pos, marker = found
            resume = marker_pos + len(marker)
            self._pos = resume
            if not (yield from self._parse_region(marker)):  # no call: the marker is content
                self._emit_content(self._text[region_start:resume])
                self._pos = resume

    def _parse_region(self, marker: str) -> _Parse:
        """Parse calls from self._pos (just after `marker`); True if at least one call was made, with
        self._pos after the last one; False leaves self._pos for the caller to reset."""
        raise NotImplementedError

    def _find_region(self, start: int) -> tuple[int, str] | None:
        """The first marker at or after `start`: (position, marker)."""
        hits = [(pos, marker) for marker in self.markers if (pos := self._text.find(marker, start)) >= 0]
        return min(hits) if hits else None

    def _scan_content(self) -> _Parse:
        """Emit content up to the next region; returns (start of the whitespace before it, marker
        position, marker), or None once the text is over."""
        while True:
            text = self._text
            if self._after_call:
                pos = self._pos
                while pos < len(text) and text[pos] in JSON_WHITESPACE:
                    pos += 1
                self._pos = pos
                if pos == len(text) and not self._final:
                    yield
                    continue
                self._after_call = False
            found = self._find_region(self._pos)
            if found is not None:
                marker_pos, marker = found
                region_start = self._pos + len(text[self._pos:marker_pos].rstrip(JSON_WHITESPACE))
                self._emit_content(text[self._pos:region_start])
                self._pos = region_start
                return region_start, marker_pos, marker
            if self._final:
                self._emit_content(text[self._pos:])
                self._pos = len(text)
                return None
            safe_end = len(text) - self._marker_prefix_length(text)
            safe_end = self._pos + len(text[self._pos:safe_end].rstrip(JSON_WHITESPACE))
            self._emit_content(text[self._pos:safe_end])
            self._pos = safe_end
            yield

    def _marker_prefix_length(self, text: str) -> int:
        """Length of the longest end of `text` (after self._pos) that could begin a marker."""
        longest = 0
        for marker in self.markers:
            for length in range(min(len(marker) - 1, len(text) - self._pos), longest, -1):
                if text.endswith(marker[:length]):
                    longest = length
                    break
        return longest

    def _skip_whitespace(self) -> _Parse:
        while True:
            text, pos = self._text, self._pos
            while pos < len(text) and text[pos] in JSON_WHITESPACE:
                pos += 1
            self._pos = pos
            if pos < len(text) or self._final:
                return
            yield

    def _starts_with(self, literal: str) -> _Parse:
        """Whether the text at self._pos starts with `literal` (waits until that is decided)."""
        while True:
            available = self._text[self._pos:self._pos + len(literal)]
            if not literal.startswith(available):
                return False
            if len(available) == len(literal):
                return True
            if self._final:
                return False
            yield

    def _call_objects(self, separator: str, *, separator_required: bool) -> _Parse:
        """Call objects one after another, apart by `separator` (and whitespace); returns (how many
        were made, whether the last one broke). self._pos ends after the last call, or at its break."""
        num_calls = 0
        while True:
            end = self._pos
            yield from self._skip_whitespace()
            if num_calls:
                if (yield from self._starts_with(separator)):
                    self._pos += len(separator)
                    yield from self._skip_whitespace()
                elif separator_required:
                    self._pos = end
                    return num_calls, False
            outcome = "malformed"
            if (yield from self._starts_with("{")):
                outcome = yield from self._call_object()
            if outcome == "malformed":
                self._pos = end
                return num_calls, False
            num_calls += 1
            if outcome == "broken":
                return num_calls, True

    def _call_object(self, name: str | None = None) -> _Parse:
        """Read the JSON object at self._pos: a call object, or (with `name`) the arguments object of
        a call to `name`. Returns "call" (self._pos after it), "malformed" (nothing emitted) or
        "broken" (the call was sent but its JSON broke; self._pos at the break)."""
        scanner = JsonObjectScanner(self._pos)
        index = None  # the call's index once sent
        sent = self._pos  # end of the argument text sent so far
        while True:
            scanner.scan(self._text)
            if name is None:
                verdict, call_name, arguments = self._judge_call(scanner)
            else:
                verdict, call_name, arguments = ("ok" if scanner.end >= 0 else "pending"), name, (self._pos, scanner.end)
            if verdict == "bad" or (scanner.failed and index is None):
                return "malformed"
            arguments_start, arguments_end = arguments
            if index is None and arguments_start >= 0 and (self._streaming or verdict == "ok"):
                index = self._start_call(call_name)
                sent = arguments_start
            if index is not None:
                upto = arguments_end if arguments_end >= 0 else scanner.pos
                if upto > sent:
                    self._emit_arguments(index, self._text[sent:upto])
                    sent = upto
            if verdict == "ok":
                if index is None:  # no arguments member
                    self._emit_arguments(self._start_call(call_name), "{}")
                self._pos = scanner.end
                return "call"
            if scanner.failed or self._final:
                if index is None:
                    return "malformed"
                self._pos = scanner.pos
                return "broken"
            yield

    def _judge_call(self, scanner: JsonObjectScanner) -> tuple[str, str | None, tuple[int, int]]:
        """("bad" | "pending" | "ok", the name once known, (start, end) of the arguments value, -1
        while unknown) of a call object being scanned."""
        text, members = self._text, scanner.members
        call_name = None
        arguments = (-1, -1)
        for i, member in enumerate(members):
            if member.key_end < 0:
                break
            if member.key is None:
                member.key = json.loads(text[member.key_start:member.key_end])
            if i == 0:
                if member.key != "name" or (member.value_start >= 0 and text[member.value_start] != '"'):
                    return "bad", None, arguments
                if member.value_end >= 0:
                    call_name = json.loads(text[member.value_start:member.value_end])
                    if not call_name:
                        return "bad", None, arguments
            elif member.key in _ARGUMENT_KEYS and member.value_start >= 0:
                if text[member.value_start] != "{":
                    return "bad", None, arguments
                arguments = (member.value_start, member.value_end)
                break
        if call_name is None:
            return ("bad" if scanner.end >= 0 else "pending"), None, (-1, -1)
        return ("ok" if scanner.end >= 0 else "pending"), call_name, arguments


class HermesToolParser(ToolParser):
    name = "hermes"
    markers = ("<tool_call>",)

    def _parse_region(self, marker: str) -> _Parse:
        yield from self._skip_whitespace()
        if not (yield from self._starts_with("{")):
            return False
        outcome = yield from self._call_object()
        if outcome == "malformed":
            return False
        if outcome == "call":
            end = self._pos
            yield from self._skip_whitespace()
            if (yield from self._starts_with("</tool_call>")):
                end = self._pos + len("</tool_call>")
            self._pos = end
            self._after_call = True
        return True


class Llama3JsonToolParser(ToolParser):
    """The output itself is the call (a `{` at its start), or calls follow `<|python_tag|>`."""

    name = "llama3_json"
    markers = ("<|python_tag|>",)

    def __init__(self) -> None:
        super().__init__()
        self._at_output_start = True

    def _find_region(self, start: int) -> tuple[int, str] | None:
        if self._at_output_start:
            stripped = self._text[start:].lstrip(JSON_WHITESPACE)
            if stripped:
                self._at_output_start = False
                if stripped[0] == "{":
                    return len(self._text) - len(stripped), ""
        return super()._find_region(start)

    def _parse_region(self, marker: str) -> _Parse:
        num_calls, broken = yield from self._call_objects(";", separator_required=False)
        self._after_call = num_calls > 0 and not broken
        return num_calls > 0


class MistralToolParser(ToolParser):
    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    needs_special_tokens = True
    _NAME = re.compile(r"[A-Za-z0-9_.\-]+")

    @classmethod
    def new_call_id(cls) -> str:
        """Mistral's chat templates reject tool call ids that are not 9 alphanumeric characters."""
        return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))

    def _parse_region(self, marker: str) -> _Parse:
        yield from self._skip_whitespace()
        if (yield from self._starts_with("[")) and not (yield from self._starts_with("[ARGS]")):
            self._pos += 1  # a JSON list of calls; a missing "]" at the end is forgiven
            num_calls, broken = yield from self._call_objects(",", separator_required=True)
            if num_calls and not broken:
                end = self._pos
                yield from self._skip_whitespace()
                self._pos = self._pos + 1 if (yield from self._starts_with("]")) else end
            outcome = "malformed" if not num_calls else "broken" if broken else "call"
        elif (yield from self._starts_with("{")):
            outcome = yield from self._call_object()
        else:
            outcome = yield from self._named_call()
        self._after_call = outcome == "call"
        return outcome != "malformed"

    def _named_call(self) -> _Parse:
        """v11+: `name[ARGS]{...}`, or `name{...}` where `[ARGS]` was left out of the text."""
        while (match := self._NAME.match(self._text, self._pos)) is None or match.end() == len(self._text):
            if self._final or (match is None and self._pos < len(self._text)):
                break
            yield
        if match is None:
            return "malformed"
        self._pos = match.end()
        if (yield from self._starts_with("[ARGS]")):
            self._pos += len("[ARGS]")
        if not (yield from self._starts_with("{")):
            return "malformed"
        return (yield from self._call_object(name=match.group()))


TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser for parser in (HermesToolParser, Llama3JsonToolParser, MistralToolParser)
}


def make_tool_parser(name: str) -> ToolParser:
    """A fresh parser (one per request) for `--tool-call-parser name`."""
    if name not in TOOL_PARSERS:
        raise ValueError(f"unknown tool call parser {name!r}; valid: {', '.join(sorted(TOOL_PARSERS))}")
    return TOOL_PARSERS[name]()
