"""The supervisor's capacity decisions: how many workers fit, resizing (shrink, grow back), aborting a stuck
Ray Train controller, and stopping with a report. Mixed into ElasticSupervisor (uses its state)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from runtime.health.agent import start_agents

logger = logging.getLogger(__name__)

_ABORT_GRACE_S = 10.0  # a controller that has not aborted by then is killed


class Capacity:
    """Mixed into ElasticSupervisor."""

    _controller: Any
    _grow_after_recovery: bool

    def _target_size(self) -> int:
        train, spare = self._placement.capacity(self._config.spread)
        return min(self._config.max_workers, train + spare)

    def _wait_for_capacity(self) -> int:
        deadline = time.monotonic() + self._config.capacity_wait_s
        size = self._target_size()
        while size < self._config.min_workers and time.monotonic() < deadline and self._stop_report is None:
            time.sleep(0.5)
            size = self._target_size()
        return size

    def _resize(self, size: int, why: str) -> None:
        if size < self._config.min_workers:
            self._stop(f"{why}: {size} healthy worker slots left, min_workers={self._config.min_workers}")
            return
        logger.warning("resizing worker group %d -> %d (%s)", self._group_size, size, why)
        self._resize_to = size
        self._retired_pids.update(w["pid"] for w in self._workers)
        self._abort_controller()

    def _on_node_added(self, node_id: str) -> None:
        with self._lock:
            if node_id not in self._agents:
                self._agents.update(start_agents(self._agent_config(), sink=self._self, node_ids=[node_id]))
            if self._stop_report is None and self._target_size() > self._group_size:
                if self._recovering:
                    self._grow_after_recovery = True  # not in the middle of a recovery: once it has resumed
                else:
                    self._resize(self._target_size(), f"grow: node {node_id[:8]} joined")

    def _grow_if_capacity(self) -> None:
        """A node joined while a recovery was in flight: grow back now that training has resumed."""
        with self._lock:
            if self._stop_report is None and self._resize_to is None and self._target_size() > self._group_size:
                self._resize(self._target_size(), "grow: capacity returned during the last recovery")

    def _stop(self, report: str) -> None:
        self._stop_report = f"training stopped at step {self._last_step}: {report}"
        logger.error(self._stop_report)
        self._abort_controller()

    def _abort_controller(self) -> None:
        """Abort the running attempt's controller; kill it if it is stuck (e.g. waiting for a worker that
        cannot be placed) and has not aborted within _ABORT_GRACE_S."""
        controller = self._controller
        if controller is None:
            return
        controller.abort.remote()

        def kill_if_stuck() -> None:
            time.sleep(_ABORT_GRACE_S)
            with self._lock:
                stuck = self._controller is controller and self._running
            if stuck:
                logger.warning("Ray Train controller did not abort within %.0f s; killing it", _ABORT_GRACE_S)
                ray.kill(controller)

        threading.Thread(target=kill_if_stuck, name="abort-watchdog", daemon=True).start()
