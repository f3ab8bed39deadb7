"""`Prefill:<model>` and `Decode:<model>`: prefill/decode disaggregation with a KV handoff.

Decode orchestrates, as in Ray Serve LLM: it asks a prefill replica for the first token and the
request's packed KV (left in the object store), streams that token at once, pulls the KV into its
own paged cache and decodes the rest. Short prompts, n > 1, and any prefill failure or timeout
take the local path (decode prefills itself), so the client never sees the difference; so does a
prefill replica running other weights (fingerprint mismatch) or a lost KV object, after the first
token. Decode admits a request (its waiting bound) before the remote prefill, and every path
releases a pulled KV package.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray.serve.handle import DeploymentHandle

from runtime.kv_transfer import KVHandle, make_transport
from serve_apps.llm.errors import OpenAIError
from serve_apps.llm.server import LLMServer, PreparedRequest

logger = logging.getLogger(__name__)


class PDPrefillServer(LLMServer):
    """Runs prompts to their first token; leaves each request's KV in the object store."""

    role = "prefill"
    name_prefix = "Prefill:"

    def __init__(self, llm_config: dict[str, Any]):
        super().__init__(llm_config)
        kv = self.llm_config.kv_transfer_config
        self.transport = make_transport(kv.transport, max_inflight_transfers=kv.max_inflight_transfers)

    async def prefill(self, request: dict[str, Any]) -> dict[str, Any]:
        """Prefill `prompt_token_ids` under the request's own SamplingParams (grammar, logit bias and all);
        returns the first token, its text/logprobs and a KV handle."""
        self._ensure_metrics_task()
        params = request["params"]
        final = None
        async for output in self.engine.generate(request["request_id"], request["prompt_token_ids"], params):
            final = output
        if final is None or not final.outputs:
            raise RuntimeError(f"prefill of {request['request_id']} produced no output")
        completion = final.outputs[0]
        # A package means "continue on decode"; none means the first token already ended the request.
        handle = None if final.kv_package is None else self.transport.send(request["request_id"], final.kv_package)
        final.kv_package = None
        return {
            "token_ids": list(completion.token_ids),
            "text": completion.text,
            "logprobs": completion.logprobs,
            "finish_reason": completion.finish_reason,
            "num_cached_tokens": final.num_cached_tokens,
            "kv": handle,
            "model_fingerprint": self.model_fingerprint,
        }


