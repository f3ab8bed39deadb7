"""The policy deployment: batched inference over HTTP and handles, with checkpoint hot-swap.

`PolicyServer.reconfigure({"checkpoint": path})` loads the new safetensors policy beside the old
one and swaps a single reference; a batch already running keeps the model it started with, so no
request is dropped or answered by half a model. Serve applies a user_config change in place (no
replica restart), which is why the checkpoint travels in user_config and not in the init args.
`{"checkpoint": None}` serves no policy: requests get 503 with Retry-After until one is deployed.

Each observation is checked alone before it joins a batch (serve_apps.policy.observation), and the
batch answers each item on its own (serve_apps.policy.batching): a bad observation fails only its
own request. Over HTTP the API key and the body size are checked before the body is parsed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from runtime import metrics
from serve_apps.policy.batching import group_batch
from serve_apps.policy.http_guard import check_api_key, read_json_body, unwrap_observation
from serve_apps.policy.observation import (
    Observation,
    ObservationLimits,
    PolicyInputSpec,
    PolicyRequestError,
    not_ready_error,
    parse_observation,
)

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True, frozen=True)
class LoadedPolicy:
    model: object  # torch.nn.Module
    info: object  # runtime.robot.policy.PolicyInfo
    spec: PolicyInputSpec
    checkpoint: str


class PolicyServer:
    def __init__(self, max_batch_size: int = 64, batch_wait_timeout_s: float = 0.005, num_threads: int = 1,
                 *, limits: ObservationLimits, api_key: str | None = None):
        import torch

        torch.set_num_threads(num_threads)
        self._torch = torch
        self._limits = limits
        self._api_key = api_key
        self._loaded: LoadedPolicy | None = None
        self._act_batch.set_max_batch_size(max_batch_size)
        self._act_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batch_rows = metrics.histogram(
            "strata_policy_batch_rows", "observations per policy forward pass", [1, 2, 4, 8, 16, 32, 64, 128]
        )
        self._latency = metrics.histogram("strata_policy_request_s", "policy request latency")
        self._swaps = metrics.counter("strata_policy_swaps_total", "checkpoint hot-swaps")

    def reconfigure(self, user_config: dict) -> None:
        from runtime.robot.policy import load_policy

        checkpoint = user_config.get("checkpoint")
        if checkpoint is None:
            self._loaded = None
            logger.info("policy serves no checkpoint (user_config.checkpoint is None): requests get 503")
            return
        if self._loaded is not None and checkpoint == self._loaded.checkpoint:
            return
        model, info = load_policy(checkpoint)
        spec = PolicyInputSpec(kind=info.config.kind, state_dim=info.config.state_dim,
                               needs_pointcloud=info.config.kind == "pointnet")
        # One reference swap: a request sees the old policy or the new one, never a mix.
        self._loaded = LoadedPolicy(model=model, info=info, spec=spec, checkpoint=checkpoint)
        self._swaps.inc()
        logger.info("policy now serving %s (%s)", info.version, checkpoint)

    def info(self) -> dict:
        loaded = self._loaded
        if loaded is None:
            raise not_ready_error()
        return {
            "version": loaded.info.version,
            "kind": loaded.spec.kind,
            "needs_pointcloud": loaded.spec.needs_pointcloud,
            "state_dim": loaded.spec.state_dim,
            "num_points": loaded.info.config.num_points,
            "checkpoint": loaded.checkpoint,
            "metadata": loaded.info.metadata,
            "max_points": self._limits.max_points,
            "replica": serve.get_replica_context().replica_id.unique_id,
        }

    async def act(self, observation: dict) -> dict:
        """Handle entry: {"state": [...], "pointcloud": [...]?} -> {"action": [...], "version": str}.

        Raises PolicyRequestError (status_code 400/413, or 503 before a checkpoint is loaded).
        """
        started_s = time.perf_counter()
        loaded = self._loaded
        if loaded is None:
            raise not_ready_error()
        parsed = parse_observation(observation, spec=loaded.spec, limits=self._limits)
        result = await self._act_batch(parsed)
        if isinstance(result, PolicyRequestError):
            raise result
        self._latency.observe(time.perf_counter() - started_s)
        return result

    async def __call__(self, request: Request) -> JSONResponse:
        """HTTP entry: POST a JSON observation (optionally wrapped as {"observation": {...}})."""
        try:
            if request.method != "POST":
                raise PolicyRequestError(f"use POST with a JSON observation, not {request.method}", status_code=405)
            check_api_key(request.headers.get("authorization"), self._api_key)
            body = await read_json_body(request, self._limits.max_body_bytes)
            return JSONResponse(await self.act(unwrap_observation(body)))
        except PolicyRequestError as error:
            headers = {}
            if error.retry_after_s is not None:
                headers["Retry-After"] = str(error.retry_after_s)
            if error.status_code == 401:
                headers["WWW-Authenticate"] = "Bearer"
            if error.status_code == 405:
                headers["Allow"] = "POST"
            return JSONResponse(error.body(), status_code=error.status_code, headers=headers)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _act_batch(self, observations: list[Observation]) -> list[dict | PolicyRequestError]:
        """One answer per observation: its action, or the error that is its alone."""
        torch = self._torch
        loaded = self._loaded
        if loaded is None:
            return [not_ready_error() for _ in observations]
        groups, results = group_batch(observations, loaded.spec)
        for group in groups:
            points = None if group.points is None else torch.as_tensor(group.points)
            with torch.no_grad():
                actions = loaded.model(torch.as_tensor(group.states), points).numpy()
            self._batch_rows.observe(len(group.indices))
            for index, action in zip(group.indices, actions):
                results[index] = {"action": action.tolist(), "version": loaded.info.version}
        return [results[index] for index in range(len(observations))]
