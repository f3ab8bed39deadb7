"""The grammar that enforces `tool_choice` "required" or a named function: an llguidance Lark grammar
under which the model can emit nothing but calls, in a tool parser's format, to the allowed functions,
with arguments valid against each function's `parameters` JSON schema.

    grammar = tool_call_grammar("hermes", tools, "required", parallel_tool_calls=True,
                                marker_token_ids=tool_marker_token_ids("hermes", tokenizer.token_to_id))
    SamplingParams(structured_outputs=StructuredOutputsParams(grammar=grammar), ...)

The calls are written exactly as the model's chat template renders them (Qwen's `<tool_call>\\n{...}\\n
</tool_call>`, Llama's `{"name": ..., "parameters": ...}; ...`, Mistral's `[TOOL_CALLS][{...}, ...]`), and
arguments as `json.dumps` writes them (`", "` and `": "`, no other whitespace), so the output stays in
the model's own distribution and bounded. Markers that are single tokens in the model's vocabulary
(Qwen's `<tool_call>`, Mistral's `[TOOL_CALLS]`) must be matched as those tokens: llguidance treats
special tokens and added `<...>` tokens apart from text, so a quoted string would make the model spell
them out byte by byte. Pass their ids (`tool_marker_token_ids`); the grammar then names them `<[id]>`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import llguidance

from serve_apps.llm.tool_parsers import TOOL_PARSERS

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
# json.dumps' separators, and no other whitespace: what the chat templates render (tojson)
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# Per format: the literal pieces around the calls; a piece in MARKERS may be a single token.
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_FORMATS = {
    # parser: (before the calls, before each call, arguments key, after each call, between calls, after all)
    "hermes": ((), (_OPEN, "\n"), "arguments", ("\n", _CLOSE), ("\n",), ()),
    "llama3_json": ((), (), "parameters", (), ("; ",), ()),
    "mistral": (("[TOOL_CALLS]", "["), (), "arguments", (), (", ",), ("]",)),
}
MARKERS = {"hermes": (_OPEN, _CLOSE), "llama3_json": (), "mistral": ("[TOOL_CALLS]",)}


def tool_marker_token_ids(parser: str, token_to_id: Callable[[str], int | None]) -> dict[str, int]:
    """{marker: token id} for the markers of `parser`'s format that are single tokens of the model
    (`token_to_id`, e.g. `Tokenizer.token_to_id`, returns None for a string that is not one)."""
    _check_parser(parser)
    return {marker: token_id for marker in MARKERS[parser] if (token_id := token_to_id(marker)) is not None}


def tool_call_grammar(parser: str, tools: list[dict], tool_choice: str | dict, parallel_tool_calls: bool = True,
                      *, marker_token_ids: dict[str, int] | None = None) -> str:
    """Lark grammar: one call (or, with `parallel_tool_calls`, one or more) in `parser`'s format to
    any of `tools` (`tool_choice="required"`) or to the one named
    (`{"type": "function", "function": {"name": ...}}`), arguments valid against its `parameters`."""
    _check_parser(parser)
    schemas = _validated_tools(tools)
    allowed = _allowed_names(tool_choice, schemas)
    before_all, before_call, arguments_key, after_call, between, after_all = _FORMATS[parser]
    marker_token_ids = marker_token_ids or {}

    def pieces(literals: tuple[str, ...]) -> list[str]:
        return [f"<[{marker_token_ids[s]}]>" if s in marker_token_ids else _lark_string(s) for s in literals]

    call_list = "call" + (f" ({' '.join(pieces(between))} call)*" if parallel_tool_calls else "")
    lines = [f"start: {' '.join([*pieces(before_all), call_list, *pieces(after_all)])}",
             "call: " + " | ".join(f"call_{i}" for i in range(len(allowed)))]
    for i, name in enumerate(allowed):
        head = _lark_string(f'{{"name": {json.dumps(name)}, "{arguments_key}": ')
        body = [*pieces(before_call), head, f"arguments_{i}", _lark_string("}"), *pieces(after_call)]
        lines.append(f"call_{i}: {' '.join(body)}")
        lines.append(f"arguments_{i}: %json {json.dumps(schemas[name])}")
    return "\n".join(lines) + "\n"


def _check_parser(parser: str) -> None:
    if parser not in TOOL_PARSERS:
        raise ValueError(f"unknown tool call parser {parser!r}; valid: {', '.join(sorted(TOOL_PARSERS))}")


def _lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _validated_tools(tools: list[dict]) -> dict[str, dict]:
    """{name: arguments schema, with the compact layout} for OpenAI tool dicts; ValueError names the bad one."""
    if not isinstance(tools, list) or not tools:
        raise ValueError(f"tools must be a non-empty list of tool objects, got {tools!r}")
    schemas: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}, got {tool!r}")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-', got {name!r}")
        if name in schemas:
            raise ValueError(f"tools[{i}]: function name {name!r} appears twice")
        parameters = function.get("parameters", {"type": "object"})
        if not isinstance(parameters, dict):
            raise ValueError(f"tools[{i}] ({name}).function.parameters must be a JSON schema object, "
                             f"got {type(parameters).__name__}")
        if parameters.get("type", "object") != "object":
            raise ValueError(f"tools[{i}] ({name}).function.parameters must describe an object "
                             f"(type 'object'), got type {parameters['type']!r}")
        schema = {**parameters, "type": "object",
                  "x-guidance": {**_JSON_LAYOUT, **parameters.get("x-guidance", {})}}
        error = llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_json_schema(schema))
        if error:
            raise ValueError(f"tools[{i}] ({name}).function.parameters is not a usable JSON schema: {error}")
        schemas[name] = schema
    return schemas


def _allowed_names(tool_choice: str | dict, schemas: dict[str, dict]) -> list[str]:
    if tool_choice == "required":
        return list(schemas)
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if not isinstance(function, dict) or tool_choice.get("type") != "function":
        raise ValueError(f"tool_choice must be 'required' or {{'type': 'function', 'function': {{'name': ...}}}} "
                         f"to be enforced by a grammar, got {tool_choice!r}")
    name = function.get("name")
    if name not in schemas:
        raise ValueError(f"tool_choice names function {name!r}, which is not among tools: {', '.join(schemas)}")
    return [name]
