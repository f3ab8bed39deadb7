"""`Prefill:<model>` and `Decode:<model>`: prefill/decode disaggregation with a KV handoff.

Decode orchestrates, as in Ray Serve LLM: it asks a prefill replica for the first token and the
request's packed KV (left in the object store), streams that token at once, pulls the KV into its
own paged cache and decodes the rest. Short prompts, n > 1, and any prefill failure or timeout
take the local path (decode prefills itself), so the client never sees the difference.
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

    async def stream(self, prepared: PreparedRequest) -> AsyncIterator[dict[str, Any]]:
        start_s = time.perf_counter()
        tracker = self.new_tracker(prepared)
        if not self._disaggregate(prepared):
            self.num_local_prefills += 1
            async for chunk in self.stream_engine(prepared, tracker, start_s):
                yield chunk
            return
        # The slot bounds handoffs in flight: KV objects waiting in the store for this replica.
        async with self._handoff_slots:
            result = await self._remote_prefill(prepared)
            if result is None:
                self.num_local_prefills += 1
                async for chunk in self.stream_engine(prepared, tracker, start_s):
                    yield chunk
                return
            self.num_remote_prefills += 1
            first_token_s = time.perf_counter()
            first = tracker.chunk(_FirstOutput(result))
            if first is not None:
                if prepared.prompt_text is not None:
                    first["prompt_text"] = prepared.prompt_text
                    prepared.prompt_text = None
                yield first
            handle: KVHandle | None = result.pop("kv")
            if handle is None:  # the first token already ended the request
                self.metrics.observe_request(
                    ttft_s=first_token_s - start_s, e2e_s=first_token_s - start_s,
                    num_prompt_tokens=tracker.num_prompt_tokens, num_output_tokens=tracker.num_output_tokens,
                    finish_reason=result["finish_reason"],
                )
                return
            try:
                package, transfer = await self.transport.receive(handle)
            except Exception as exc:  # the owner died or the object was lost: continue locally
                logger.warning("KV pull for %s failed (%s); decoding locally", prepared.request_id, exc)
                self.transport.release(handle)
                self.metrics.observe_fallback("kv_lost")
                continuation = prepared.prompt_token_ids + list(result["token_ids"])
                prepared.params = dataclasses.replace(
                    prepared.params, max_tokens=prepared.params.max_tokens - len(result["token_ids"])
                )
                tracker.rebase()
                async for chunk in self.stream_engine(
                    prepared, tracker, start_s, prompt=continuation, first_token_s=first_token_s,
                ):
                    yield chunk
                return
            self.metrics.observe_transfer(kv_bytes=transfer.kv_bytes, handoff_s=transfer.handoff_s)
            self.recent_transfers.append({
                "prompt_tokens": len(prepared.prompt_token_ids), "kv_bytes": transfer.kv_bytes,
                "put_s": transfer.put_s, "pull_s": transfer.pull_s, "handoff_s": transfer.handoff_s,
                "ttft_s": first_token_s - start_s, "at_s": time.time(),
            })
        outputs = self.stream_engine(
            prepared, tracker, start_s, kv_package=package, first_token_s=first_token_s,
            on_added=lambda: self.transport.release(handle),
        )
        del package
        async for chunk in outputs:
            yield chunk

    async def _remote_prefill(self, prepared: PreparedRequest) -> dict[str, Any] | None:
        """The prefill replica's answer, or None (after a timeout or failure) to prefill locally."""
        request = {
            "request_id": prepared.request_id,
            "prompt_token_ids": prepared.prompt_token_ids,
            "params": prepared.params,
        }
        response = self.prefill_server.prefill.remote(request)
        try:
            return await asyncio.wait_for(response, timeout=self.kv_config.prefill_timeout_s)
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
