"""Self-healing elastic training: the ElasticSupervisor around Ray Train, its tier policy and step heartbeats.

    from runtime.elastic import ElasticConfig, run_elastic, report_step
    result = run_elastic(train_loop_per_worker, {"lr": 1e-3}, ElasticConfig(min_workers=1, max_workers=2, ...))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.elastic.progress import report_event, report_step
from runtime.elastic.records import ElasticResult, FaultRecord
from runtime.elastic.run import run_elastic, start_supervisor
from runtime.elastic.supervisor import ElasticConfig, ElasticSupervisor
from runtime.elastic.tiers import TIER_TABLE, TierPolicy

if TYPE_CHECKING:
    from runtime.elastic.checkpoint import CheckpointManager

__all__ = [
    "CheckpointManager",
    "ElasticConfig",
    "ElasticResult",
    "ElasticSupervisor",
    "FaultRecord",
    "TIER_TABLE",
    "TierPolicy",
    "report_event",
    "report_step",
    "run_elastic",
    "start_supervisor",
]


def __getattr__(name: str):
    # Lazy: checkpoint.py is written by another component and imports heavier modules.
    if name == "CheckpointManager":
        from runtime.elastic.checkpoint import CheckpointManager

        return CheckpointManager
    raise AttributeError(f"module 'runtime.elastic' has no attribute {name!r}")
