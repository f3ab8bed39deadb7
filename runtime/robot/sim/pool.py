"""A pool of SimWorker actors: split seeds across them, gather episodes in seed order.

Vectorized collection is two levels deep: Ray actors across cores (and nodes), and a few
environments per actor stepped in lockstep so each policy call carries a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from runtime.robot.sim.env import SimConfig
from runtime.robot.sim.perception import CloudConfig
from runtime.robot.sim.worker import RolloutRequest, SimWorker


@dataclass(kw_only=True, slots=True)
class SimPoolConfig:
    num_workers: int = 2
    num_envs_per_worker: int = 8
    num_cpus_per_worker: float = 0.5

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"sim_pool.num_workers must be >= 1, got {self.num_workers}")
        if self.num_envs_per_worker < 1:
            raise ValueError(f"sim_pool.num_envs_per_worker must be >= 1, got {self.num_envs_per_worker}")


class SimPool:
    def __init__(self, config: SimPoolConfig | None = None, sim_config: SimConfig | None = None,
                 cloud_config: CloudConfig | None = None):
        self.config = config or SimPoolConfig()
        actor = ray.remote(SimWorker).options(num_cpus=self.config.num_cpus_per_worker)
        self.workers = [
            actor.remote(sim_config, cloud_config, self.config.num_envs_per_worker)
            for _ in range(self.config.num_workers)
        ]

    def camera_params(self) -> dict:
        return ray.get(self.workers[0].camera_params.remote())

    def rendering(self) -> bool:
        return ray.get(self.workers[0].is_rendering.remote())

    def rollout(self, seeds: list[int], **request) -> list[dict]:
        """Episode results for `seeds` (see SimWorker.rollout), in the order given."""
        seeds = [int(seed) for seed in seeds]
        if not seeds:
            return []
        num_workers = min(len(self.workers), len(seeds))
        share = -(-len(seeds) // num_workers)
        futures = [
            worker.rollout.remote(RolloutRequest(seeds=seeds[i * share : (i + 1) * share], noise_seed=i, **request))
            for i, worker in enumerate(self.workers[:num_workers])
        ]
        return [result for results in ray.get(futures) for result in results]

    def shutdown(self) -> None:
        ray.get([worker.close.remote() for worker in self.workers])
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
