"""Chat-template rendering in the jinja environment that transformers gives templates, so a model's own
template renders here as it does in transformers' `apply_chat_template`: the full messages (assistant
`tool_calls`, `tool` messages), `tools`, `documents`, special tokens and the request's template kwargs."""

from __future__ import annotations

import functools
import json
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Variables the renderer sets itself; a request's chat_template_kwargs may not replace them.
RESERVED_TEMPLATE_VARIABLES = ("messages", "tools", "documents", "add_generation_prompt")

# A message's reasoning may arrive under any of these names; templates read `reasoning_content` (Qwen3)
# or `thinking` (gpt-oss), so both are filled, as transformers does.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """The chat template refused the conversation (its `raise_exception`), or could not compile or render it.
    The message is what the template said; the server answers it with HTTP 400."""


def _raise_exception(message: str):
    raise ChatTemplateError(message)


def _tojson(value, ensure_ascii: bool = False, indent: int | None = None, separators: tuple | None = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes `<`, `>`, `&` and `'`, which would change the prompt text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _DictConstructor:
    """`dict(...)` for templates without handing them the `dict` type itself."""

    def __call__(self, *args, **kwargs) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's `namespace` refusing underscore names, so a template cannot reach Python internals through it."""

    def __init__(*args, **kwargs):  # first positional is self, as in jinja's Namespace, so `self=` stays usable
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name in attributes:
            _Namespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name, value):
        _Namespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace")


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in transformers; serving
    needs no mask, so the body renders as it is (in its own scope, as transformers' call block does)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller) -> str:
        return caller()


def _build_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictConstructor()
    env.globals["namespace"] = _Namespace
    return env


_ENVIRONMENT = _build_environment()


@functools.lru_cache(maxsize=32)
def _compile_chat_template(template: str) -> jinja2.Template:
    try:
        return _ENVIRONMENT.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from e


def _template_messages(messages: list[dict]) -> list[dict]:
    """The messages as transformers hands them to a template: keys whose value is None dropped (templates test
    `'tool_calls' in message`, and OpenAI clients send `content: null` beside tool calls) and reasoning under
    both names templates read."""
    prepared = []
    for message in messages:
        if not isinstance(message, dict):
            raise ChatTemplateError(f"a chat message must be a dict, got {type(message).__name__}")
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in _REASONING_FIELDS if key in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def render_chat_template(template: str, messages: list[dict], /, *, tools: list[dict] | None = None,
                         documents: list[dict] | None = None, add_generation_prompt: bool = True,
                         special_tokens: dict[str, str] | None = None, chat_template_kwargs: dict | None = None,
                         **template_kwargs) -> str:
    """The prompt text `template` makes of the conversation. `tools` are OpenAI tool dicts
    (`{"type": "function", "function": {...}}`) as given; `special_tokens` (bos_token, eos_token, ...) come
    from the tokenizer and the template kwargs (`chat_template_kwargs` and `**template_kwargs`, e.g.
    `enable_thinking=False`) override them, as in transformers, but may not replace the reserved variables."""
    extra = {**(chat_template_kwargs or {}), **template_kwargs}
    reserved = sorted(name for name in extra if name in RESERVED_TEMPLATE_VARIABLES)
    if reserved:
        raise ChatTemplateError(f"chat_template_kwargs may not set {', '.join(reserved)}: the server sets these")
    if documents is not None and not all(isinstance(document, dict) for document in documents):
        raise ChatTemplateError("documents must be a list of dicts (e.g. with 'title' and 'text')")
    compiled = _compile_chat_template(template)
    variables = {**(special_tokens or {}), **extra}
    try:
        return compiled.render(messages=_template_messages(messages), tools=tools, documents=documents,
                               add_generation_prompt=add_generation_prompt, **variables)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e
    except (TypeError, ValueError, KeyError, IndexError) as e:
        # A message shape the template does not expect (content as a list where it concatenates strings...).
        raise ChatTemplateError(f"chat template failed on this conversation: {type(e).__name__}: {e}") from e
