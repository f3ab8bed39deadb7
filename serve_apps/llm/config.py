"""Serve/YAML args for the LLM apps (pydantic at the edge, as Ray Serve LLM's `LLMServingArgs`).

A model is a checkpoint directory (or a Hugging Face id found in the local cache) plus engine kwargs; adding one
to `llm_configs` serves it under its `model_id` with no code change. `$VARS` in `model_source` are expanded so one
YAML fits any host.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_apps.llm import reasoning_parsers, tool_parsers
from serve_apps.llm.model_source import cached_model_id, hf_model_id, resolve_model_source
from serve_apps.llm.request_limits import DEFAULT_MAX_REQUEST_BODY_BYTES

# Output parsers by model format (`--tool-call-parser`, `--reasoning-parser`); the parser registries use these keys.
# The parser registries' names (`--tool-call-parser`, `--reasoning-parser`).
TOOL_CALL_PARSERS = tuple(tool_parsers.TOOL_PARSERS)
REASONING_PARSERS = tuple(reasoning_parsers.REASONING_PARSERS)
_PARSER_CHOICES = {"tool_call_parser": TOOL_CALL_PARSERS, "reasoning_parser": REASONING_PARSERS}

# Options a deployment accepts from YAML (a subset of `serve.deployment` options we pass through).
DEPLOYMENT_OPTION_KEYS = frozenset(
    {
        "num_replicas",
        "autoscaling_config",
        "ray_actor_options",
        "max_ongoing_requests",
        "max_queued_requests",
        "health_check_period_s",
        "health_check_timeout_s",
        "graceful_shutdown_timeout_s",
        "graceful_shutdown_wait_loop_s",
        "placement_group_bundles",
        "placement_group_strategy",
    }
)

DEFAULT_REQUEST_TIMEOUT_S = 600.0
# A replica being stopped (scale-down, redeploy) first drains its running requests for up to this long; a request
# runs at most request_timeout_s, so a drain this long never cuts a stream (Serve's own default is 20 s).
SHUTDOWN_DRAIN_MARGIN_S = 30.0
DEFAULT_DEPLOYMENT_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.5},
    "max_ongoing_requests": 32,
    "max_queued_requests": 64,
    "health_check_period_s": 2.0,
    "graceful_shutdown_timeout_s": DEFAULT_REQUEST_TIMEOUT_S + SHUTDOWN_DRAIN_MARGIN_S,
}
INGRESS_DEFAULT_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.25},
    "max_ongoing_requests": 512,
    "graceful_shutdown_timeout_s": DEFAULT_REQUEST_TIMEOUT_S + SHUTDOWN_DRAIN_MARGIN_S,
}


def _check_deployment_options(field: str, options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - DEPLOYMENT_OPTION_KEYS
    if unknown:
        raise ValueError(f"{field} has unknown keys {sorted(unknown)}; allowed: {sorted(DEPLOYMENT_OPTION_KEYS)}")
    if "num_replicas" in options and "autoscaling_config" in options:
        raise ValueError(f"{field}: set num_replicas or autoscaling_config, not both")
    return options


def deployment_options(options: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the user's options (autoscaling replaces the fixed replica count)."""
    merged = {**DEFAULT_DEPLOYMENT_OPTIONS, **options}
    if "autoscaling_config" in options:
        merged.pop("num_replicas", None)
    return merged


class KVTransferConfig(BaseModel):
    """How prefill hands KV to decode (only used by the pd app)."""

    model_config = ConfigDict(extra="forbid")
    transport: str = "object_store"
    max_inflight_transfers: int = Field(8, ge=1)
    min_prompt_tokens: int = Field(32, ge=0, description="shorter prompts are prefilled on decode")
    prefill_timeout_s: float = Field(30.0, gt=0, description="after this, decode prefills locally")
    kv_handle_timeout_s: float = Field(120.0, gt=0, description="a pulled KV package not in the decode cache after "
                                                               "this long is released (a backstop; every path "
                                                               "releases its own)")


