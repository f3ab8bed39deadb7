"""OpenAI request bodies (pydantic, validated at the HTTP edge) and their mapping to engine requests.

Ranges follow the OpenAI API reference; a value outside them is a 400 with the field named, never
a 500. **An unknown field is a 400 that names it** (`extra="forbid"` on every body model): a field
we silently dropped would give an agent a wrong answer with HTTP 200. vLLM's extra sampling fields
(`top_k`, `min_p`, `repetition_penalty`, `stop_token_ids`, `ignore_eos`, `skip_special_tokens`,
`include_stop_str_in_output`, `allowed_token_ids`, `structured_outputs`, `chat_template_kwargs`) are
part of the surface. Fields accepted without effect are exactly those in `ACCEPTED_WITHOUT_EFFECT`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_apps.llm.chat_messages import ChatMessage, ChatTool, NamedToolChoice, ResponseFormat
from serve_apps.llm.chat_messages import StrictBody as _Body
from serve_apps.llm.request_limits import find_lone_surrogate

MAX_N = 16
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0
# Size bounds checked while the body is validated, before anything is tokenized; the prompt as a whole is also
# bounded by the model's context (request_limits.check_prompt_size) and the body by max_request_body_bytes.
MAX_MESSAGES = 1024
MAX_STOP_CHARS = 256  # one stop sequence
MAX_TOOLS = 128  # OpenAI's limit

# The one place listing fields we accept and do not act on (documented in the README's Model API section).
ACCEPTED_WITHOUT_EFFECT = {
    "user": "an end-user id for the provider's abuse monitoring; Strata keeps no per-user state",
}
STRUCTURED_OUTPUT_KEYS = ("json", "json_object", "regex", "choice", "grammar", "disable_any_whitespace")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")


class _RequestBody(_Body):
    """A whole request body: its text must be valid Unicode before any of it reaches a template or tokenizer."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        path = find_lone_surrogate(data)
        if path is not None:
            raise ValueError(f"{path} contains a lone UTF-16 surrogate (such as \\ud800), which is not valid "
                             "Unicode text; send well-formed UTF-8")
        return data


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False

    @field_validator("continuous_usage_stats")
    @classmethod
    def _no_continuous(cls, value: bool) -> bool:
        if value:
            raise ValueError("continuous_usage_stats is not supported; usage comes in the last chunk")
        return value


