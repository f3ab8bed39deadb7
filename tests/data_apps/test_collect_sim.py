"""data_apps.collect on the local cluster: sim workers -> clouds -> labelers -> LeRobot v3, grown by reruns."""

from __future__ import annotations

import json

import pytest

from runtime.robot import schema
from runtime.robot.formats.lerobot import LeRobotDataset
from runtime.robot.sim.camera import rendering_available
from runtime.robot.sim.env import SimConfig
from runtime.robot.sim.perception import CloudConfig
from runtime.robot.sim.pool import SimPool, SimPoolConfig


def test_config_errors_name_the_field():
    from data_apps.collect import CollectConfig

    with pytest.raises(ValueError, match="collect.seeds"):
        CollectConfig(dst="d", seeds=[])
    with pytest.raises(ValueError, match="collect.driver"):
        CollectConfig(dst="d", seeds=[1], modes=("dagger",))


@pytest.mark.slow
def test_collect_writes_a_labeled_lerobot_dataset_and_grows_it(ray_local, tmp_path):
    from data_apps.collect import CollectConfig, collect

    pool = SimPool(SimPoolConfig(num_workers=1, num_envs_per_worker=2, num_cpus_per_worker=0.25),
                   SimConfig(max_episode_steps=50))
    try:
        dst = str(tmp_path / "dataset")
        first = collect(pool, CollectConfig(dst=dst, seeds=[0, 1], tag="a", cloud=CloudConfig(num_points=32)))
        second = collect(pool, CollectConfig(dst=dst, seeds=[2], tag="b", cloud=CloudConfig(num_points=32)))
    finally:
        pool.shutdown()
    assert first.num_episodes == 2 and first.rollout_success_rate == 1.0
    assert second.episodes_total == 3 and second.frames_total == 150
    assert first.label_quality.success_accuracy == 1.0
    assert first.label_quality.boundary_truth > 0
    dataset = LeRobotDataset(dst)
    info = json.loads((tmp_path / "dataset" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 25 and dataset.num_episodes == 3
    episode = dataset.episode_table(0, decode_videos=rendering_available())
    sources = {label.source for label in schema.labels_from_json(episode.column(schema.LABELS)[0].as_py())}
    assert {"sim.ground_truth", "strata.success.flag", "strata.phases.gripper_velocity"} <= sources
    if rendering_available():
        assert episode.column(schema.POINTCLOUD_NUM_POINTS).to_pylist() == [32] * 50
        assert schema.image_key("external_camera_0") in episode.column_names
