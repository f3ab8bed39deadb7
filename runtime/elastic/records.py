"""What a supervised run hands back: one FaultRecord per decision, and the ElasticResult."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True, slots=True)
class FaultRecord:
    """One decision: what was seen, which tier answered it, how fast, and what it cost."""

    signal: str  # the source that saw it ("host", "nvml", "progress", "ray", "worker")
    fault_class: str
    tier: str
    reason: str
    node_id: str | None
    rank: int | None
    observed_s: float | None  # wall clock when the fault happened, as far as the source knows
    detected_s: float  # wall clock when the signal reached the supervisor
    decided_s: float  # wall clock when the decision was enacted
    detection_latency_s: float | None
    step_at_fault: int | None  # last completed step before the fault
    resumed_step: int | None = None  # first step completed after recovery
    recovered_s: float | None = None
    mttr_s: float | None = None  # fault -> next completed step
    steps_lost: int | None = None
    detail: str = ""


@dataclass(kw_only=True, slots=True)
class ElasticResult:
    final_step: int
    faults: list[FaultRecord] = field(default_factory=list)
    stopped: bool = False  # True when a T4 decision ended the run
    report: str | None = None  # the stop report, naming the cause
    finished: bool = False  # the training loop returned on every rank
    loss_history: list[tuple[float, int, float]] = field(default_factory=list)  # (wall s, step, loss) rank 0
    cordoned_nodes: list[str] = field(default_factory=list)
    worker_nodes_history: list[list[str]] = field(default_factory=list)  # node of each rank, per worker group
    wall_time_s: float = 0.0