class _SamplingFields(_RequestBody):
    model: str
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # ACCEPTED_WITHOUT_EFFECT
    # vLLM's extra sampling fields
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    allowed_token_ids: list[int] | None = None
    structured_outputs: dict[str, Any] | None = None

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
        longest = max((len(s) for s in stops), default=0)
        if longest > MAX_STOP_CHARS:
            raise ValueError(f"a stop sequence may be at most {MAX_STOP_CHARS} characters, got {longest}")
        return stops or None

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys must be token ids (digit strings), got {token!r}")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(f"values must be in [-100, 100], got {bias} for token {token}")
        return value or None

    @field_validator("stop_token_ids", "allowed_token_ids")
    @classmethod
    def _non_negative_ids(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(token < 0 for token in value):
            raise ValueError("token ids must be >= 0")
        return value

    @field_validator("structured_outputs")
    @classmethod
    def _check_structured_outputs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(STRUCTURED_OUTPUT_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; allowed: {list(STRUCTURED_OUTPUT_KEYS)}")
        return value

    def sampling_fields(self) -> dict[str, Any]:
        """Engine SamplingParams fields; those the request left unset are absent (generation defaults apply)."""
        sampling: dict[str, Any] = {
            "n": self.n,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "seed": self.seed,
            "stop": self.stop,
            "ignore_eos": self.ignore_eos,
            "skip_special_tokens": self.skip_special_tokens,
            "include_stop_str_in_output": self.include_stop_str_in_output,
        }
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "stop_token_ids",
                     "allowed_token_ids", "logit_bias"):
            value = getattr(self, name)
            if value is not None:
                sampling[name] = value
        return sampling


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


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: Literal[REASONING_EFFORTS] | None = None  # type: ignore[valid-type]
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _check_tools(self) -> ChatCompletionRequest:
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError(f"tools: function names must be unique, got {names}")
        choice = self.tool_choice
        if choice is not None and choice != "none" and not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names function {choice.function.name!r}, which is not among tools {names}")
        forcing = choice == "required" or isinstance(choice, NamedToolChoice)
        if forcing and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("response_format and a required or named tool_choice cannot both constrain the output")
        if forcing and self.structured_outputs is not None:
            raise ValueError("structured_outputs and a required or named tool_choice cannot both constrain the output")
        if self.response_format is not None and self.response_format.type != "text" and self.structured_outputs:
            raise ValueError("give response_format or structured_outputs, not both")
        return self

    def effective_tool_choice(self) -> str | dict[str, Any]:
        """OpenAI's default: "auto" when tools are given, else "none"."""
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.model_dump()
        return self.tool_choice


class TokenizeRequest(_RequestBody):
    """vLLM's `POST /tokenize`: a prompt, or chat messages rendered by the model's template."""

    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, max_length=MAX_MESSAGES)
    tools: list[ChatTool] | None = Field(None, max_length=MAX_TOOLS)
    documents: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages (the template has BOS)
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give prompt or messages (exactly one)")
        return self

    def to_server(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "messages": [m.for_template() for m in self.messages] if self.messages is not None else None,
            "tools": [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None,
            "documents": self.documents,
            "chat_template_kwargs": dict(self.chat_template_kwargs or {}),
            "add_generation_prompt": self.add_generation_prompt,
            "add_special_tokens": (self.messages is None) if self.add_special_tokens is None else self.add_special_tokens,
            "return_token_strs": self.return_token_strs,
        }


class GenerateRequest(BaseModel):
    """What the ingress sends a server replica: the prompt, sampling and output options."""

    model_config = ConfigDict(extra="forbid")
    request_id: str
    model: str
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "none"
    parallel_tool_calls: bool = True
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    documents: list[dict[str, Any]] | None = None
    sampling: dict[str, Any]
    num_logprobs: int | None = None
    echo: bool = False


def structured_outputs_of(body: CompletionRequest | ChatCompletionRequest) -> dict[str, Any] | None:
    """`response_format` (OpenAI) or `structured_outputs` (vLLM) as engine StructuredOutputsParams fields."""
    if body.structured_outputs is not None:
        return dict(body.structured_outputs)
    response_format = getattr(body, "response_format", None)
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"json_object": True}
    return {"json": response_format.json_schema.schema_ or {"type": "object"}}


def to_generate_request(request_id: str, body: CompletionRequest | ChatCompletionRequest) -> GenerateRequest:
    """Map an OpenAI body onto engine SamplingParams fields (validated again by the engine)."""
    sampling = body.sampling_fields()
    structured = structured_outputs_of(body)
    if structured is not None:
        sampling["structured_outputs"] = structured
    if isinstance(body, ChatCompletionRequest):
        num_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        if body.top_logprobs and not body.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None:
            sampling["max_tokens"] = max_tokens
        kwargs = dict(body.chat_template_kwargs or {})
        if body.reasoning_effort is not None:
            kwargs.setdefault("reasoning_effort", body.reasoning_effort)
            if body.reasoning_effort == "none":
                kwargs.setdefault("enable_thinking", False)
        return GenerateRequest(
            request_id=request_id,
            model=body.model,
            messages=[message.for_template() for message in body.messages],
            tools=[tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None,
            tool_choice=body.effective_tool_choice(),
            parallel_tool_calls=body.parallel_tool_calls,
            chat_template_kwargs=kwargs,
            documents=body.documents,
            sampling=sampling,
            num_logprobs=num_logprobs,
        )
    sampling["max_tokens"] = body.max_tokens or 16
    return GenerateRequest(
        request_id=request_id,
        model=body.model,
        prompt=body.prompt,
        sampling=sampling,
        num_logprobs=body.logprobs,
        echo=body.echo,
    )
