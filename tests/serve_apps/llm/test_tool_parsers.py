"""Tool-call parsers: whole outputs, and the same outputs streamed in every split, char by char and in
random chunks, must give the same content and calls (arguments streamed as valid JSON fragments)."""

from __future__ import annotations

import json
import random
import re

import pytest

from serve_apps.llm.tool_parsers import TOOL_PARSERS, StreamDelta, make_tool_parser, new_tool_call_id

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2.5e3, -0.5], "ok": true, "x": null}}'
WEATHER_ARGS = '{"city": "Paris", "days": [1, 2.5e3, -0.5], "ok": true, "x": null}'
NESTED_ARGS = '{"q": "a \\"quoted\\" {brace} \\u00e9 \\\\", "o": {"k": [{}, []]}, "e": ""}'

# (parser, output, content, [(name, arguments)])
CASES = [
    ("hermes", f"<tool_call>\n{WEATHER}\n</tool_call>", None, [("get_weather", WEATHER_ARGS)]),
    ("hermes", f"Let me check.\n\n<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n"
               f'{{"name": "search", "arguments": {NESTED_ARGS}}}\n</tool_call>',
     "Let me check.", [("get_weather", WEATHER_ARGS), ("search", NESTED_ARGS)]),
    ("hermes", '<tool_call>{"name":"f","arguments":{}}</tool_call> and after', "and after", [("f", "{}")]),
    ("hermes", '<tool_call>\n{"name": "f", "parameters": {"a": 1}}', None, [("f", '{"a": 1}')]),  # unclosed at the end
    ("hermes", '<tool_call>\n{"name": "f", "id": 7}\n</tool_call>', None, [("f", "{}")]),  # no arguments: {}
    ("hermes", "Plain text with <b>tags</b>, a < sign and <tool_ half a marker.\n",
     "Plain text with <b>tags</b>, a < sign and <tool_ half a marker.\n", []),
    ("hermes", "", None, []),
    # malformed: stays content, verbatim
    ("hermes", '<tool_call>\n{"arguments": {}, "name": "f"}\n</tool_call>',
     '<tool_call>\n{"arguments": {}, "name": "f"}\n</tool_call>', []),
    ("hermes", '<tool_call>\nnot json\n</tool_call>', '<tool_call>\nnot json\n</tool_call>', []),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>',
     '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>', []),
    ("hermes", 'a <tool_call>{"name": ""}</tool_call> b', 'a <tool_call>{"name": ""}</tool_call> b', []),
    ("hermes", f'<tool_call>{{"name": 3}}</tool_call>\n<tool_call>{WEATHER}</tool_call>',
     '<tool_call>{"name": 3}</tool_call>', [("get_weather", WEATHER_ARGS)]),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}', None,
     [("get_weather", '{"city": "Paris"}')]),
    ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "arguments": {"n": 1}}',
     None, [("a", "{}"), ("b", '{"n": 1}')]),
    ("llama3_json", '  {"name": "a", "parameters": {}}\n{"name": "b", "parameters": {}};', ";", [("a", "{}"), ("b", "{}")]),
    ("llama3_json", 'Calling it. <|python_tag|>{"name": "a", "parameters": {"x": "y"}}', "Calling it.",
     [("a", '{"x": "y"}')]),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),  # a JSON answer, not a call
    ("llama3_json", 'The {"name": "a"} is inline', 'The {"name": "a"} is inline', []),
    ("llama3_json", '<|python_tag|>brave_search.call(query="x")', '<|python_tag|>brave_search.call(query="x")', []),
    ("llama3_json", '{"name": "a", "parameters": {}}; not a call', "; not a call", [("a", "{}")]),
    ("mistral", f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {WEATHER_ARGS}}}, '
                f'{{"name": "search", "arguments": {NESTED_ARGS}}}]',
     None, [("get_weather", WEATHER_ARGS), ("search", NESTED_ARGS)]),
    ("mistral", 'Sure.[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}}', "Sure.", [("f", '{"a": 1}')]),
    ("mistral", '[TOOL_CALLS]{"name": "f", "arguments": {}}', None, [("f", "{}")]),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]f[ARGS]{}', None,
     [("get_weather", '{"city": "Paris"}'), ("f", "{}")]),
    ("mistral", 'Hi [TOOL_CALLS]f.v2-x[ARGS]{"a": 1}', "Hi", [("f.v2-x", '{"a": 1}')]),
    ("mistral", '[TOOL_CALLS]f[ARGS]"text"', '[TOOL_CALLS]f[ARGS]"text"', []),
    ("mistral", "[TOOL_CALLS]f", "[TOOL_CALLS]f", []),
    ("mistral", '[TOOL_CALLS]f{"a": 1}', None, [("f", '{"a": 1}')]),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {}}, {"bad": 1}]', ', {"bad": 1}]', [("f", "{}")]),
    ("mistral", "[TOOL_CALLS]not a call", "[TOOL_CALLS]not a call", []),
    ("mistral", "[TOOL_CALLS][ARGS]{}", "[TOOL_CALLS][ARGS]{}", []),
    ("mistral", "A [TOOL and [TOOL_CALLS][]", "A [TOOL and [TOOL_CALLS][]", []),
]
# Arguments that break after they began to stream: the stream cannot take back what it sent (see the
# module docstring); extract() returns such a call as content.
BROKEN = [
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": tru}}\n</tool_call>', '{"a": tru'),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": "cut off', '{"a": "cut off'),
    ("llama3_json", '{"name": "f", "parameters": {"a": 01}}', '{"a": 01'),
    ("mistral", '[TOOL_CALLS]f[ARGS]{"a": 1,}', '{"a": 1,'),
]