class LLMConfig(BaseModel):
    """One served model."""

    model_config = ConfigDict(extra="forbid")
    model_id: str | None = Field(None, description="served name; default: the Hugging Face id or the directory name")
    model_source: str = Field(description="HF-format checkpoint directory, or a Hugging Face id org/name[@revision] "
                                          "resolved offline from the local Hugging Face cache")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    max_waiting_requests: int = Field(64, ge=1, description="per-replica queue bound; beyond it 429")
    request_timeout_s: float = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0,
                                     description="a request running longer (from its arrival at the replica) is "
                                                 "aborted, its KV blocks freed, and the client gets a 408")
    num_threads: int | None = Field(1, ge=1, description="engine threads per replica (engine_kwargs wins)")
    deployment_config: dict[str, Any] = Field(default_factory=dict, description="colocated LLMServer")
    prefill_deployment_config: dict[str, Any] = Field(default_factory=dict)
    decode_deployment_config: dict[str, Any] = Field(default_factory=dict)
    kv_transfer_config: KVTransferConfig = Field(default_factory=KVTransferConfig)
    tool_call_parser: str | None = Field(None, description=f"tool-call output format, one of {TOOL_CALL_PARSERS}")
    enable_auto_tool_choice: bool = Field(False, description="parse tool calls the model chooses to make "
                                                             "(tool_choice auto); needs tool_call_parser")
    reasoning_parser: str | None = Field(None, description=f"reasoning output format, one of {REASONING_PARSERS}")
    chat_template: str | None = Field(None, description="Jinja chat template replacing the tokenizer's: a file "
                                                        "(read at validation) or the template text")
    generation_config: str = Field("auto", description="sampling defaults: 'auto' (the model's "
                                                       "generation_config.json), 'vllm' (none) or a folder holding one")

    @field_validator("model_source")
    @classmethod
    def _resolve_source(cls, value: str) -> str:
        # A directory is read where the engine runs (a replica's node may mount what this one does not); an id
        # must be in this node's Hugging Face cache, and the replicas read the snapshot path found here.
        value = os.path.expanduser(os.path.expandvars(value))
        return resolve_model_source(value) if hf_model_id(value) else value

    @field_validator("deployment_config", "prefill_deployment_config", "decode_deployment_config")
    @classmethod
    def _check_options(cls, value: dict[str, Any], info) -> dict[str, Any]:
        return _check_deployment_options(info.field_name, value)

    @field_validator("tool_call_parser", "reasoning_parser")
    @classmethod
    def _check_parser(cls, value: str | None, info) -> str | None:
        choices = _PARSER_CHOICES[info.field_name]
        if value is not None and value not in choices:
            raise ValueError(f"{info.field_name} must be one of {choices}, got {value!r}")
        return value

    @field_validator("chat_template")
    @classmethod
    def _load_chat_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = os.path.expanduser(value)
        if os.path.isfile(path):
            with open(path) as file:
                return file.read()
        if "{{" not in value and "{%" not in value:
            raise ValueError(f"chat_template {value!r} is neither a file nor a Jinja template (no '{{{{' or '{{%')")
        return value

    @field_validator("generation_config")
    @classmethod
    def _check_generation_config(cls, value: str) -> str:
        if not value:
            raise ValueError("generation_config must be 'auto', 'vllm' or a folder holding generation_config.json")
        return value

    @model_validator(mode="after")
    def _check_auto_tool_choice(self) -> LLMConfig:
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("enable_auto_tool_choice (--enable-auto-tool-choice) needs tool_call_parser "
                             f"(--tool-call-parser, one of {TOOL_CALL_PARSERS})")
        return self

    @model_validator(mode="after")
    def _drain_running_requests_on_shutdown(self) -> LLMConfig:
        # Unless set, a stopping replica waits as long as its longest request may run.
        drain_s = self.request_timeout_s + SHUTDOWN_DRAIN_MARGIN_S
        for options in (self.deployment_config, self.prefill_deployment_config, self.decode_deployment_config):
            options.setdefault("graceful_shutdown_timeout_s", drain_s)
        return self

    @model_validator(mode="after")
    def _default_model_id(self) -> LLMConfig:
        if not self.model_id:
            self.model_id = cached_model_id(self.model_source) or os.path.basename(os.path.normpath(self.model_source))
        return self


API_KEY_ENV = "STRATA_API_KEY"


class LLMServingArgs(BaseModel):
    """Args of `build_openai_app` and `build_pd_openai_app` (also the `args:` of a Serve config YAML)."""

    model_config = ConfigDict(extra="forbid")
    llm_configs: list[LLMConfig] = Field(min_length=1)
    ingress_deployment_config: dict[str, Any] = Field(default_factory=dict)
    api_key: str | None = Field(None, description="requests need `Authorization: Bearer KEY` (for Python callers; "
                                                  "YAMLs and the CLI take api_key_file or $STRATA_API_KEY)")
    api_key_file: str | None = Field(None, description="a file holding the key, read where the app is built")
    enable_docs: bool = Field(False, description="serve /docs, /redoc and /openapi.json (off: they answer 404)")
    max_request_body_bytes: int = Field(DEFAULT_MAX_REQUEST_BODY_BYTES, ge=1024,
                                        description="a larger body is a 413 before it is parsed")

    @field_validator("ingress_deployment_config")
    @classmethod
    def _check_ingress(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_deployment_options("ingress_deployment_config", value)

    @field_validator("api_key")
    @classmethod
    def _non_empty_key(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("api_key must not be empty (leave it unset for no key)")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> LLMServingArgs:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("give api_key or api_key_file, not both")
        return self

    def resolved_api_key(self) -> str | None:
        """The key requests need: api_key, else api_key_file's content, else $STRATA_API_KEY, else None."""
        if self.api_key is not None:
            return self.api_key
        if self.api_key_file is not None:
            path = os.path.expanduser(self.api_key_file)
            try:
                with open(path) as file:
                    key = file.read().strip()
            except OSError as error:
                raise ValueError(f"api_key_file {path!r} cannot be read where the app is built: {error}") from None
            if not key:
                raise ValueError(f"api_key_file {path!r} is empty")
            return key
        return os.environ.get(API_KEY_ENV) or None

    @model_validator(mode="after")
    def _unique_ids(self) -> LLMServingArgs:
        ids = [config.model_id for config in self.llm_configs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"llm_configs model_id values must be unique, got {ids}")
        return self


def deployment_name(prefix: str, model_id: str) -> str:
    """`Prefill:<model>` / `Decode:<model>` / `LLMServer:<model>`, sanitised as Ray Serve LLM does."""
    return prefix + model_id.replace("/", "--").replace(".", "_")
