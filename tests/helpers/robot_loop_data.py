"""A small simulated LeRobot v3 dataset for robot-loop tests, written in process (no Ray Data)."""

from __future__ import annotations

from pathlib import Path

from runtime.robot.formats.lerobot import LeRobotWriter
from runtime.robot.sim.camera import rendering_available
from runtime.robot.sim.env import FPS, SimConfig
from runtime.robot.sim.perception import CloudConfig, DepthCloudStage
from runtime.robot.sim.worker import RolloutRequest, SimWorker


def write_sim_dataset(root: str | Path, seeds: list[int], *, num_points: int = 32, max_episode_steps: int = 30) -> Path:
    """Expert episodes (with point clouds when rendering works here) as a LeRobot v3 dataset at root."""
    worker = SimWorker(SimConfig(max_episode_steps=max_episode_steps), num_envs=len(seeds))
    try:
        results = worker.rollout(RolloutRequest(seeds=seeds, record=True, noise_std=0.1))
        stage = None
        if rendering_available():
            camera = worker.sims[0].camera_params()["external_camera_0"]
            stage = DepthCloudStage(camera=camera.to_dict(), config=CloudConfig(num_points=num_points))
        writer = LeRobotWriter(root, fps=FPS, robot_type="fetch")
        for result in results:
            writer.add_episode(stage(result["table"]) if stage else result["table"])
        return writer.finalize()
    finally:
        worker.close()