def collect(parser_name: str, chunks: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Stream `chunks` through a fresh parser: (content, [(name, arguments)], ids)."""
    parser = make_tool_parser(parser_name)
    content, calls, ids = "", [], []

    def take(delta: StreamDelta) -> None:
        nonlocal content
        content += delta.content
        for call in delta.tool_calls:
            if call.index == len(calls):  # a new call: its first delta names it
                assert call.id is not None and call.name, call
                calls.append([call.name, call.arguments])
                ids.append(call.id)
            else:
                assert call.index == len(calls) - 1 and call.id is None and call.name is None, call
                calls[-1][1] += call.arguments

    for chunk in chunks:
        take(parser.feed(chunk))
    take(parser.finish())
    return content or None, [tuple(call) for call in calls], ids


def splits(text: str, seed: int):
    """Every two-way split, char by char, and random chunkings."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    yield list(text)
    rng = random.Random(seed)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12)))) if len(text) > 1 else []
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("parser_name,text,content,calls", CASES)
def test_extract(parser_name, text, content, calls):
    result = make_tool_parser(parser_name).extract(text)
    assert result.content == content
    assert [(call.name, call.arguments) for call in result.tool_calls] == calls
    for call in result.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)
    assert len({call.id for call in result.tool_calls}) == len(calls)


@pytest.mark.parametrize("parser_name,text,content,calls", CASES)
def test_streaming_matches_extract_at_every_split(parser_name, text, content, calls):
    for chunks in splits(text, seed=len(text)):
        streamed_content, streamed_calls, ids = collect(parser_name, chunks)
        assert (streamed_content, streamed_calls) == (content, calls), chunks
        assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("parser_name,text,sent", BROKEN)
def test_broken_arguments(parser_name, text, sent):
    assert make_tool_parser(parser_name).extract(text).content == text  # whole: content, nothing lost
    content, calls, _ = collect(parser_name, list(text))  # streamed: the call stays as far as it was sent
    assert calls == [("f", sent)]
    assert text.endswith(sent + (content or ""))
    _, calls, _ = collect(parser_name, [text])  # in one piece, invalid JSON is seen before the call is sent
    assert calls == ([("f", sent)] if text.endswith(sent) else [])


def test_arguments_stream_as_they_arrive():
    parser = make_tool_parser("hermes")
    head = 'Hi <tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    delta = parser.feed(head)
    assert delta.content == "Hi"
    assert len(delta.tool_calls) == 1 and delta.tool_calls[0].name == "get_weather"
    assert delta.tool_calls[0].arguments == '{"city": "Pa'
    delta = parser.feed('ris"}}\n</tool_call>')
    assert delta.tool_calls[0].arguments == 'ris"}' and delta.tool_calls[0].id is None
    assert parser.finish() == StreamDelta()


def test_content_is_held_only_while_it_may_start_a_marker():
    parser = make_tool_parser("hermes")
    assert parser.feed("Hello <tool").content == "Hello"  # " <tool" may begin a call
    assert parser.feed("s> are fine  ").content == " <tools> are fine"  # trailing spaces may precede one
    assert parser.finish().content == "  "
    mistral = make_tool_parser("mistral")
    assert mistral.feed("a [TOOL").content == "a"
    assert mistral.feed("S]").content == " [TOOLS]"


def test_call_ids():
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", new_tool_call_id())
    assert new_tool_call_id() != new_tool_call_id()
    result = make_tool_parser("mistral").extract('[TOOL_CALLS][{"name": "f", "arguments": {}}]')
    assert re.fullmatch(r"[A-Za-z0-9]{9}", result.tool_calls[0].id)  # Mistral's templates insist on this
    assert TOOL_PARSERS["mistral"].needs_special_tokens and not TOOL_PARSERS["hermes"].needs_special_tokens


def test_extract_leaves_the_stream_alone():
    parser = make_tool_parser("hermes")
    parser.feed("<tool_call>")
    assert parser.extract("text").content == "text"
    assert collect("hermes", ["<tool_call>"])[0] == "<tool_call>"
    assert parser.finish().content == "<tool_call>"


def test_unknown_parser_and_feed_after_finish():
    with pytest.raises(ValueError, match=r"'nope'.*hermes, llama3_json, mistral"):
        make_tool_parser("nope")
    parser = make_tool_parser("hermes")
    parser.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        parser.feed("x")
