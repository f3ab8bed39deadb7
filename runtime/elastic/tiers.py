"""The fault taxonomy as data: which tier answers each fault class, and when a fault escalates.

    python -m runtime.elastic.tiers          # print the tier table (markdown)
    ray job submit --working-dir . -- python -m runtime.elastic.tiers

Tiers (cheapest first):
  T0 observe        metrics and a log line only; training continues untouched
  T1 restart        restart the worker group in place from the last checkpoint
  T2 isolate GPU    quarantine the faulty GPU, restart the worker group without it
  T3 cordon node    cordon the node (no new work), replace it with a spare or shrink elastically
  T4 stop           stop the run with a report naming the cause

`TIER_TABLE` is the reviewable part: one row per fault class. `TierPolicy` adds what a table
cannot: repeat offenders escalate, restarts are bounded, and a fault that recurs without progress
(a deterministic bug) stops the run instead of looping.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass

from runtime.health.signals import FaultSignal
from runtime.health.taxonomy import FaultClass as F

T0, T1, T2, T3, T4 = "T0", "T1", "T2", "T3", "T4"
TIER_ORDER = (T0, T1, T2, T3, T4)
TIER_NAMES = {T0: "observe", T1: "restart in place", T2: "isolate GPU", T3: "cordon node", T4: "stop"}


@dataclass(frozen=True, slots=True)
class TierRule:
    tier: str
    reason: str
    escalate_after: int | None = None  # occurrences on the same GPU/node within the window ...
    escalate_to: str | None = None  # ... after which this tier answers instead


TIER_TABLE: dict[str, TierRule] = {
    # process and progress
    F.PROCESS_DEATH: TierRule(T1, "worker process died; the host is fine", 3, T3),
    F.HANG: TierRule(T1, "no step within the hang timeout; kill the hung rank and restart", 3, T3),
    F.WORKER_ERROR: TierRule(T1, "training loop raised; retry from the last checkpoint", None, None),
    F.STRAGGLER: TierRule(T3, "a rank is persistently slower: move off its node"),
    # host
    F.DISK_FULL: TierRule(T4, "checkpoint path is full: no restart can save progress"),
    F.MEMORY_PRESSURE: TierRule(T0, "host memory pressure (transient)", 3, T1),
    F.CHECKPOINT_CORRUPT: TierRule(T0, "corrupt checkpoint skipped; the previous good one is used"),
    # ray
    F.NODE_LOSS: TierRule(T3, "node left the cluster: take a spare or shrink"),
    F.NODE_DRAIN: TierRule(T3, "node is draining (preemption notice): move off it first"),
    F.ACTOR_DEATH: TierRule(T0, "a helper actor died"),
    # GPU
    F.XID_APP_ERROR: TierRule(T1, "XID 13/31/43: application-side GPU fault, GPU healthy", 3, T2),
    F.XID_CONTAINED_ECC: TierRule(T1, "XID 94: contained ECC error, restart the application", 2, T2),
    F.XID_DBE: TierRule(T2, "XID 48: double-bit ECC error on this GPU", 2, T3),
    F.ECC_DBE: TierRule(T2, "double-bit ECC error on this GPU", 2, T3),
    F.XID_UNCONTAINED_ECC: TierRule(T2, "XID 95: uncontained ECC, the GPU needs a reset", 2, T3),
    F.RECOVERY_RESET: TierRule(T2, "NVML recovery action: GPU reset", 2, T3),
    F.XID_GSP: TierRule(T3, "XID 119/120: GSP firmware timeout, node needs a reboot"),
    F.GPU_LOST: TierRule(T3, "XID 79: GPU fell off the bus, node needs service"),
    F.ROW_REMAP_FAILURE: TierRule(T3, "row remapping failed: the GPU needs replacement"),
    F.RECOVERY_REBOOT: TierRule(T3, "NVML recovery action: node reboot / drain"),
    F.ROW_REMAP_PENDING: TierRule(T0, "row remap pending until the next GPU reset"),
    F.RETIRED_PAGES: TierRule(T0, "page retired (memory repaired itself)"),
    F.ECC_SBE: TierRule(T0, "corrected single-bit ECC"),
    F.THERMAL_THROTTLE: TierRule(T0, "thermal throttling (transient)", 5, T2),
    F.POWER_THROTTLE: TierRule(T0, "power capping (transient)"),
    F.NVLINK_ERROR: TierRule(T0, "NVLink errors counted", 3, T2),
    F.XID_OTHER: TierRule(T0, "uncatalogued XID"),
}


@dataclass(kw_only=True, slots=True)
class TierDecision:
    tier: str
    reason: str
    escalated: bool = False


@dataclass(kw_only=True, slots=True)
class TierPolicyConfig:
    max_restarts: int = 10
    escalation_window_s: float = 600.0
    no_progress_limit: int = 2  # occurrences of the same failure without progress before T4

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"tiers.max_restarts must be >= 0, got {self.max_restarts}")
        if self.no_progress_limit < 2:
            raise ValueError(f"tiers.no_progress_limit must be >= 2, got {self.no_progress_limit}")


class TierPolicy:
    """Stateful: remembers what happened where, to escalate repeat offenders and stop loops."""

    def __init__(self, config: TierPolicyConfig, table: dict[str, TierRule] | None = None):
        self._config = config
        self._table = TIER_TABLE if table is None else table
        self._history: dict[tuple[str, str], deque] = defaultdict(deque)  # (class, key) -> times
        self._last_failure: dict[str, tuple[int, int]] = {}  # signature -> (step, count)
        self.num_restarts = 0

    def decide(self, signal: FaultSignal, step: int | None, signature: str | None = None) -> TierDecision:
        """Pick the tier for `signal` seen at training step `step` (the last completed step)."""
        rule = self._table.get(signal.fault_class, TierRule(T1, f"unknown fault class {signal.fault_class}"))
        tier, reason, escalated = rule.tier, rule.reason, False

        occurrences = self._history[(signal.fault_class, signal.key())]
        now = time.monotonic()
        occurrences.append(now)
        while occurrences and now - occurrences[0] > self._config.escalation_window_s:
            occurrences.popleft()
        if rule.escalate_after is not None and len(occurrences) >= rule.escalate_after:
            tier, escalated = rule.escalate_to, True
            reason = f"{reason}; repeat offender ({len(occurrences)}x on {signal.key()}) -> {TIER_NAMES[tier]}"

        if tier in (T1, T2, T3) and signature is not None and step is not None:
            previous_step, count = self._last_failure.get(signature, (-1, 0))
            count = count + 1 if step <= previous_step else 1
            self._last_failure[signature] = (max(step, previous_step), count)
            if count >= self._config.no_progress_limit:
                return TierDecision(tier=T4, escalated=True, reason=(
                    f"{signal.fault_class} recurred {count}x at step {step} with no progress "
                    f"(deterministic failure): {signature}"))

        if tier in (T1, T2, T3):
            self.num_restarts += 1
            if self.num_restarts > self._config.max_restarts:
                return TierDecision(tier=T4, escalated=True, reason=(
                    f"restart budget exhausted ({self._config.max_restarts}); last fault: {signal.fault_class}"))
        return TierDecision(tier=tier, reason=reason, escalated=escalated)


def tier_table_markdown() -> str:
    """The table as a reader reviews it (also printed by `python -m runtime.elastic.tiers`)."""
    lines = ["| fault class | tier | escalates to (after n on the same GPU/node) | why |", "|---|---|---|---|"]
    for fault, rule in TIER_TABLE.items():
        escalation = f"{rule.escalate_to} (after {rule.escalate_after})" if rule.escalate_after else "-"
        lines.append(f"| {fault} | {rule.tier} {TIER_NAMES[rule.tier]} | {escalation} | {rule.reason} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(tier_table_markdown())
