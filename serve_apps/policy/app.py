"""The policy deployment: batched inference over HTTP and handles, with checkpoint hot-swap.

`PolicyServer.reconfigure({"checkpoint": path})` loads the new safetensors policy beside the old
one and swaps a single reference; a batch already running keeps the model it started with, so no
request is dropped or answered by half a model. Serve applies a user_config change in place (no
replica restart), which is why the checkpoint travels in user_config and not in the init args.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pydantic import BaseModel, ValidationError
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from runtime import metrics

logger = logging.getLogger(__name__)


class PolicyObservation(BaseModel):
    """One observation: the robot state vector, and a flat xyz point cloud for point-cloud policies."""

    state: list[float]
    pointcloud: list[float] | None = None


class PolicyServer:
    def __init__(self, max_batch_size: int = 64, batch_wait_timeout_s: float = 0.005, num_threads: int = 1):
        import torch

        torch.set_num_threads(num_threads)
        self._torch = torch
        self._model = None
        self._info = None
        self._checkpoint: str | None = None
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
        if not checkpoint:
            raise ValueError("policy user_config.checkpoint must name a policy .safetensors file")
        if checkpoint == self._checkpoint:
            return
        model, info = load_policy(checkpoint)
        # One assignment of a tuple: a request sees the old pair or the new pair, never a mix.
        self._model, self._info, self._checkpoint = model, info, checkpoint
        self._swaps.inc()
        logger.info("policy now serving %s (%s)", info.version, checkpoint)

    def info(self) -> dict:
        if self._info is None:
            raise RuntimeError("no checkpoint loaded yet")
        return {
            "version": self._info.version,
            "kind": self._info.config.kind,
            "needs_pointcloud": self._info.config.kind == "pointnet",
            "state_dim": self._info.config.state_dim,
            "num_points": self._info.config.num_points,
            "checkpoint": self._checkpoint,
            "metadata": self._info.metadata,
        }

    async def act(self, observation: dict) -> dict:
        """Handle entry: {"state": [...], "pointcloud": [...]?} -> {"action": [...], "version": str}."""
        started_s = time.perf_counter()
        parsed = PolicyObservation.model_validate(observation)
        result = await self._act_batch(parsed)
        self._latency.observe(time.perf_counter() - started_s)
        return result

    async def __call__(self, request: Request) -> JSONResponse:
        """HTTP entry: POST a JSON observation (optionally wrapped as {"observation": {...}})."""
        try:
            body = await request.json()
            observation = body.get("observation", body) if isinstance(body, dict) else body
            return JSONResponse(await self.act(observation))
        except (ValidationError, ValueError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _act_batch(self, observations: list[PolicyObservation]) -> list[dict]:
        torch = self._torch
        model, info = self._model, self._info
        if model is None:
            raise RuntimeError("no checkpoint loaded yet")
        config = info.config
        states = np.asarray([o.state for o in observations], dtype=np.float32)
        if states.shape[1] != config.state_dim:
            raise ValueError(f"observation.state must have {config.state_dim} values, got {states.shape[1]}")
        points = None
        if config.kind == "pointnet":
            if any(o.pointcloud is None for o in observations):
                raise ValueError("this policy needs observation.pointcloud (flat xyz)")
            points = torch.as_tensor(np.stack([np.asarray(o.pointcloud, np.float32).reshape(-1, 3)
                                               for o in observations]))
        with torch.no_grad():
            actions = model(torch.as_tensor(states), points).numpy()
        self._batch_rows.observe(len(observations))
        return [{"action": action.tolist(), "version": info.version} for action in actions]
