"""How big a request the ingress takes, decided before anything is tokenized (pure functions, no Ray).

A tokenizer is slow on a huge prompt (a 9 MB prompt took 21 s to reject) and holds the GIL meanwhile, so the
ingress bounds a prompt by characters first: a model takes at most `max_model_len` tokens, and a token is at
most `MAX_CHARS_PER_TOKEN` characters. That bound is conservative: the longest tokens of real vocabularies
(runs of spaces or dashes in code-heavy BPEs) are 16-32 characters, and ordinary text averages about 4, so a
prompt over the bound can never fit, and a prompt under it still gets its exact token count on the replica.
"""

from __future__ import annotations

import json
import os
from typing import Any

from serve_apps.llm.errors import OpenAIError

MAX_CHARS_PER_TOKEN = 32
DEFAULT_MAX_REQUEST_BODY_BYTES = 4 * 2**20  # a 128k-token prompt is ~0.5 MB of text; 4 MiB leaves room for tools
DEFAULT_ENGINE_MAX_MODEL_LEN = 2048  # the engine's fallback when config.json has no max_position_embeddings


def max_prompt_chars(max_model_len: int) -> int:
    return max_model_len * MAX_CHARS_PER_TOKEN


def checkpoint_max_model_len(model_source: str, engine_kwargs: dict[str, Any]) -> int | None:
    """An upper bound on the model's context as the engine will set it (it may cap it lower, never higher):
    `engine_kwargs.max_model_len`, else the checkpoint's `max_position_embeddings`. None when the checkpoint
    is not readable here (a replica's node may mount what the builder's does not): no character bound then."""
    if engine_kwargs.get("max_model_len"):
        return int(engine_kwargs["max_model_len"])
    path = os.path.join(model_source, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as file:
        config = json.load(file)
    text_config = config.get("text_config") or {}
    return int(config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
               or DEFAULT_ENGINE_MAX_MODEL_LEN)


def _text_chars(content: Any) -> int:
    """Characters of text (content parts count their text); JSON structures (tools, documents) as serialized."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in content):
        return sum(len(part["text"]) if isinstance(part.get("text"), str) else 0 for part in content)
    return len(json.dumps(content, ensure_ascii=False))


def request_prompt_chars(body: Any) -> tuple[int, str]:
    """(characters the prompt is made of, the field holding them): the prompt text, or every message's
    content plus the tools and documents a chat template renders into the prompt."""
    prompt = getattr(body, "prompt", None)
    if isinstance(prompt, str):
        return len(prompt), "prompt"
    messages = getattr(body, "messages", None) or []
    chars = sum(_text_chars(m.content) + _text_chars(m.reasoning_content) + _text_chars(
        [call.model_dump() for call in m.tool_calls or []]) for m in messages)
    tools = getattr(body, "tools", None)
    if tools:
        chars += _text_chars([tool.model_dump(exclude_none=True) for tool in tools])
    chars += _text_chars(getattr(body, "documents", None))
    return chars, "messages"


def check_prompt_size(body: Any, max_model_len: int | None) -> None:
    """A 400 for a prompt that cannot fit `max_model_len`, told by its length alone (no tokenizer)."""
    if max_model_len is None:
        return
    prompt = getattr(body, "prompt", None)
    if isinstance(prompt, list) and len(prompt) >= max_model_len:
        raise OpenAIError(f"prompt has {len(prompt)} tokens; this model's context is {max_model_len} tokens",
                          param="prompt", code="context_length_exceeded")
    chars, field = request_prompt_chars(body)
    limit = max_prompt_chars(max_model_len)
    if chars > limit:
        raise OpenAIError(
            f"{field} is {chars} characters; this model takes at most {limit} characters ({max_model_len} tokens "
            f"x {MAX_CHARS_PER_TOKEN} characters per token, more than any tokenizer packs)",
            param=field, code="context_length_exceeded")


def find_lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path of the first string holding a lone UTF-16 surrogate (JSON allows `"\\ud800"`; UTF-8 and every
    tokenizer do not), or None."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = find_lone_surrogate(key, path) if isinstance(key, str) else None
        found = found or find_lone_surrogate(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None
