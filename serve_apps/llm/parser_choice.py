"""Which output parsers a chat request gets, and the decoding constraint a forced tool choice adds.

A pure function of the server's parser settings, the request and its rendered prompt: the reasoning
parser (`--reasoning-parser`) always; a tool-call parser for `tool_choice` "auto" (only when the server
was started with `--enable-auto-tool-choice --tool-call-parser`), and for "required" or a named function
also a grammar that constrains decoding to calls in that parser's format (hermes unless configured).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serve_apps.llm.choice_parsing import ParserSpec
from serve_apps.llm.config import LLMConfig
from serve_apps.llm.errors import OpenAIError
from serve_apps.llm.protocol import GenerateRequest


def pick_parsers(config: LLMConfig, request: GenerateRequest, prompt_text: str, sampling: dict[str, Any],
                 token_to_id: Callable[[str], int | None]) -> ParserSpec:
    """The request's ParserSpec; may set `structured_outputs` and `skip_special_tokens` in `sampling`."""
    spec = ParserSpec(reasoning_parser=config.reasoning_parser)
    if spec.reasoning_parser is not None:
        from serve_apps.llm.reasoning_parsers import prompt_ends_in_thinking

        spec.thinking_in_prompt = prompt_ends_in_thinking(prompt_text)
    choice = request.tool_choice
    if not request.tools or choice == "none":
        return spec
    if choice == "auto":
        if not (config.enable_auto_tool_choice and config.tool_call_parser):
            raise OpenAIError('tool_choice "auto" needs the server started with --enable-auto-tool-choice and '
                              "--tool-call-parser (or tool_choice \"required\" or a named function, which "
                              "any model serves)", param="tool_choice")
        strict = [tool["function"]["name"] for tool in request.tools if tool["function"].get("strict")]
        if strict:
            raise OpenAIError(f"tools {strict} ask for strict arguments, which only a \"required\" or named "
                              'tool_choice enforces (with "auto" the model\'s calls are parsed, not constrained)',
                              param="tools")
        spec.tool_parser = config.tool_call_parser
        _keep_marker_tokens(spec.tool_parser, sampling)
        return spec
    from serve_apps.llm.tool_grammar import tool_call_grammar, tool_marker_token_ids

    spec.tool_parser = config.tool_call_parser or "hermes"
    try:
        grammar = tool_call_grammar(
            spec.tool_parser, request.tools, choice, request.parallel_tool_calls,
            marker_token_ids=tool_marker_token_ids(spec.tool_parser, token_to_id))
    except ValueError as exc:
        raise OpenAIError(str(exc), param="tools") from None
    sampling["structured_outputs"] = {"grammar": grammar}
    _keep_marker_tokens(spec.tool_parser, sampling)
    return spec


def _keep_marker_tokens(parser: str, sampling: dict[str, Any]) -> None:
    """A format whose call marker is a special token (Mistral's [TOOL_CALLS]) must see it in the text."""
    from serve_apps.llm.tool_parsers import TOOL_PARSERS

    if TOOL_PARSERS[parser].needs_special_tokens:
        sampling["skip_special_tokens"] = False
