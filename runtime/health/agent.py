"""HealthAgent: one actor per node that runs the node's signal sources and pushes changes.

Ray has no per-node health daemon a job can extend (the raylet watches its own workers, not GPUs,
disks or training progress). The agent polls its sources every `poll_interval_s` (0.1 s) and
pushes each new signal to its sink (the ElasticSupervisor) with a fire-and-forget actor call, so
the supervisor hears of a fault within one poll instead of polling every node itself. It also
carries the node-local hands chaos and the supervisor need: signal a pid, inject fake NVML faults.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from runtime.health.host import HostSource, HostSourceConfig
from runtime.health.nvml import NvmlSource, real_nvml_available
from runtime.health.nvml_fake import FakeNvml
from runtime.health.signals import FaultSignal, SignalSource

logger = logging.getLogger(__name__)

CHAOS_DIR = "/tmp/strata_chaos"  # node-local directives for worker processes (see runtime.chaos.hook)


@dataclass(kw_only=True, slots=True)
class HealthAgentConfig:
    poll_interval_s: float = 0.1
    nvml_backend: str = "auto"  # "auto": real NVML when a GPU is present; "fake": FakeNvml; "none"
    num_fake_gpus: int = 2
    checkpoint_dir: str | None = None

    def __post_init__(self) -> None:
        if self.nvml_backend not in ("auto", "fake", "none"):
            raise ValueError(f"agent.nvml_backend must be 'auto', 'fake' or 'none', got {self.nvml_backend!r}")
        if self.poll_interval_s <= 0:
            raise ValueError(f"agent.poll_interval_s must be > 0, got {self.poll_interval_s}")


@ray.remote(num_cpus=0, max_concurrency=8)
class HealthAgent:
    def __init__(self, config: HealthAgentConfig, sink: Any = None):
        self._config = config
        self._sink = sink
        self._node_id = ray.get_runtime_context().get_node_id()
        self._host = HostSource(HostSourceConfig(checkpoint_dir=config.checkpoint_dir), node_id=self._node_id)
        self._fake_nvml: FakeNvml | None = None
        self._sources: list[SignalSource] = [self._host]
        backend = config.nvml_backend
        if backend == "fake":
            self._fake_nvml = FakeNvml(config.num_fake_gpus)
            self._sources.append(NvmlSource(self._fake_nvml, node_id=self._node_id))
        elif backend == "auto" and real_nvml_available():
            self._sources.append(NvmlSource(node_id=self._node_id))
        for source in self._sources:
            source.start()
        self._stop = threading.Event()
        self._pending: list[FaultSignal] = []
        self._thread = threading.Thread(target=self._loop, name="health-agent", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._config.poll_interval_s):
            signals = []
            for source in self._sources:
                signals.extend(source.poll())
            if not signals:
                continue
            if self._sink is None:
                self._pending.extend(signals)
            else:
                self._sink.on_signals.remote(signals)

    # -- wiring ---------------------------------------------------------------------------------
    def node_id(self) -> str:
        return self._node_id

    def set_sink(self, sink: Any) -> None:
        self._sink = sink

    def drain_pending(self) -> list[FaultSignal]:
        """Signals collected while no sink was set (tests read them here)."""
        pending, self._pending = self._pending, []
        return pending

    def watch_pids(self, pids_by_rank: dict[int, int]) -> None:
        self._host.unwatch_all()
        for rank, pid in pids_by_rank.items():
            self._host.watch_pid(pid, rank)

    def set_checkpoint_dir(self, path: str | None) -> None:
        self._host.set_checkpoint_dir(path)

    # -- node-local hands ---------------------------------------------------------------------------
    def send_signal(self, pid: int, signal_number: int) -> bool:
        """Signal a process on this node (SIGKILL a hung worker, or chaos SIGSTOP); False if gone."""
        try:
            os.kill(pid, signal_number)
        except ProcessLookupError:
            return False
        return True

    def kill(self, pid: int) -> bool:
        return self.send_signal(pid, signal.SIGKILL)

    def process_status(self, pid: int) -> str | None:
        """psutil status of a process on this node ("stopped" for a SIGSTOPped one); None if gone."""
        import psutil

        try:
            return psutil.Process(pid).status()
        except psutil.Error:
            return None

    def set_chaos(self, pid: int, directive: dict) -> None:
        """Write a directive the worker `pid` reads at its next step (e.g. {"sleep_s": 1.0})."""
        os.makedirs(CHAOS_DIR, exist_ok=True)
        path = os.path.join(CHAOS_DIR, f"{pid}.json")
        with open(path + ".tmp", "w") as file:
            json.dump(directive, file)
        os.replace(path + ".tmp", path)

    def inject_nvml(self, kind: str, gpu_index: int = 0, value: int | None = None) -> float:
        """Inject a fault into this node's fake NVML; returns the injection wall time."""
        if self._fake_nvml is None:
            raise ValueError("inject_nvml needs HealthAgentConfig(nvml_backend='fake')")
        fake = self._fake_nvml
        actions = {
            "xid": lambda: fake.inject_xid(gpu_index, int(value)),
            "ecc_dbe": lambda: fake.inject_ecc_double_bit(gpu_index),
            "row_remap_failure": lambda: fake.inject_row_remap_failure(gpu_index),
            "row_remap_pending": lambda: fake.inject_row_remap_pending(gpu_index),
            "thermal_throttle": lambda: fake.set_thermal_throttle(gpu_index, True),
            "thermal_clear": lambda: fake.set_thermal_throttle(gpu_index, False),
            "nvlink": lambda: fake.inject_nvlink_errors(gpu_index),
            "retired_page": lambda: fake.inject_retired_page(gpu_index),
            "recovery_action": lambda: fake.set_recovery_action(gpu_index, int(value)),
            "gpu_lost": lambda: fake.lose_gpu(gpu_index),
        }
        if kind not in actions:
            raise ValueError(f"inject_nvml kind must be one of {sorted(actions)}, got {kind!r}")
        injected_s = time.time()
        actions[kind]()
        return injected_s

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for source in self._sources:
            source.stop()


def start_agents(config: HealthAgentConfig, sink: Any = None, node_ids: list[str] | None = None) -> dict[str, Any]:
    """One HealthAgent pinned to each alive node (or to `node_ids`); returns {node_id: handle}."""
    if node_ids is None:
        node_ids = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    agents = {
        node_id: HealthAgent.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(config, sink)
        for node_id in node_ids
    }
    ray.get([agent.node_id.remote() for agent in agents.values()])
    return agents
