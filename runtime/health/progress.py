"""Progress signal source: step heartbeats from `report_step` turned into hang and straggler signals.

Ray Train's worker health check only notices a hung worker after 600 s (and a worker stuck in a
collective looks alive to it). Here a rank that has not finished a step within
max(hang_timeout_min_s, hang_timeout_factor x median step time) is a hang; a rank whose recent
step times stay above straggler_factor x the median of the other ranks is a straggler.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from runtime.health.signals import FaultSignal, SignalSource
from runtime.health.taxonomy import FaultClass


@dataclass(kw_only=True, slots=True)
class ProgressConfig:
    hang_timeout_s: float | None = None  # fixed timeout; None = derived from observed step times
    hang_timeout_factor: float = 5.0
    hang_timeout_min_s: float = 3.0
    straggler_factor: float = 2.0
    straggler_window: int = 8  # consecutive slow steps before a rank is a straggler

    def __post_init__(self) -> None:
        if self.hang_timeout_s is not None and self.hang_timeout_s <= 0:
            raise ValueError(f"progress.hang_timeout_s must be > 0 or None, got {self.hang_timeout_s}")
        if self.hang_timeout_factor <= 1:
            raise ValueError(f"progress.hang_timeout_factor must be > 1, got {self.hang_timeout_factor}")
        if self.straggler_factor <= 1:
            raise ValueError(f"progress.straggler_factor must be > 1, got {self.straggler_factor}")


@dataclass(kw_only=True, slots=True)
class _RankState:
    last_step: int = -1
    last_beat_s: float = 0.0  # wall clock of the last heartbeat
    node_id: str | None = None
    pid: int | None = None
    step_times_s: deque = field(default_factory=lambda: deque(maxlen=32))
    compute_times_s: deque = field(default_factory=lambda: deque(maxlen=32))
    hang_reported: bool = False
    straggler_reported: bool = False


class ProgressSource(SignalSource):
    name = "progress"

    def __init__(self, config: ProgressConfig):
        self._config = config
        self._lock = threading.Lock()
        self._ranks: dict[int, _RankState] = {}
        self._generation = 0

    def reset(self) -> None:
        """Forget all ranks (the worker group restarted); hangs are only judged after the first step."""
        with self._lock:
            self._ranks.clear()
            self._generation += 1

    def keep_ranks(self, ranks: list[int]) -> None:
        """The group re-formed in place with `ranks`: forget the others, restart the hang clock of these."""
        now = time.time()
        with self._lock:
            for rank in list(self._ranks):
                if rank not in ranks:
                    del self._ranks[rank]
                else:
                    self._ranks[rank].last_beat_s = now
                    self._ranks[rank].hang_reported = False

    def record(self, *, rank: int, step: int, time_s: float, step_time_s: float | None,
               node_id: str | None = None, pid: int | None = None, compute_time_s: float | None = None) -> None:
        """One heartbeat. `compute_time_s` is the rank's own work in the step, without waiting in
        collectives; synchronous ranks finish steps together, so only it shows who is slow."""
        with self._lock:
            state = self._ranks.setdefault(rank, _RankState())
            state.last_step, state.last_beat_s = step, time_s
            state.node_id, state.pid = node_id, pid
            state.hang_reported = False
            if step_time_s is not None:
                state.step_times_s.append(step_time_s)
            compute = compute_time_s if compute_time_s is not None else step_time_s
            if compute is not None:
                state.compute_times_s.append(compute)

    def hang_timeout_s(self) -> float:
        if self._config.hang_timeout_s is not None:
            return self._config.hang_timeout_s
        times = [t for state in self._ranks.values() for t in state.step_times_s]
        if not times:
            return max(self._config.hang_timeout_min_s, 60.0)  # nothing observed yet: be patient
        return max(self._config.hang_timeout_min_s, self._config.hang_timeout_factor * statistics.median(times))

    def poll(self) -> list[FaultSignal]:
        now = time.time()
        signals = []
        with self._lock:
            timeout_s = self.hang_timeout_s()
            for rank, state in self._ranks.items():
                if not state.hang_reported and state.last_beat_s and now - state.last_beat_s > timeout_s:
                    state.hang_reported = True
                    signals.append(self._signal(FaultClass.HANG, rank, state, observed_s=state.last_beat_s,
                                                detail=f"no step after {state.last_step} for {now - state.last_beat_s:.1f} s "
                                                       f"(timeout {timeout_s:.1f} s)"))
            signals.extend(self._stragglers())
        return signals

    def _stragglers(self) -> list[FaultSignal]:
        window = self._config.straggler_window
        if len(self._ranks) < 2:
            return []
        signals = []
        for rank, state in self._ranks.items():
            if state.straggler_reported or len(state.compute_times_s) < window:
                continue
            others = [t for other_rank, other in self._ranks.items() if other_rank != rank
                      for t in list(other.compute_times_s)[-window:]]
            if not others:
                continue
            baseline = statistics.median(others)
            recent = list(state.compute_times_s)[-window:]
            if min(recent) > self._config.straggler_factor * baseline:
                state.straggler_reported = True
                signals.append(self._signal(FaultClass.STRAGGLER, rank, state, observed_s=time.time(),
                                            detail=f"rank {rank} steps {statistics.median(recent):.2f} s vs {baseline:.2f} s"))
        return signals

    def _signal(self, fault: str, rank: int, state: _RankState, observed_s: float, detail: str) -> FaultSignal:
        return FaultSignal(fault_class=fault, source=self.name, rank=rank, node_id=state.node_id, pid=state.pid,
                           observed_s=observed_s, detail=detail, data={"step": state.last_step})
