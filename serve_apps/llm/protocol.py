"""OpenAI request bodies (pydantic, validated at the HTTP edge) and their mapping to engine requests.

Ranges follow the OpenAI API reference; a value outside them is a 400 with the field named, never
a 500. Unknown fields are ignored, as the official client sends some we do not use (`user`, ...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 16
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else list(value)
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops or None


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> str | list[int]:
        # Batched prompts are unwrapped when there is exactly one; more are a 400, not a crash.
        if isinstance(value, list) and value and isinstance(value[0], (str, list)):
            if len(value) != 1:
                raise ValueError("only one prompt per request is supported")
            value = value[0]
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and any(token < 0 for token in value):
            raise ValueError("prompt token ids must be >= 0")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class GenerateRequest(BaseModel):
    """What the ingress sends a server replica: the prompt, sampling and output options."""

    request_id: str
    model: str
    prompt: str | list[int] | None = None
    messages: list[dict[str, str]] | None = None
    sampling: dict[str, Any]
    num_logprobs: int | None = None
    echo: bool = False


def to_generate_request(request_id: str, body: CompletionRequest | ChatCompletionRequest) -> GenerateRequest:
    """Map an OpenAI body onto engine SamplingParams fields (validated again by the engine)."""
    sampling: dict[str, Any] = {
        "n": body.n,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "seed": body.seed,
        "stop": body.stop,
        "ignore_eos": body.ignore_eos,
    }
    if isinstance(body, ChatCompletionRequest):
        max_tokens = body.max_completion_tokens or body.max_tokens
        num_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        if body.top_logprobs and not body.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return GenerateRequest(
            request_id=request_id,
            model=body.model,
            messages=messages,
            sampling={**sampling, "max_tokens": max_tokens},
            num_logprobs=num_logprobs,
        )
    return GenerateRequest(
        request_id=request_id,
        model=body.model,
        prompt=body.prompt,
        sampling={**sampling, "max_tokens": body.max_tokens or 16},
        num_logprobs=body.logprobs,
        echo=body.echo,
    )
