"""`OpenAiIngress`: the FastAPI deployment in front of the model servers (`/v1/...`, SSE streaming).

Its front door (front_door.py) checks the API key and caps the body before FastAPI parses it; then it
validates bodies, bounds the prompt by characters before any tokenizer sees it (request_limits.py), routes
by `model` to that model's server deployment (`Decode:<model>` in the pd app, `LLMServer:<model>`
colocated) and shapes the server's delta chunks into OpenAI responses. Overload (Serve's bounded queues,
this deployment's included, or a replica's waiting bound) is a 429 with Retry-After; a replica that dies
before the first token is retried once on another.
"""

# No `from __future__ import annotations`: FastAPI must resolve the endpoint annotations (the bodies)
# after Serve rewraps the methods, from another module's globals.
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.responses import JSONResponse, Response, StreamingResponse

from serve_apps.llm.errors import OpenAIError, error_body, install_error_handlers
from serve_apps.llm.front_door import FrontDoor, FrontDoorConfig
from serve_apps.llm.openai_format import Aggregate, ResponseShape, StreamFormatter, sse
from serve_apps.llm.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    to_generate_request,
)
from serve_apps.llm.request_limits import DEFAULT_MAX_REQUEST_BODY_BYTES, check_prompt_size

logger = logging.getLogger(__name__)

app = FastAPI(title="Strata Model API")
install_error_handlers(app)

_RETRYABLE = (RayActorError, DeploymentUnavailableError)


# Module globals the endpoints use are defined above the class: serve.ingress pickles the app, and with it the
# endpoints' globals, when the class is decorated; a name defined below it would be missing in the replica.
def _overloaded() -> OpenAIError:
    return OpenAIError("server overloaded; retry later", status_code=429, code="overloaded", retry_after_s=1.0)


@serve.ingress(app)
class OpenAiIngress:
    def __init__(
        self,
        llm_deployments: dict[str, DeploymentHandle],
        api_key: str | None = None,
        max_model_lens: dict[str, int] | None = None,
        max_model_len_bounds: dict[str, int] | None = None,
        max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
        enable_docs: bool = False,
    ):
        """max_model_lens: contexts set in engine_kwargs (shown on model cards); max_model_len_bounds: upper
        bounds on every model's context (engine_kwargs or the checkpoint), which size-check prompts."""
        self.handles = llm_deployments
        self.max_model_lens = max_model_lens or {}
        self.max_model_len_bounds = max_model_len_bounds or {}
        self.front_door = FrontDoorConfig(api_key=api_key, max_request_body_bytes=max_request_body_bytes,
                                          enable_docs=enable_docs)
        self.created = int(time.time())

    def __serve_build_asgi_app__(self) -> FrontDoor:
        """Serve calls this after __init__: the app it serves is the FastAPI app behind this replica's front door."""
        return FrontDoor(self.app, self.front_door)

    # -- endpoints ----------------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(model_id) for model_id in self.handles]}

    @app.get("/v1/models/{model:path}")
    async def model(self, model: str) -> dict[str, Any]:
        self._handle(model)
        return self._card(model)

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Response:
        shape = ResponseShape(
            chat=False, response_id=f"cmpl-{uuid.uuid4().hex}", model=body.model,
            want_logprobs=body.logprobs is not None, echo=body.echo,
        )
        return await self._serve(body, shape)

    @app.post("/v1/chat/completions")
    async def chat(self, body: ChatCompletionRequest) -> Response:
        shape = ResponseShape(chat=True, response_id=f"chatcmpl-{uuid.uuid4().hex}", model=body.model,
                              want_logprobs=body.logprobs)
        return await self._serve(body, shape)

    @app.post("/tokenize")
    async def tokenize(self, body: TokenizeRequest) -> Response:
        """vLLM's /tokenize: the token ids a prompt or chat (rendered by the served template) becomes."""
        handle = self._handle(body.model)
        check_prompt_size(body, self.max_model_len_bounds.get(body.model))
        try:
            server_request = body.to_server()
        except ValueError as exc:
            raise OpenAIError(str(exc)) from None
        try:
            result = await handle.tokenize.remote(server_request)
        except BackPressureError:
            raise _overloaded() from None
        if "error" in result:
            return OpenAIError.from_chunk(result).to_response()
        return JSONResponse(result)

    # -- internals ----------------------------------------------------------------------------

    def _card(self, model_id: str) -> dict[str, Any]:
        card = {"id": model_id, "object": "model", "created": self.created, "owned_by": "strata"}
        if model_id in self.max_model_lens:
            card["max_model_len"] = self.max_model_lens[model_id]
        return card

    def _handle(self, model: str) -> DeploymentHandle:
        if model not in self.handles:
            raise OpenAIError(
                f"model {model!r} does not exist; available: {sorted(self.handles)}",
                status_code=404, param="model", code="model_not_found",
            )
        return self.handles[model]

    async def _serve(self, body: CompletionRequest | ChatCompletionRequest, shape: ResponseShape) -> Response:
        handle = self._handle(body.model)
        check_prompt_size(body, self.max_model_len_bounds.get(body.model))
        try:
            generate_request = to_generate_request(shape.response_id, body).model_dump()
        except ValueError as exc:
            raise OpenAIError(str(exc)) from None
        stream, first = await self._start(handle, generate_request)
        if "error" in first:
            return OpenAIError.from_chunk(first).to_response()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._sse_events(StreamFormatter(shape, include_usage), first, stream)
            return StreamingResponse(events, media_type="text/event-stream")
        aggregate = Aggregate(shape)
        aggregate.add(first)
        try:
            async for chunk in stream:
                if "error" in chunk:
                    return OpenAIError.from_chunk(chunk).to_response()
                aggregate.add(chunk)
        except _RETRYABLE as exc:
            logger.warning("server died during %s: %r", shape.response_id, exc)
            raise OpenAIError("model server failed during the request; retry", status_code=503) from None
        return JSONResponse(aggregate.response())

    async def _start(self, handle: DeploymentHandle, request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Send the request and wait for its first chunk; one retry if the replica died first."""
        for attempt in range(2):
            stream = handle.options(stream=True).generate.remote(request)
            try:
                return stream, await stream.__anext__()
            except BackPressureError:
                raise _overloaded() from None
            except StopAsyncIteration:
                raise OpenAIError("model server returned no output", status_code=503) from None
            except _RETRYABLE as exc:
                logger.warning("server unavailable for %s (attempt %d): %r", request["request_id"], attempt, exc)
        raise OpenAIError("model server unavailable; retry", status_code=503, retry_after_s=1.0)

    async def _sse_events(
        self, formatter: StreamFormatter, first: dict[str, Any], stream: Any
    ) -> AsyncIterator[str]:
        completed = False
        try:
            for event in formatter.events(first):
                yield event
            async for chunk in stream:
                if "error" in chunk:
                    yield sse({"error": chunk["error"]})
                    completed = True
                    return
                for event in formatter.events(chunk):
                    yield event
            for event in formatter.final_events():
                yield event
            completed = True
        except _RETRYABLE as exc:
            logger.warning("server died mid-stream: %r", exc)
            yield sse(error_body("model server failed mid-stream; retry", 503))
            completed = True
        finally:
            if not completed:  # client went away: cancel downstream so the engine frees its blocks
                stream.cancel()

