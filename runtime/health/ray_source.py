"""Ray signal source: node death and drain (preemption) notices, read from the GCS at a high rate.

Ray publishes node death through the GCS; Ray Train only reacts to it when a worker's poll fails,
and its preemption watcher polls drains every 5 s. Polling the GCS node table every 0.2 s from the
supervisor turns both into signals well under a second after the GCS knows.
"""

from __future__ import annotations

import time

import ray

from runtime.health.signals import FaultSignal, SignalSource
from runtime.health.taxonomy import FaultClass


class RaySource(SignalSource):
    name = "ray"

    def __init__(self) -> None:
        self._alive: dict[str, dict] = {}
        self._draining: set[str] = set()
        self._ignored_drains: set[str] = set()
        self.added_nodes: list[str] = []  # nodes that joined since the last poll (capacity returned)

    def ignore_drain(self, node_id: str) -> None:
        """A drain we asked for ourselves (cordon) is not news."""
        self._ignored_drains.add(node_id)

    def start(self) -> None:
        self._alive = {node["NodeID"]: node for node in ray.nodes() if node["Alive"]}
        self._draining = set(ray._private.state.state.get_draining_nodes())

    def alive_nodes(self) -> dict[str, dict]:
        return dict(self._alive)

    def poll(self) -> list[FaultSignal]:
        now = time.time()
        signals = []
        alive = {node["NodeID"]: node for node in ray.nodes() if node["Alive"]}
        for node_id, node in self._alive.items():
            if node_id not in alive:
                signals.append(FaultSignal(fault_class=FaultClass.NODE_LOSS, source=self.name, node_id=node_id,
                                           observed_s=now, detail=f"node {node.get('NodeManagerAddress')} left the cluster"))
        self.added_nodes.extend(node_id for node_id in alive if node_id not in self._alive)
        self._alive = alive
        draining = set(ray._private.state.state.get_draining_nodes())
        for node_id in draining - self._draining - self._ignored_drains:
            if node_id in alive:
                signals.append(FaultSignal(fault_class=FaultClass.NODE_DRAIN, source=self.name, node_id=node_id,
                                           observed_s=now, detail="drain notice"))
        self._draining = draining
        return signals
