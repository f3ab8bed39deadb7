"""Chat messages, tools and response formats as the OpenAI API sends them (pydantic, `extra="forbid"`).

`ChatCompletionRequest` (protocol.py) holds these; `ChatMessage.for_template` is what a chat template
sees. Fields of assistant messages the official client echoes back (`messages.append(choice.message)`:
refusal, annotations, audio, function_call) are accepted when empty and a 400 naming them otherwise.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CONTENT_PARTS = 256
MAX_CONTENT_CHARS = 2**20  # one message's text


class StrictBody(BaseModel):
    """Every request body model: an unknown field is a 400 that names it."""

    model_config = ConfigDict(extra="forbid")


class FunctionCall(StrictBody):
    name: str
    arguments: str | dict[str, Any]


class MessageToolCall(StrictBody):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictBody):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    refusal: None = None
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None

    @field_validator("content")
    @classmethod
    def _bounded_content(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(value, str) and len(value) > MAX_CONTENT_CHARS:
            raise ValueError(f"content may be at most {MAX_CONTENT_CHARS} characters, got {len(value)}")
        if isinstance(value, list) and len(value) > MAX_CONTENT_PARTS:
            raise ValueError(f"content may have at most {MAX_CONTENT_PARTS} parts, got {len(value)}")
        return value

    @field_validator("annotations")
    @classmethod
    def _no_annotations(cls, value: list[Any] | None) -> None:
        if value:
            raise ValueError("message annotations are not supported")
        return None

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls is only allowed on assistant messages, not {self.role}")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def text(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported, got type {part.get('type')!r}")
            parts.append(part["text"])
        return "".join(parts)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates expect it: tool-call arguments as objects, as transformers does, and
        an empty string for the null content of an assistant turn that only calls tools (Qwen3's template
        reads `message.content` unconditionally)."""
        content = self.text()
        message: dict[str, Any] = {"role": self.role, "content": "" if content is None and self.tool_calls else content}
        for name in ("name", "tool_call_id", "reasoning_content"):
            if getattr(self, name) is not None:
                message[name] = getattr(self, name)
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": _arguments_object(call.function.arguments)}}
                for call in self.tool_calls
            ]
        return message


def _arguments_object(arguments: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"tool call arguments must be a JSON object, got {arguments[:80]!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"tool call arguments must be a JSON object, got {type(value).__name__}")
    return value


class FunctionDefinition(StrictBody):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(StrictBody):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictBody):
    name: str


class NamedToolChoice(StrictBody):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(StrictBody):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictBody):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only allowed with type json_schema, not {self.type}")
        return self
