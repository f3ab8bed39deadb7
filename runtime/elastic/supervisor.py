"""ElasticSupervisor: runs a Ray Train V2 TorchTrainer and answers faults by tier (stub; being built)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(kw_only=True, slots=True)
class ElasticConfig:
    """How the supervisor sizes, watches and heals one training run."""

    min_workers: int = 1
    max_workers: int = 2
    resources_per_worker: dict = field(default_factory=lambda: {"CPU": 1})
    checkpoint_dir: str
    max_restarts: int = 5
    hang_timeout_s: float | None = None  # None = derived from the observed step time
    hang_timeout_factor: float = 5.0
    hang_timeout_min_s: float = 3.0
    straggler_factor: float = 2.0
    name: str = "strata-elastic"

    def __post_init__(self) -> None:
        if self.min_workers < 1:
            raise ValueError(f"elastic.min_workers must be >= 1, got {self.min_workers}")
        if self.max_workers < self.min_workers:
            raise ValueError(
                f"elastic.max_workers must be >= min_workers ({self.min_workers}), got {self.max_workers}"
            )
        if self.max_restarts < 0:
            raise ValueError(f"elastic.max_restarts must be >= 0, got {self.max_restarts}")
        if self.hang_timeout_s is not None and self.hang_timeout_s <= 0:
            raise ValueError(f"elastic.hang_timeout_s must be > 0 or None, got {self.hang_timeout_s}")


@dataclass(kw_only=True, slots=True)
class FaultRecord:
    """One decision: what was seen, which tier answered it, how fast."""

    signal: str
    fault_class: str
    tier: str
    node_id: str | None
    rank: int | None
    detected_s: float
    detection_latency_s: float | None
    step_at_fault: int | None
    resumed_step: int | None = None
    mttr_s: float | None = None
    detail: str = ""


@dataclass(kw_only=True, slots=True)
class ElasticResult:
    final_step: int
    faults: list[FaultRecord] = field(default_factory=list)
    stopped: bool = False
    report: str | None = None


class ElasticSupervisor:
    """Placeholder; the actor is being built."""


def run_elastic(
    train_loop_per_worker: Callable[[dict], Any], train_loop_config: dict, config: ElasticConfig
) -> ElasticResult:
    raise NotImplementedError("run_elastic is being built")
