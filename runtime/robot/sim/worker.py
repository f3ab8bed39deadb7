"""SimWorker: a Ray actor holding a few simulated robots that roll out episodes in lockstep.

Stepping its environments together lets one worker send a whole batch of observations to the
policy at once (Serve's @serve.batch then merges the batches of all workers). Episodes to keep are
converted to frame rows in the worker and put in the object store, so the driver never copies them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.robot.sim.drivers import ExpertDriver, make_driver
from runtime.robot.sim.env import PickPlaceSim, SimConfig
from runtime.robot.sim.perception import CloudConfig, frame_cloud
from runtime.robot.sim.recording import Episode, episode_source, episode_table

MODES = ("expert", "policy", "dagger")


@dataclass(kw_only=True, slots=True)
class RolloutRequest:
    seeds: list[int]
    mode: str = "expert"  # expert drives | policy drives | dagger: policy drives, expert labels
    driver: dict | None = None  # policy spec for "policy"/"dagger" (see sim.drivers.make_driver)
    noise_std: float = 0.0  # Gaussian noise on the executed xyz action (labels stay clean, DART-style)
    record: bool = False  # return frame rows (an ObjectRef per episode) for the dataset
    tag: str = "collect"
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"rollout.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "expert" and self.driver is None:
            raise ValueError(f"rollout.driver is required for mode={self.mode!r}")
        if self.noise_std < 0:
            raise ValueError(f"rollout.noise_std must be >= 0, got {self.noise_std}")


class SimWorker:
    def __init__(self, sim_config: SimConfig | None = None, cloud_config: CloudConfig | None = None, num_envs: int = 8):
        import torch

        torch.set_num_threads(1)  # workers share few cores; intra-op threads only contend
        if num_envs < 1:
            raise ValueError(f"sim.num_envs must be >= 1, got {num_envs}")
        first = PickPlaceSim(sim_config)
        shared_camera = first.camera() if first.rendering else None  # one GL context per worker
        self.sims = [first] + [PickPlaceSim(sim_config, camera=shared_camera) for _ in range(num_envs - 1)]
        self.cloud_config = cloud_config or CloudConfig()
        self.expert = ExpertDriver()

    def camera_params(self) -> dict:
        return {name: params.to_dict() for name, params in self.sims[0].camera_params().items()}

    @property
    def rendering(self) -> bool:
        return self.sims[0].rendering

    def is_rendering(self) -> bool:
        return self.rendering

    def rollout(self, request: RolloutRequest) -> list[dict]:
        """Run the request's seeds; one result dict per episode, in seed order."""
        policy = None if request.mode == "expert" else make_driver(request.driver)
        rng = np.random.default_rng(request.noise_seed)
        results = []
        for start in range(0, len(request.seeds), len(self.sims)):
            seeds = request.seeds[start : start + len(self.sims)]
            results += self._run_group(seeds, request, policy, rng)
        return results

    def _run_group(self, seeds, request: RolloutRequest, policy, rng) -> list[dict]:
        sims = self.sims[: len(seeds)]
        needs_cloud = policy is not None and policy.needs_pointcloud
        for sim in sims:
            sim.capture = sim.rendering and (request.record or needs_cloud)
        episodes = [Episode(seed=seed, driver=request.mode) for seed in seeds]
        frames = [sim.reset(seed) for sim, seed in zip(sims, seeds)]
        camera = sims[0].camera_params()[sims[0].config.cameras[0]] if needs_cloud else None
        while not sims[0].done:
            states = np.stack([frame.state for frame in frames])
            expert_actions = self.expert.act(states)
            if policy is None:
                executed, labels = expert_actions.copy(), expert_actions
            else:
                clouds = None
                if needs_cloud:
                    clouds = np.stack([frame_cloud(f.depths[camera.name], camera, self.cloud_config) for f in frames])
                policy_actions = policy.act(states, clouds)
                executed = policy_actions.copy()
                labels = expert_actions if request.mode == "dagger" else policy_actions
            if request.noise_std > 0:
                executed[:, :3] += rng.normal(0.0, request.noise_std, size=executed[:, :3].shape)
            for index, sim in enumerate(sims):
                episodes[index].frames.append(frames[index])
                episodes[index].actions.append(labels[index])
                frames[index] = sim.step(executed[index])
        results = []
        for episode, frame in zip(episodes, frames):
            episode.frames.append(frame)
            result = {
                "seed": episode.seed,
                "mode": request.mode,
                "success": episode.success,
                "final": frame.truth.to_dict(),
                "phases": episode.phases,
                "policy_version": getattr(policy, "version", "expert"),
            }
            if request.record:
                import ray

                source = episode_source(request.tag, episode)
                table = episode_table(episode, source=source)
                result["source"] = source
                # In an actor: hand back an ObjectRef; in plain Python (tests): the table itself.
                result["table"] = ray.put(table) if ray.is_initialized() else table
            results.append(result)
        return results

    def close(self) -> None:
        for sim in self.sims:
            sim.close()
