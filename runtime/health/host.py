"""Host signal source: death of watched processes, disk full on the checkpoint path, memory pressure.

Ray reports a dead actor only once its raylet notices and the GCS publishes it; watching the pids
of the training workers from the same node turns a SIGKILL into a signal within one poll (~0.1 s).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass

import psutil

from runtime.health.signals import FaultSignal, SignalSource
from runtime.health.taxonomy import FaultClass


@dataclass(kw_only=True, slots=True)
class HostSourceConfig:
    checkpoint_dir: str | None = None
    min_free_disk_bytes: int = 64 * 1024**2
    max_memory_used_ratio: float = 0.95

    def __post_init__(self) -> None:
        if not 0 < self.max_memory_used_ratio <= 1:
            raise ValueError(f"host.max_memory_used_ratio must be in (0, 1], got {self.max_memory_used_ratio}")
        if self.min_free_disk_bytes < 0:
            raise ValueError(f"host.min_free_disk_bytes must be >= 0, got {self.min_free_disk_bytes}")


class HostSource(SignalSource):
    name = "host"

    def __init__(self, config: HostSourceConfig, node_id: str | None = None):
        self._config = config
        self._node_id = node_id
        self._lock = threading.Lock()
        self._watched: dict[int, dict] = {}  # pid -> {"rank": r, "process": psutil.Process}
        self._disk_full = False
        self._memory_pressure = False

    def watch_pid(self, pid: int, rank: int | None = None) -> None:
        with self._lock:
            if pid in self._watched:
                return
            try:
                process = psutil.Process(pid)
            except psutil.NoSuchProcess:
                process = None
            self._watched[pid] = {"rank": rank, "process": process}

    def unwatch_all(self) -> None:
        with self._lock:
            self._watched.clear()

    def set_checkpoint_dir(self, path: str | None) -> None:
        self._config.checkpoint_dir = path

    def poll(self) -> list[FaultSignal]:
        return self._poll_processes() + self._poll_disk() + self._poll_memory()

    def _poll_processes(self) -> list[FaultSignal]:
        signals = []
        with self._lock:
            for pid, entry in list(self._watched.items()):
                process = entry["process"]
                alive = process is not None and process.is_running() and process.status() != psutil.STATUS_ZOMBIE
                if alive:
                    continue
                del self._watched[pid]
                signals.append(
                    FaultSignal(
                        fault_class=FaultClass.PROCESS_DEATH, source=self.name, node_id=self._node_id,
                        rank=entry["rank"], pid=pid, observed_s=time.time(), detail=f"pid {pid} exited",
                    )
                )
        return signals

    def _poll_disk(self) -> list[FaultSignal]:
        path = self._config.checkpoint_dir
        if not path:
            return []
        while path and not os.path.exists(path):
            path = os.path.dirname(path)
        free = shutil.disk_usage(path or "/").free
        full = free < self._config.min_free_disk_bytes or os.path.exists(
            os.path.join(self._config.checkpoint_dir, ".strata_disk_full")  # chaos quota marker
        )
        was_full, self._disk_full = self._disk_full, full
        if not full or was_full:
            return []
        return [
            FaultSignal(
                fault_class=FaultClass.DISK_FULL, source=self.name, node_id=self._node_id, observed_s=time.time(),
                detail=f"{free} bytes free on {self._config.checkpoint_dir}", data={"free_bytes": free},
            )
        ]

    def _poll_memory(self) -> list[FaultSignal]:
        used_ratio = psutil.virtual_memory().percent / 100.0
        pressure = used_ratio >= self._config.max_memory_used_ratio
        was, self._memory_pressure = self._memory_pressure, pressure
        if not pressure or was:
            return []
        return [
            FaultSignal(
                fault_class=FaultClass.MEMORY_PRESSURE, source=self.name, node_id=self._node_id,
                observed_s=time.time(), detail=f"memory {used_ratio:.0%} used", data={"used_ratio": used_ratio},
            )
        ]
