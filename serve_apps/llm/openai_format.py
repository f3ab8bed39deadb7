"""Shape server delta chunks into OpenAI response bodies and SSE stream chunks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(kw_only=True, slots=True)
class ResponseShape:
    """Which endpoint's wire format to produce, and the request's output options."""

    chat: bool
    response_id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    want_logprobs: bool = False
    echo: bool = False

    @property
    def object_name(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    @property
    def chunk_object_name(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"


def usage(prompt_tokens: int, completion_tokens: int, *, cached_tokens: int = 0,
          reasoning_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    if reasoning_tokens is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return body


class _ToolCalls:
    """Concatenates streamed tool-call deltas (by index) into OpenAI `message.tool_calls`."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for delta in deltas:
            call = self.calls.setdefault(delta["index"], {"id": None, "name": None, "arguments": []})
            call["id"] = delta.get("id") or call["id"]
            call["name"] = delta.get("name") or call["name"]
            call["arguments"].append(delta.get("arguments", ""))

    def message_calls(self) -> list[dict[str, Any]]:
        return [
            {"id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": "".join(call["arguments"])}}
            for _, call in sorted(self.calls.items())
        ]


def stream_tool_calls(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI `delta.tool_calls`: the first fragment of a call carries id, type and name."""
    out = []
    for delta in deltas:
        function: dict[str, Any] = {"arguments": delta.get("arguments", "")}
        entry: dict[str, Any] = {"index": delta["index"]}
        if delta.get("id") is not None:
            entry["id"] = delta["id"]
            entry["type"] = "function"
        if delta.get("name") is not None:
            function["name"] = delta["name"]
        entry["function"] = function
        out.append(entry)
    return out


def _completion_logprobs(entries: list[dict[str, Any]], text_offset: int) -> dict[str, Any]:
    offsets, position = [], text_offset
    for entry in entries:
        offsets.append(position)
        position += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{token: lp for token, lp in e["top"]} for e in entries],
        "text_offset": offsets,
    }


def _chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": e["token"],
                "logprob": e["logprob"],
                "bytes": list(e["token"].encode()),
                "top_logprobs": [
                    {"token": token, "logprob": lp, "bytes": list(token.encode())} for token, lp in e["top"]
                ],
            }
            for e in entries
        ]
    }


class Aggregate:
    """Collects a request's delta chunks into one non-streaming response."""

    def __init__(self, shape: ResponseShape):
        self.shape = shape
        self.prompt_tokens = 0
        self.prompt_text: str | None = None
        self.texts: dict[int, list[str]] = {}
        self.num_tokens: dict[int, int] = {}
        self.logprobs: dict[int, list[dict[str, Any]]] = {}
        self.finish: dict[int, str | None] = {}
        self.reasoning: dict[int, list[str]] = {}
        self.tool_calls: dict[int, _ToolCalls] = {}
        self.cached_tokens = 0
        self.reasoning_tokens: int | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        self.prompt_tokens = chunk.get("prompt_tokens", self.prompt_tokens)
        self.cached_tokens = max(self.cached_tokens, chunk.get("cached_tokens", 0))
        if chunk.get("prompt_text") is not None:
            self.prompt_text = chunk["prompt_text"]
        for out in chunk["outputs"]:
            index = out["index"]
            self.texts.setdefault(index, []).append(out["text"])
            self.num_tokens[index] = self.num_tokens.get(index, 0) + len(out["token_ids"])
            self.logprobs.setdefault(index, []).extend(out.get("logprobs") or [])
            self.finish[index] = out["finish_reason"] or self.finish.get(index)
            if "reasoning" in out:
                self.reasoning.setdefault(index, []).append(out["reasoning"])
                self.reasoning_tokens = (self.reasoning_tokens or 0) + out.get("reasoning_tokens", 0)
            if out.get("tool_calls"):
                self.tool_calls.setdefault(index, _ToolCalls()).add(out["tool_calls"])

    def response(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.texts):
            text = "".join(self.texts[index])
            choice: dict[str, Any] = {"index": index, "finish_reason": self.finish.get(index) or "length"}
            if self.shape.chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if index in self.reasoning:
                    message["reasoning_content"] = "".join(self.reasoning[index]) or None
                if index in self.tool_calls:
                    message["tool_calls"] = self.tool_calls[index].message_calls()
                    message["content"] = text or None
                choice["message"] = message
                choice["logprobs"] = _chat_logprobs(self.logprobs[index]) if self.shape.want_logprobs else None
            else:
                prefix = (self.prompt_text or "") if self.shape.echo else ""
                choice["text"] = prefix + text
                choice["logprobs"] = (
                    _completion_logprobs(self.logprobs[index], len(prefix)) if self.shape.want_logprobs else None
                )
            choices.append(choice)
        return {
            "id": self.shape.response_id,
            "object": self.shape.object_name,
            "created": self.shape.created,
            "model": self.shape.model,
            "choices": choices,
            "usage": usage(self.prompt_tokens, sum(self.num_tokens.values()), cached_tokens=self.cached_tokens,
                           reasoning_tokens=self.reasoning_tokens),
        }


class StreamFormatter:
    """Turns delta chunks into SSE lines (`data: {...}\\n\\n`), ending with the usage chunk and [DONE]."""

    def __init__(self, shape: ResponseShape, include_usage: bool):
        self.shape = shape
        self.include_usage = include_usage
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens: int | None = None
        self._started: set[int] = set()
        self._text_offsets: dict[int, int] = {}

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.shape.response_id,
            "object": self.shape.chunk_object_name,
            "created": self.shape.created,
            "model": self.shape.model,
            "choices": choices,
        }

    def events(self, chunk: dict[str, Any]) -> list[str]:
        self.prompt_tokens = chunk.get("prompt_tokens", self.prompt_tokens)
        self.cached_tokens = max(self.cached_tokens, chunk.get("cached_tokens", 0))
        choices = []
        for out in chunk["outputs"]:
            index = out["index"]
            self.completion_tokens += len(out["token_ids"])
            entries = out.get("logprobs") or []
            if self.shape.chat:
                delta: dict[str, Any] = {"content": out["text"]}
                if index not in self._started:
                    delta["role"] = "assistant"
                if "reasoning" in out:
                    self.reasoning_tokens = (self.reasoning_tokens or 0) + out.get("reasoning_tokens", 0)
                    if out["reasoning"]:
                        delta["reasoning_content"] = out["reasoning"]
                if out.get("tool_calls"):
                    delta["tool_calls"] = stream_tool_calls(out["tool_calls"])
                    delta["content"] = out["text"] or None
                choice = {"index": index, "delta": delta, "finish_reason": out["finish_reason"]}
                choice["logprobs"] = _chat_logprobs(entries) if self.shape.want_logprobs else None
            else:
                text = out["text"]
                if index not in self._started and self.shape.echo and chunk.get("prompt_text"):
                    text = chunk["prompt_text"] + text
                offset = self._text_offsets.get(index, 0)
                choice = {"index": index, "text": text, "finish_reason": out["finish_reason"]}
                choice["logprobs"] = _completion_logprobs(entries, offset) if self.shape.want_logprobs else None
                self._text_offsets[index] = offset + len(text)
            self._started.add(index)
            choices.append(choice)
        return [sse(self._envelope(choices))] if choices else []

    def final_events(self) -> list[str]:
        events = []
        if self.include_usage:
            body = self._envelope([])
            body["usage"] = usage(self.prompt_tokens, self.completion_tokens, cached_tokens=self.cached_tokens,
                                  reasoning_tokens=self.reasoning_tokens)
            events.append(sse(body))
        events.append("data: [DONE]\n\n")
        return events


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
