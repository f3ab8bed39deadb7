"""The tool-choice grammar on the real engine with a tiny random-weight model: whatever the seed, the
output parses (with the same format's tool parser) into calls to allowed functions whose arguments
validate against their schemas; plus marker tokens and the validation of tools and tool_choice."""

from __future__ import annotations

import json

import jsonschema
import llguidance
import pytest

from runtime.engine import LLMEngine, SamplingParams, StructuredOutputsParams
from runtime.engine.testing import build_tiny_model, train_tokenizer
from serve_apps.llm.tool_grammar import tool_call_grammar, tool_marker_token_ids
from serve_apps.llm.tool_parsers import make_tool_parser

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                                        "unit": {"enum": ["c", "f"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "minimum": 0, "maximum": 99},
            "exact": {"type": "boolean"}}, "required": ["a", "b"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {},
                                                                     "additionalProperties": False}}},
]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
NAMED = {"type": "function", "function": {"name": "add"}}
# (tool_choice, parallel_tool_calls, allowed names)
CHOICES = [("required", True, set(SCHEMAS)), (NAMED, True, {"add"}), ("required", False, set(SCHEMAS))]
SEEDS = (0, 1, 2)


PARSERS = ("hermes", "llama3_json", "mistral")


@pytest.fixture(scope="module")
def completions(tmp_path_factory) -> dict[tuple[str, int, int], object]:
    """(parser, choice index, seed) -> finished completion; all in one batch, so the run is as long as
    its longest output."""
    model_dir = build_tiny_model(str(tmp_path_factory.mktemp("tool-grammar")), "qwen3", max_position_embeddings=1024)
    engine = LLMEngine(model_dir, num_threads=1)
    for parser in PARSERS:
        for c, (tool_choice, parallel, _) in enumerate(CHOICES):
            grammar = tool_call_grammar(parser, TOOLS, tool_choice, parallel_tool_calls=parallel)
            for seed in SEEDS:
                engine.add_request(json.dumps([parser, c, seed]), "Call a tool, please.", SamplingParams(
                    structured_outputs=StructuredOutputsParams(grammar=grammar), max_tokens=700, temperature=1.0,
                    seed=seed))
    finished = {}
    while engine.has_unfinished_requests():
        finished.update({tuple(json.loads(output.request_id)): output.outputs[0]
                         for output in engine.step() if output.finished})
    return finished


@pytest.mark.parametrize("parser", PARSERS)
def test_generated_calls_parse_and_validate(completions, parser):
    num_calls = []
    for c, (_, parallel, allowed) in enumerate(CHOICES):
        for seed in SEEDS:
            completion = completions[parser, c, seed]
            assert completion.finish_reason == "stop", completion.text  # the grammar completed
            result = make_tool_parser(parser).extract(completion.text)
            assert result.content is None, completion.text
            assert len(result.tool_calls) >= 1 if parallel else len(result.tool_calls) == 1, completion.text
            for call in result.tool_calls:
                assert call.name in allowed
                jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
            streamed = make_tool_parser(parser)
            deltas = [streamed.feed(completion.text[i:i + 3]) for i in range(0, len(completion.text), 3)]
            arguments: dict[int, str] = {}
            for delta in [*deltas, streamed.finish()]:
                assert delta.content == ""
                for call in delta.tool_calls:
                    arguments[call.index] = arguments.get(call.index, "") + call.arguments
            assert list(arguments.values()) == [call.arguments for call in result.tool_calls]
            num_calls.append(len(result.tool_calls))
    assert max(num_calls) > 1  # the parallel grammars did make several calls


def test_marker_tokens_are_matched_as_tokens():
    tokenizer = train_tokenizer()
    tokenizer.add_special_tokens(["<tool_call>", "</tool_call>", "[TOOL_CALLS]"])
    ids = tool_marker_token_ids("hermes", tokenizer.token_to_id)
    assert set(ids) == {"<tool_call>", "</tool_call>"} and tool_marker_token_ids("llama3_json", tokenizer.token_to_id) == {}
    assert tool_marker_token_ids("hermes", train_tokenizer().token_to_id) == {}
    ll_tokenizer = llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=tokenizer.get_vocab_size())

    def accepts(grammar: str, token_ids: list[int]) -> bool:
        matcher = llguidance.LLMatcher(ll_tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return all(matcher.consume_token(t) for t in token_ids) and matcher.is_accepting()

    def spelled(text: str) -> list[int]:  # one byte-level token per character, no special tokens
        return [tokenizer.encode(char, add_special_tokens=False).ids[0] for char in text]

    body = '\n{"name": "ping", "arguments": {}}\n'
    as_tokens = [ids["<tool_call>"], *spelled(body), ids["</tool_call>"]]
    with_ids = tool_call_grammar("hermes", TOOLS, {"type": "function", "function": {"name": "ping"}},
                                 marker_token_ids=ids)
    without_ids = tool_call_grammar("hermes", TOOLS, {"type": "function", "function": {"name": "ping"}})
    assert accepts(with_ids, as_tokens)
    assert not accepts(with_ids, spelled(f"<tool_call>{body}</tool_call>"))
    assert accepts(without_ids, spelled(f"<tool_call>{body}</tool_call>"))
    mistral = tool_call_grammar("mistral", TOOLS, "required",
                                marker_token_ids=tool_marker_token_ids("mistral", tokenizer.token_to_id))
    assert accepts(mistral, [tokenizer.token_to_id("[TOOL_CALLS]"), *spelled('[{"name": "ping", "arguments": {}}]')])


@pytest.mark.parametrize("tools,tool_choice,message", [
    ([], "required", "non-empty list"),
    ([{"type": "function"}], "required", r"tools\[0\] must be"),
    ([{"type": "code", "function": {"name": "f"}}], "required", r"tools\[0\] must be"),
    ([{"type": "function", "function": {"name": "bad name"}}], "required", r"tools\[0\]\.function\.name"),
    ([{"type": "function", "function": {"name": "f"}}] * 2, "required", r"tools\[1\]: function name 'f' appears twice"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], "required", r"\(f\).*JSON schema object"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "required", r"\(f\).*object"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {"type": "nope"}}}}}],
     "required", r"tools\[0\] \(f\)\.function\.parameters is not a usable JSON schema"),
    (TOOLS, {"type": "function", "function": {"name": "missing"}}, "'missing', which is not among tools"),
    (TOOLS, "auto", "tool_choice must be 'required'"),
    (TOOLS, {"function": {"name": "add"}}, "tool_choice must be 'required'"),
])
def test_invalid_tools_and_tool_choice(tools, tool_choice, message):
    with pytest.raises(ValueError, match=message):
        tool_call_grammar("hermes", tools, tool_choice)


def test_unknown_parser_and_default_parameters():
    with pytest.raises(ValueError, match=r"'nope'.*hermes, llama3_json, mistral"):
        tool_call_grammar("nope", TOOLS, "required")
    grammar = tool_call_grammar("llama3_json", [{"type": "function", "function": {"name": "f"}}], "required", False)
    assert grammar.startswith("start: call\n") and '"type": "object"' in grammar
