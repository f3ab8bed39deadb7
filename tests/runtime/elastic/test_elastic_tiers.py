"""The tier table and policy: every class has a tier, repeat offenders escalate, loops stop."""

from runtime.elastic.tiers import (
    T0,
    T1,
    T2,
    T3,
    T4,
    TIER_TABLE,
    TierPolicy,
    TierPolicyConfig,
    tier_table_markdown,
)
from runtime.health.signals import FaultSignal
from runtime.health.taxonomy import FaultClass


def _signal(fault, node="n1", gpu=None, rank=None):
    return FaultSignal(fault_class=fault, source="test", node_id=node, gpu_index=gpu, rank=rank)


def test_every_fault_class_has_a_rule():
    classes = {value for name, value in vars(FaultClass).items() if name.isupper()}
    assert classes == set(TIER_TABLE)
    assert "| process_death | T1" in tier_table_markdown()


def test_intended_tiers():
    policy = TierPolicy(TierPolicyConfig(max_restarts=100))
    expected = {FaultClass.PROCESS_DEATH: T1, FaultClass.HANG: T1, FaultClass.XID_APP_ERROR: T1,
                FaultClass.XID_DBE: T2, FaultClass.GPU_LOST: T3, FaultClass.NODE_LOSS: T3,
                FaultClass.THERMAL_THROTTLE: T0, FaultClass.DISK_FULL: T4, FaultClass.ROW_REMAP_FAILURE: T3,
                FaultClass.XID_GSP: T3, FaultClass.XID_UNCONTAINED_ECC: T2, FaultClass.ECC_DBE: T2}
    for index, (fault, tier) in enumerate(expected.items()):
        assert policy.decide(_signal(fault, node=f"n{index}"), step=index).tier == tier, fault


def test_transient_t0_does_not_evict_until_it_repeats():
    policy = TierPolicy(TierPolicyConfig())
    tiers = [policy.decide(_signal(FaultClass.THERMAL_THROTTLE, gpu=0), step=i).tier for i in range(5)]
    assert tiers == [T0, T0, T0, T0, T2]
    assert policy.num_restarts == 1


def test_repeat_offender_escalates_per_node():
    policy = TierPolicy(TierPolicyConfig(max_restarts=100))
    tiers = [policy.decide(_signal(FaultClass.PROCESS_DEATH, node="bad"), step=10 * i).tier for i in range(3)]
    assert tiers == [T1, T1, T3]
    assert policy.decide(_signal(FaultClass.PROCESS_DEATH, node="good"), step=100).tier == T1


def test_restarts_are_bounded():
    policy = TierPolicy(TierPolicyConfig(max_restarts=2))
    tiers = [policy.decide(_signal(FaultClass.XID_APP_ERROR, node=f"n{i}"), step=10 * i).tier for i in range(3)]
    assert tiers == [T1, T1, T4]


def test_deterministic_bug_stops_instead_of_looping():
    policy = TierPolicy(TierPolicyConfig(max_restarts=100))
    bug = "ValueError: boom @ loop.py:12"
    first = policy.decide(_signal(FaultClass.WORKER_ERROR, rank=0), step=7, signature=bug)
    second = policy.decide(_signal(FaultClass.WORKER_ERROR, rank=0), step=7, signature=bug)
    assert (first.tier, second.tier) == (T1, T4)
    assert "no progress" in second.reason and bug in second.reason


def test_same_error_after_progress_is_retried():
    policy = TierPolicy(TierPolicyConfig(max_restarts=100))
    flaky = "RuntimeError: connection reset @ x.py:1"
    assert policy.decide(_signal(FaultClass.WORKER_ERROR), step=5, signature=flaky).tier == T1
    assert policy.decide(_signal(FaultClass.WORKER_ERROR), step=50, signature=flaky).tier == T1
