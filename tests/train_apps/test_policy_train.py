"""train_apps.policy_train on real Ray Train: a BC policy from a simulated LeRobot dataset."""

from __future__ import annotations

import math

import pytest
from helpers.robot_loop_data import write_sim_dataset

from runtime.robot.policy import load_policy
from runtime.robot.sim.camera import rendering_available
from train_apps.policy_train import PolicyTrainConfig, load_training_arrays, train_policy


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="policy_train.kind"):
        PolicyTrainConfig(dataset="d", output_dir="o", kind="rnn")
    with pytest.raises(ValueError, match="policy_train.max_steps"):
        PolicyTrainConfig(dataset="d", output_dir="o", max_steps=0)


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory):
    return write_sim_dataset(tmp_path_factory.mktemp("sim") / "dataset", seeds=[0, 1, 2])


@pytest.mark.slow
def test_state_mlp_trains_under_the_supervisor(ray_local, sim_dataset, tmp_path):
    states, actions, points = load_training_arrays(str(sim_dataset), with_points=False)
    assert states.shape == (90, 28) and actions.shape == (90, 4) and points is None
    result = train_policy(PolicyTrainConfig(dataset=str(sim_dataset), output_dir=str(tmp_path / "mlp"),
                                            max_steps=60, checkpoint_every=20, batch_size=32, version="t-mlp"))
    assert result.num_steps == 60 and result.num_frames == 90 and math.isfinite(result.final_loss)
    model, info = load_policy(result.checkpoint)
    assert info.version == "t-mlp" and info.config.kind == "state_mlp"
    assert sorted(p.name for p in (tmp_path / "mlp" / "steps").iterdir())[-1] == "step-00000060.safetensors"


@pytest.mark.slow
@pytest.mark.skipif(not rendering_available(), reason="point clouds need offscreen depth rendering")
def test_pointnet_trains_with_a_plain_torch_trainer(ray_local, sim_dataset, tmp_path):
    result = train_policy(PolicyTrainConfig(dataset=str(sim_dataset), output_dir=str(tmp_path / "pn"), kind="pointnet",
                                            max_steps=20, batch_size=16, num_points=32, supervised=False))
    model, info = load_policy(result.checkpoint)
    assert info.config.kind == "pointnet" and result.num_steps == 20
