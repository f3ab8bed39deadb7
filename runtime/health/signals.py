"""Fault signals and the one interface every signal source implements."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(kw_only=True, slots=True)
class FaultSignal:
    """One observed change of health, in the vocabulary of `runtime.health.taxonomy.FaultClass`.

    `observed_s` is when the fault happened as far as the source can tell (an NVML event's arrival,
    the last heartbeat before a hang timeout, a process' exit); `detected_s` is when the source
    turned it into a signal. Both are wall-clock (time.time()) so they compare across processes.
    """

    fault_class: str
    source: str
    node_id: str | None = None
    rank: int | None = None
    pid: int | None = None
    gpu_index: int | None = None
    observed_s: float | None = None
    detected_s: float = field(default_factory=time.time)
    detail: str = ""
    data: dict = field(default_factory=dict)

    @property
    def detection_latency_s(self) -> float | None:
        return None if self.observed_s is None else max(0.0, self.detected_s - self.observed_s)

    def key(self) -> str:
        """Identity of the faulty thing for repeat-offender counting: the GPU, else the node, else the rank."""
        if self.gpu_index is not None and self.node_id:
            return f"gpu:{self.node_id}:{self.gpu_index}"
        if self.node_id:
            return f"node:{self.node_id}"
        return f"rank:{self.rank}"


class SignalSource:
    """A producer of FaultSignals. `poll()` is called often (every ~0.1 s) by its owner and returns
    only what changed since the previous call; sources that block on events (NVML event sets) do so
    in their own thread and hand the events over in `poll()`."""

    name = "source"

    def start(self) -> None:
        """Begin watching (open handles, start threads). Default: nothing to start."""

    def poll(self) -> list[FaultSignal]:
        raise NotImplementedError

    def stop(self) -> None:
        """Release handles and threads. Default: nothing to release."""
