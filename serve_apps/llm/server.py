"""`LLMServer:<model>`: a Serve replica that owns one engine and streams delta chunks to the ingress.

Colocated mode uses it as is (role "both"); the pd app subclasses it (`pd_server.py`). Errors a
user caused are yielded as `{"error": ...}` chunks so they reach the ingress as 4xx, not as a
replica exception. Templating and tokenizing run on a worker thread (the tokenizer releases the GIL),
so one big prompt never stalls the event loop that streams other requests; each request runs at
most `request_timeout_s` from its arrival.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray

from serve_apps.llm.choice_parsing import ParserSpec
from serve_apps.llm.config import LLMConfig
from serve_apps.llm.engine_loop import AsyncEngine, RequestDeadlineExceeded
from serve_apps.llm.errors import OpenAIError
from serve_apps.llm.metrics import ServeMetrics
from serve_apps.llm.outputs import DeltaTracker
from serve_apps.llm.parser_choice import pick_parsers
from serve_apps.llm.protocol import GenerateRequest

logger = logging.getLogger(__name__)

PREPARE_THREADS = 4


@dataclass(kw_only=True, slots=True)
class PreparedRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: Any  # runtime.engine.SamplingParams
    num_logprobs: int | None
    prompt_text: str | None
    parsers: ParserSpec
    deadline_s: float | None = None  # on the replica loop's clock; past it the request is aborted (408)


class LLMServer:
    """One engine per replica; `generate` is a streaming Serve method."""

    role = "both"
    name_prefix = "LLMServer:"

    def __init__(self, llm_config: dict[str, Any]):
        from runtime.engine import LLMEngine

        self.llm_config = LLMConfig.model_validate(llm_config)
        engine_kwargs = dict(self.llm_config.engine_kwargs)
        if self.llm_config.num_threads is not None:
            engine_kwargs.setdefault("num_threads", self.llm_config.num_threads)
        engine = LLMEngine(self.llm_config.model_source, role=self.role, **engine_kwargs)
        self.tokenizer = engine.tokenizer
        self.model_fingerprint = engine.runner.fingerprint
        # Big prompts tokenize here, not on the event loop; a few threads so one does not delay every other.
        self._prepare_pool = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="prepare")
        self.max_model_len = engine.max_model_len
        self.vocab_size = _vocab_size(engine)
        self.generation_defaults = _generation_defaults(self.llm_config)
        self.engine = AsyncEngine(engine, max_waiting_requests=self.llm_config.max_waiting_requests)
        self.metrics = ServeMetrics(deployment=self.name_prefix + self.llm_config.model_id, model=self.llm_config.model_id)
        self._metrics_task: asyncio.Task | None = None

    # -- Serve hooks --------------------------------------------------------------------------

    async def check_health(self) -> None:
        if not self.engine._thread.is_alive():
            raise RuntimeError("engine loop thread died")

    def record_routing_stats(self) -> dict[str, Any]:
        """Read by the request routers (decode: free KV blocks) every request_routing_stats_period_s."""
        stats = self.engine.stats()
        return {
            "num_free_blocks": stats.get("num_free_blocks", 0),
            "num_total_blocks": stats.get("num_total_blocks", 0),
            "num_running": stats.get("num_running", 0),
            "num_waiting": stats.get("num_waiting", 0),
        }

    async def engine_stats(self) -> dict[str, Any]:
        """Engine counters plus replica-level ones (tests and the planner read these)."""
        return {
            **self.engine.stats(),
            "num_requests": self.engine.num_requests,
            "replica": ray.get_runtime_context().get_actor_name(),
        }

    def __del__(self) -> None:
        # Serve calls this after draining running requests (up to graceful_shutdown_timeout_s).
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
        pool = getattr(self, "_prepare_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- request path -------------------------------------------------------------------------

    async def generate(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self._ensure_metrics_task()
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + self.llm_config.request_timeout_s
        try:
            prepared = await loop.run_in_executor(self._prepare_pool, self.prepare, GenerateRequest.model_validate(request))
        except OpenAIError as exc:
            yield exc.to_chunk()
            return
        prepared.deadline_s = deadline_s
        try:
            async for chunk in self.stream(prepared):
                yield chunk
        except OpenAIError as exc:
            yield exc.to_chunk()
        except RequestDeadlineExceeded:
            yield OpenAIError(
                f"request ran longer than this model's request_timeout_s ({self.llm_config.request_timeout_s:g} s) "
                "and was aborted; ask for fewer max_tokens", status_code=408, code="request_timeout",
            ).to_chunk()

    async def tokenize(self, request: dict[str, Any]) -> dict[str, Any]:
        """`/tokenize` (see TokenizeRequest.to_server): {count, max_model_len, tokens[, token_strs]}."""
        return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, self._tokenize, request)

    def _tokenize(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            if request["messages"] is not None:
                text = self._render_chat(GenerateRequest(
                    request_id="tokenize", model="", messages=request["messages"], tools=request["tools"],
                    documents=request["documents"], chat_template_kwargs=request["chat_template_kwargs"], sampling={},
                ), add_generation_prompt=request["add_generation_prompt"])
            else:
                text = request["prompt"]
            tokens = self._encode(text, param="messages" if request["messages"] is not None else "prompt",
                                  add_special_tokens=request["add_special_tokens"])
        except OpenAIError as exc:
            return exc.to_chunk()
        result: dict[str, Any] = {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens}
        if request["return_token_strs"]:
            result["token_strs"] = [self.tokenizer.decode([t], skip_special_tokens=False) for t in tokens]
        return result

    def prepare(self, request: GenerateRequest) -> PreparedRequest:
        from runtime.engine import SamplingParams
        from runtime.engine.structured_outputs import StructuredOutputsParams

        sampling = {**self.generation_defaults, **request.sampling}
        parsers = ParserSpec()
        if request.messages is not None:
            prompt_text = self._render_chat(request)  # the template writes BOS itself, as transformers
            prompt_ids = self._encode(prompt_text, param="messages", add_special_tokens=False)
            parsers = pick_parsers(self.llm_config, request, prompt_text, sampling, self.tokenizer.token_to_id)
        elif isinstance(request.prompt, str):
            prompt_text = request.prompt
            prompt_ids = self._encode(prompt_text, param="prompt")
        else:
            prompt_ids = list(request.prompt or [])
            if self.vocab_size and any(t >= self.vocab_size for t in prompt_ids):
                raise OpenAIError(f"prompt token ids must be < vocab size {self.vocab_size}", param="prompt")
            prompt_text = self.tokenizer.decode(prompt_ids) if request.echo else None
        if not prompt_ids:
            raise OpenAIError("prompt must not be empty", param="prompt")
        num_prompt = len(prompt_ids)
        room = self.max_model_len - num_prompt
        if room < 1:
            raise OpenAIError(
                f"prompt has {num_prompt} tokens; this model's context is {self.max_model_len} tokens",
                param="prompt", code="context_length_exceeded",
            )
        if sampling.get("max_tokens") is None:
            sampling["max_tokens"] = room
        elif sampling["max_tokens"] > room:
            if "max_tokens" not in request.sampling:  # the model's generation_config default: clip it
                sampling["max_tokens"] = room
            else:
                raise OpenAIError(
                    f"max_tokens {sampling['max_tokens']} + prompt {num_prompt} tokens exceeds the context of "
                    f"{self.max_model_len} tokens", param="max_tokens", code="context_length_exceeded",
                )
        try:
            if sampling.get("structured_outputs") is not None:
                sampling["structured_outputs"] = StructuredOutputsParams(**sampling["structured_outputs"])
            params = SamplingParams(**sampling, logprobs=request.num_logprobs, output_kind="delta")  # O(new tokens) per step
            if self.vocab_size:
                params.check_vocab(self.vocab_size)
        except (ValueError, TypeError) as exc:
            raise OpenAIError(str(exc)) from None
        return PreparedRequest(
            request_id=request.request_id, prompt_token_ids=prompt_ids, params=params,
            num_logprobs=request.num_logprobs, prompt_text=prompt_text if request.echo else None, parsers=parsers,
        )

    def _encode(self, text: str, *, param: str, add_special_tokens: bool = True) -> list[int]:
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        except ValueError as exc:  # a lone surrogate: valid JSON, not text
            raise OpenAIError(f"{param}: {exc}", param=param) from None

    def _render_chat(self, request: GenerateRequest, add_generation_prompt: bool = True) -> str:
        from runtime.engine.chat_template import ChatTemplateError

        try:
            return self.tokenizer.apply_chat_template(
                request.messages, add_generation_prompt=add_generation_prompt, tools=request.tools,
                documents=request.documents,
                chat_template=self.llm_config.chat_template, chat_template_kwargs=request.chat_template_kwargs,
            )
        except ChatTemplateError as exc:
            raise OpenAIError(f"the chat template rejected the messages: {exc}", param="messages") from None
        except ValueError as exc:
            raise OpenAIError(str(exc), param="messages") from None

    async def stream(self, prepared: PreparedRequest) -> AsyncIterator[dict[str, Any]]:
        """Run the request on the local engine (both roles; decode's fallback path)."""
        tracker = self.new_tracker(prepared)
        async for chunk in self.stream_engine(prepared, tracker, time.perf_counter()):
            yield chunk

    def new_tracker(self, prepared: PreparedRequest) -> DeltaTracker:
        return DeltaTracker(
            tokenizer=self.tokenizer, num_logprobs=prepared.num_logprobs,
            num_prompt_tokens=len(prepared.prompt_token_ids), parsers=prepared.parsers,
        )

    async def stream_engine(
        self,
        prepared: PreparedRequest,
        tracker: DeltaTracker,
        start_s: float,
        *,
        prompt: Any = None,
        kv_package: Any = None,
        on_added: Any = None,
        first_token_s: float | None = None,
        admitted: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream engine outputs as delta chunks and record latency metrics for the request."""
        last_s = first_token_s
        finish_reason = None
        first = prepared.prompt_text is not None
        outputs = self.engine.generate(
            prepared.request_id, prompt if prompt is not None else prepared.prompt_token_ids,
            prepared.params, kv_package=kv_package, on_added=on_added, deadline_s=prepared.deadline_s,
            admitted=admitted,
        )
        del kv_package
        async for output in outputs:
            chunk = tracker.chunk(output)
            if chunk is None:
                continue
            now = time.perf_counter()
            if last_s is None:
                first_token_s = now
            else:
                self.metrics.observe_itl(now - last_s)
            last_s = now
            if first:
                chunk["prompt_text"] = prepared.prompt_text
                first = False
            finish_reason = chunk["outputs"][-1]["finish_reason"] or finish_reason
            yield chunk
        self.metrics.observe_request(
            ttft_s=None if first_token_s is None else first_token_s - start_s,
            e2e_s=time.perf_counter() - start_s, num_prompt_tokens=tracker.num_prompt_tokens,
            num_output_tokens=tracker.num_output_tokens, finish_reason=finish_reason,
        )

    def _ensure_metrics_task(self) -> None:
        if self._metrics_task is None or self._metrics_task.done():
            self._metrics_task = asyncio.get_running_loop().create_task(self._publish_metrics())

    async def _publish_metrics(self) -> None:
        while True:
            self.metrics.observe_engine(self.engine.stats())
            self.housekeeping()
            await asyncio.sleep(1.0)

    def housekeeping(self) -> None:
        """Called every second on the event loop (the pd decode server sweeps stale KV handles here)."""


def _generation_defaults(config: LLMConfig) -> dict[str, Any]:
    """The model's generation_config.json sampling defaults (`--generation-config`), applied when a request
    leaves the field unset."""
    from serve_apps.llm.generation_defaults import generation_defaults

    return generation_defaults(config.model_source, config.generation_config)


def _vocab_size(engine: Any) -> int | None:
    for owner in (engine, getattr(engine, "tokenizer", None), getattr(engine, "config", None)):
        size = getattr(owner, "vocab_size", None)
        if isinstance(size, int):
            return size
    return None
