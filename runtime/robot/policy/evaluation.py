"""Policy evaluation in simulation: rollouts on unseen seeds, success rate, and the failure cases.

Failures are kept with the simulator's final state (where the block ended, whether it was held),
so the closed loop can re-collect exactly those starts with the expert (DAgger-style).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from runtime.robot.sim.pool import SimPool


@dataclass(kw_only=True, slots=True)
class EvalReport:
    num_episodes: int
    success_rate: float
    failures: list[dict] = field(default_factory=list)  # {"seed", "final": ground truth, "last_phase"}
    policy_versions: list[str] = field(default_factory=list)
    failure_phases: dict[str, int] = field(default_factory=dict)  # phase the failed episodes ended in
    wall_s: float = 0.0

    @property
    def failed_seeds(self) -> list[int]:
        return [failure["seed"] for failure in self.failures]


def evaluate_policy(pool: SimPool, seeds: list[int], driver: dict) -> EvalReport:
    """Roll the policy (`driver`, see runtime.robot.sim.drivers.make_driver) out once per seed."""
    if not seeds:
        raise ValueError("evaluation.seeds must not be empty")
    started_s = time.perf_counter()
    results = pool.rollout(seeds, mode="policy", driver=driver)
    failures = [
        {"seed": result["seed"], "final": result["final"], "last_phase": result["final"]["phase"]}
        for result in results
        if not result["success"]
    ]
    return EvalReport(
        num_episodes=len(results),
        success_rate=sum(result["success"] for result in results) / len(results),
        failures=failures,
        policy_versions=sorted({result["policy_version"] for result in results}),
        failure_phases=dict(Counter(failure["last_phase"] for failure in failures)),
        wall_s=time.perf_counter() - started_s,
    )
