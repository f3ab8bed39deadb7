"""The MuJoCo pick-and-place sim: determinism, expert success, ground truth, RGB-D and clouds."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.robot.sim.camera import rendering_available
from runtime.robot.sim.env import ACTION_DIM, STATE_DIM, PickPlaceSim, SimConfig
from runtime.robot.sim.expert import ScriptedExpert
from runtime.robot.sim.ground_truth import phase_boundaries
from runtime.robot.sim.perception import CloudConfig, frame_cloud


@pytest.fixture(scope="module")
def sim():
    simulator = PickPlaceSim(SimConfig(render=False))
    yield simulator
    simulator.close()


def run_expert(sim: PickPlaceSim, seed: int):
    expert = ScriptedExpert()
    frames = [sim.reset(seed)]
    while not sim.done:
        frames.append(sim.step(expert.act(frames[-1].state)))
    return frames


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="sim.max_episode_steps"):
        SimConfig(max_episode_steps=0)
    with pytest.raises(ValueError, match="sim.image_size"):
        SimConfig(image_size=4)


def test_reset_is_deterministic_per_seed(sim):
    first = sim.reset(7).state.copy()
    other = sim.reset(8).state.copy()
    again = sim.reset(7).state
    assert first.shape == (STATE_DIM,) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert sim.step(np.zeros(ACTION_DIM)).state.shape == (STATE_DIM,)


def test_expert_succeeds_and_phases_follow_physics(sim):
    successes = 0
    for seed in range(5):
        frames = run_expert(sim, seed)
        successes += frames[-1].truth.success
        phases = [frame.truth.phase for frame in frames]
        assert phases[0] == "approach"
        order = [phases[i] for i in [0, *phase_boundaries(phases)]]
        assert order[:3] == ["approach", "grasp", "transport"], order
        assert frames[-1].truth.grasped
    assert successes == 5


def test_a_policy_that_does_nothing_fails(sim):
    frames = [sim.reset(3)]
    while not sim.done:
        frames.append(sim.step(np.zeros(ACTION_DIM)))
    assert not frames[-1].truth.success
    assert {frame.truth.phase for frame in frames} == {"approach"}


@pytest.mark.skipif(not rendering_available(), reason="no EGL/OSMesa offscreen rendering here")
def test_rgbd_cameras_and_point_cloud_see_the_block():
    sim = PickPlaceSim(SimConfig(image_size=64))
    try:
        frame = sim.reset(11)
        image, depth = frame.images["external_camera_0"], frame.depths["external_camera_0"]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 0
        assert depth.shape == (64, 64) and depth.dtype == np.float32 and 0.3 < np.median(depth) < 3.0
        camera = sim.camera_params()["external_camera_0"]
        cloud = frame_cloud(depth, camera, CloudConfig(num_points=64))
        assert cloud.shape == (64, 3)
        block = frame.state[3:6]
        assert np.min(np.linalg.norm(cloud - block, axis=1)) < 0.03  # the block is in the cloud
        assert cloud[:, 2].min() >= 0.41  # table top cropped away
        sim.capture = False
        assert sim.step(np.zeros(ACTION_DIM)).images == {}
    finally:
        sim.close()
