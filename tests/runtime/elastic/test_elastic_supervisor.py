"""The ElasticSupervisor on the multi-node fixture: faults are detected, tiered, healed; bugs stop the run.

One supervised run takes a schedule of faults (hang, corrupt checkpoint + kill, thermal throttle,
XID 48, XID 79); shorter runs cover the stop cases (deterministic bug, full disk). Node loss (shrink,
then grow back) has its own cluster layout in test_elastic_node_loss.py.
"""

import os

import pytest
import ray

from runtime import chaos
from runtime.chaos.drill import Injection, run_schedule
from runtime.chaos.toy_train import toy_train_loop
from runtime.elastic import ElasticConfig, start_supervisor
from runtime.elastic.tiers import T0, T1, T2, T3, T4

pytestmark = [pytest.mark.multinode, pytest.mark.slow]
CHECKPOINT_EVERY = 5


def _config(tmp_path, **overrides):
    values = dict(min_workers=1, max_workers=2, resources_per_worker={"CPU": 1, "fake_gpu": 1},
                  checkpoint_dir=str(tmp_path), gpu_resource="fake_gpu", nvml_backend="fake",
                  hang_timeout_min_s=2.0, max_restarts=8, spread=True)
    values.update(overrides)
    return ElasticConfig(**values)


def _loop_config(tmp_path, **overrides):
    return {"checkpoint_dir": str(tmp_path / "toy"), "checkpoint_every": CHECKPOINT_EVERY, "step_sleep_s": 0.1,
            "max_steps": 100, **overrides}


def test_faults_are_healed_by_the_intended_tier(multinode_cluster, tmp_path):
    supervisor = start_supervisor(toy_train_loop, _loop_config(tmp_path, max_steps=85), _config(tmp_path))
    run = supervisor.run.remote()
    toy_dir = str(tmp_path / "toy")
    schedule = [
        Injection(at_step=10, name="hang", inject=lambda: chaos.hang_worker(supervisor, 0), expected_tier=T1),
        Injection(at_step=25, name="corrupt+kill", expected_tier=T1,
                  inject=lambda: (chaos.corrupt_checkpoint(toy_dir), chaos.kill_worker(supervisor, 1))),
        Injection(at_step=40, name="thermal", inject=lambda: chaos.nvml_fault(supervisor, 0, "thermal_throttle"),
                  expected_tier=T0),
        Injection(at_step=45, name="xid48", inject=lambda: chaos.nvml_fault(supervisor, 1, "xid", 48), expected_tier=T2),
        Injection(at_step=60, name="xid79", inject=lambda: chaos.nvml_fault(supervisor, 0, "xid", 79), expected_tier=T3),
    ]
    run_schedule(supervisor, schedule, timeout_s=240)
    result = ray.get(run, timeout=300)
    ray.kill(supervisor)

    assert result.finished and not result.stopped and result.final_step == 85
    acted = [(record.fault_class, record.tier) for record in result.faults]
    # A SIGKILL reaches the supervisor first either from the host's pid watch (process_death) or from
    # Ray Train's worker error (worker_error): whichever wins the race, the answer is T1.
    acted = [("process_death", tier) if fault == "worker_error" else (fault, tier) for fault, tier in acted]
    assert acted == [("hang", T1), ("process_death", T1), ("checkpoint_corrupt", T0),
                     ("thermal_throttle", T0), ("xid_dbe", T2), ("gpu_lost", T3)], acted
    for record in result.faults:
        if record.tier in (T1, T2, T3):
            restored = record.resumed_step - 1
            assert restored % CHECKPOINT_EVERY == 0, record
            lowest = record.step_at_fault - 2 * CHECKPOINT_EVERY  # one back when the newest was corrupt
            assert lowest < restored <= record.step_at_fault + 1, record
    corrupt_kill = result.faults[1]
    assert corrupt_kill.resumed_step - 1 < corrupt_kill.step_at_fault - CHECKPOINT_EVERY + 1  # skipped the corrupt one
    # the T0 signal evicted nobody: one worker group per restart, none for the thermal signal
    assert len(result.worker_nodes_history) == 1 + sum(r.tier in (T1, T2, T3) for r in result.faults)
    # the cordoned node received no new workers; the spare took its place
    (cordoned,) = result.cordoned_nodes
    assert cordoned in result.worker_nodes_history[-2] and cordoned not in result.worker_nodes_history[-1]
    spare = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get("strata.io/role") == "spare")
    assert spare in result.worker_nodes_history[-1]
    losses = [loss for _, _, loss in result.loss_history]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_deterministic_bug_stops_with_a_report(multinode_cluster, tmp_path):
    config = _config(tmp_path, role_label=None, max_workers=1)
    supervisor = start_supervisor(toy_train_loop, _loop_config(tmp_path, bug_at_step=8), config)
    result = ray.get(supervisor.run.remote(), timeout=240)
    ray.kill(supervisor)
    assert result.stopped and not result.finished
    tiers = [record.tier for record in result.faults]
    # Bounded: restarts from the checkpoint, then a stop - by the no-progress rule, or (when heartbeats lag
    # under load and the failing step reads differently) by the restart budget at the latest.
    assert tiers[-1] == T4 and set(tiers[:-1]) == {T1} and len(tiers) <= config.max_restarts + 1, tiers
    assert "deterministic bug at step 8" in result.report
    assert "no progress" in result.report or "restart budget exhausted" in result.report, result.report


def test_full_checkpoint_disk_stops_with_a_report(multinode_cluster, tmp_path):
    config = _config(tmp_path, role_label=None, max_workers=1)
    supervisor = start_supervisor(toy_train_loop, _loop_config(tmp_path, max_steps=400), config)
    run = supervisor.run.remote()
    run_schedule(supervisor, [Injection(at_step=5, name="disk", inject=lambda: chaos.fill_disk(str(tmp_path)))])
    result = ray.get(run, timeout=240)
    ray.kill(supervisor)
    assert result.stopped and [record.fault_class for record in result.faults] == ["disk_full"]
    assert "disk_full" in result.report and result.final_step < 400
    assert os.path.exists(tmp_path / ".strata_disk_full")