class PDDecodeServer(LLMServer):
    """Owns a decode-role engine and a handle to the prefill deployment."""

    role = "decode"
    name_prefix = "Decode:"

    def __init__(self, llm_config: dict[str, Any], prefill_server: DeploymentHandle):
        super().__init__(llm_config)
        self.kv_config = self.llm_config.kv_transfer_config
        self.transport = make_transport(
            self.kv_config.transport, max_inflight_transfers=self.kv_config.max_inflight_transfers
        )
        self.prefill_server = prefill_server
        self._handoff_slots = asyncio.Semaphore(self.kv_config.max_inflight_transfers)
        self.num_remote_prefills = 0
        self.num_local_prefills = 0
        self._num_reserved = 0  # admitted requests between check_capacity and the engine's queue
        self.recent_transfers: collections.deque[dict[str, float]] = collections.deque(maxlen=256)

    async def engine_stats(self) -> dict[str, Any]:
        return {
            **(await super().engine_stats()),
            "num_remote_prefills": self.num_remote_prefills,
            "num_local_prefills": self.num_local_prefills,
            "num_live_kv_handles": self.transport.num_live_handles,
            "recent_transfers": list(self.recent_transfers),
        }

    def _disaggregate(self, prepared: PreparedRequest) -> bool:
        return (
            len(prepared.prompt_token_ids) >= self.kv_config.min_prompt_tokens and prepared.params.n == 1
        )

    def housekeeping(self) -> None:
        swept = self.transport.sweep(self.kv_config.kv_handle_timeout_s)
        if swept:
            logger.warning("released %d KV packages not consumed within kv_handle_timeout_s", swept)

    async def stream(self, prepared: PreparedRequest) -> AsyncIterator[dict[str, Any]]:
        start_s = time.perf_counter()
        tracker = self.new_tracker(prepared)
        if not self._disaggregate(prepared):
            self.num_local_prefills += 1
            async for chunk in self.stream_engine(prepared, tracker, start_s):
                yield chunk
            return
        # Admission before the remote prefill: a request this replica would refuse (429) costs no prefill and
        # leaves no KV behind. It holds a reservation until it reaches the engine's queue.
        self.engine.check_capacity(self._num_reserved)
        self._num_reserved += 1
        reserved = True
        handle: KVHandle | None = None
        try:
            # The slot bounds handoffs in flight: KV objects waiting in the store for this replica.
            async with self._handoff_slots:
                result = await self._remote_prefill(prepared)
                if result is None:
                    self.num_local_prefills += 1
                    self._num_reserved -= 1
                    reserved = False
                    async for chunk in self.stream_engine(prepared, tracker, start_s, admitted=True):
                        yield chunk
                    return
                handle = result.pop("kv")
                self.num_remote_prefills += 1
                first_token_s = time.perf_counter()
                first = tracker.chunk(_FirstOutput(result))
                if first is not None:
                    if prepared.prompt_text is not None:
                        first["prompt_text"] = prepared.prompt_text
                        prepared.prompt_text = None
                    yield first
                if handle is None:  # the first token already ended the request
                    self.metrics.observe_request(
                        ttft_s=first_token_s - start_s, e2e_s=first_token_s - start_s,
                        num_prompt_tokens=tracker.num_prompt_tokens, num_output_tokens=tracker.num_output_tokens,
                        finish_reason=result["finish_reason"],
                    )
                    return
                fallback = None
                if result.get("model_fingerprint", self.model_fingerprint) != self.model_fingerprint:
                    logger.warning("prefill of %s ran another model (fingerprint %s, here %s); decoding locally",
                                   prepared.request_id, result.get("model_fingerprint"), self.model_fingerprint)
                    fallback = "fingerprint_mismatch"
                else:
                    try:
                        package, transfer = await self.transport.receive(handle)
                    except Exception as exc:  # the owner died or the object was lost: continue locally
                        logger.warning("KV pull for %s failed (%s); decoding locally", prepared.request_id, exc)
                        fallback = "kv_lost"
                if fallback is None:
                    self.metrics.observe_transfer(kv_bytes=transfer.kv_bytes, handoff_s=transfer.handoff_s)
                    self.recent_transfers.append({
                        "prompt_tokens": len(prepared.prompt_token_ids), "kv_bytes": transfer.kv_bytes,
                        "put_s": transfer.put_s, "pull_s": transfer.pull_s, "handoff_s": transfer.handoff_s,
                        "ttft_s": first_token_s - start_s, "at_s": time.time(),
                    })
            if fallback is not None:
                self.transport.release(handle)
                self.metrics.observe_fallback(fallback)
                outputs = self._continue_locally(prepared, tracker, start_s, result["token_ids"], first_token_s)
            else:
                outputs = self.stream_engine(
                    prepared, tracker, start_s, kv_package=package, first_token_s=first_token_s,
                    on_added=lambda: self.transport.release(handle), admitted=True,
                )
                del package
            self._num_reserved -= 1  # the first step of `outputs` puts the request in the engine's queue
            reserved = False
            async for chunk in outputs:
                yield chunk
        finally:
            if reserved:
                self._num_reserved -= 1
            if handle is not None:  # every path (refusal, error, disconnect) frees the pulled package
                self.transport.release(handle)

    def _continue_locally(
        self, prepared: PreparedRequest, tracker: Any, start_s: float, first_token_ids: list[int], first_token_s: float,
    ) -> AsyncIterator[dict[str, Any]]:
        """Decode from the prompt plus the prefill's first token(s) on this replica (prefilling them here)."""
        continuation = prepared.prompt_token_ids + list(first_token_ids)
        prepared.params = dataclasses.replace(prepared.params, max_tokens=prepared.params.max_tokens - len(first_token_ids))
        tracker.rebase()
        return self.stream_engine(prepared, tracker, start_s, prompt=continuation, first_token_s=first_token_s,
                                  admitted=True)

    async def _remote_prefill(self, prepared: PreparedRequest) -> dict[str, Any] | None:
        """The prefill replica's answer, or None (after a timeout or failure) to prefill locally."""
        request = {
            "request_id": prepared.request_id,
            "prompt_token_ids": prepared.prompt_token_ids,
            "params": prepared.params,
        }
        response = self.prefill_server.prefill.remote(request)
        timeout_s = self.kv_config.prefill_timeout_s
        if prepared.deadline_s is not None:  # never wait past the request's own deadline
            timeout_s = max(0.0, min(timeout_s, prepared.deadline_s - asyncio.get_running_loop().time()))
        try:
            return await asyncio.wait_for(response, timeout=timeout_s)
        except TimeoutError:
            response.cancel()
            reason = "timeout"
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as exc:  # any prefill-side failure is recoverable here: decode can prefill
            logger.warning("remote prefill of %s failed: %r", prepared.request_id, exc)
            reason = "error"
        self.metrics.observe_fallback(reason)
        return None


class _FirstOutput:
    """Adapts a prefill answer to the CompletionOutput shape DeltaTracker reads."""

    def __init__(self, result: dict[str, Any]):
        self.outputs = [self]
        self.index = 0
        self.token_ids = result["token_ids"]
        self.text = result["text"]
        self.logprobs = result["logprobs"]
        self.finish_reason = result["finish_reason"]
        self.num_cached_tokens = result.get("num_cached_tokens", 0)


__all__ = ["OpenAIError", "PDDecodeServer", "PDPrefillServer"]
