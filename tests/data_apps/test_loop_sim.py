"""data_apps.loop end to end on the local cluster, tiny: two rounds with DAgger re-collection and a hot-swap."""

from __future__ import annotations

import json

import pytest


def test_cli_settings():
    from data_apps.loop import config_from_args, parse_args

    quick = config_from_args(parse_args(["--workdir", "w", "--quick", "--rounds", "1"]))
    assert quick.rounds == 1 and not quick.pointnet and quick.num_episodes < 100
    full = config_from_args(parse_args(["--workdir", "w", "--eval-episodes", "7", "--no-pointnet"]))
    assert full.eval_episodes == 7 and full.pointnet is False and full.rounds == 2
    with pytest.raises(ValueError, match="loop.rounds"):
        config_from_args(parse_args(["--workdir", "w", "--rounds", "0"]))


def test_busiest_moment_fits_the_default_embedded_cluster_and_names_num_cpus_when_too_small():
    from data_apps.loop import LoopConfig, parse_args, replica_groups
    from runtime.placement_fit import ClusterCpus, PlacementError, fit_replicas

    config = LoopConfig(workdir="w")
    default = ClusterCpus(num_cpus=parse_args(["--workdir", "w"]).num_cpus, embedded=True, flag="--num-cpus")
    assert fit_replicas(replica_groups(config), default).num_cpus["SimWorker"] == config.num_cpus_per_sim_worker
    shrunk = fit_replicas(replica_groups(config), ClusterCpus(num_cpus=3, embedded=True, flag="--num-cpus"))
    assert shrunk.num_cpus == {"SimWorker": 0.3, "Policy": 0.3, "policy_train worker": 1.0, "Ray Data task": 1.0}
    with pytest.raises(PlacementError, match=r"need 3.5 CPUs but the embedded cluster has 2; .*--num-cpus"):
        fit_replicas(replica_groups(config), ClusterCpus(num_cpus=2, embedded=True, flag="--num-cpus"))


@pytest.mark.slow
def test_two_rounds_grow_the_dataset_and_swap_the_policy(ray_local, tmp_path):
    from ray import serve

    from data_apps.loop import APP_NAME, LoopConfig, render_round, run_loop
    from runtime.cluster import free_port
    from runtime.robot.sim.env import SimConfig
    from runtime.robot.sim.pool import SimPool, SimPoolConfig

    if not serve.status().proxies:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    config = LoopConfig(workdir=str(tmp_path), rounds=2, num_episodes=4, eval_episodes=4, train_steps=40,
                        pointnet=False, num_sim_workers=1, num_envs_per_worker=4, supervised=False)
    pool = SimPool(SimPoolConfig(num_workers=1, num_envs_per_worker=4, num_cpus_per_worker=0.25),
                   SimConfig(max_episode_steps=50))
    try:
        first, second = run_loop(config, pool)
    finally:
        pool.shutdown()
        serve.delete(APP_NAME)
    assert first.episodes_added == 4 and first.expert_success_rate == 1.0
    assert first.label_success_accuracy == 1.0
    # Every failed evaluation start comes back twice: policy-driven with expert labels, and expert-driven.
    assert second.episodes_added == 2 * len(first.failed_seeds)
    assert second.episodes_total == 4 + second.episodes_added
    assert (first.policy_version, second.policy_version) == ("round-1-state_mlp", "round-2-state_mlp")
    saved = json.loads((tmp_path / "loop_report.json").read_text())
    assert [entry["round"] for entry in saved] == [1, 2]
    table = render_round(second)
    for heading in ("episodes", "label quality", "training loss", "success rate", "wall time"):
        assert heading in table
