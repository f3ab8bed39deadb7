"""Collect simulated pick-and-place episodes into a labeled LeRobot v3 dataset (expert, policy or DAgger).

    python -m data_apps.collect --dst DIR [--num-episodes 50] [--seed-start 0] [--noise-std 0.1]
        [--mode expert|dagger --policy CKPT] [--num-workers 2] [--num-envs 8] [--num-cpus 2]
    ray job submit --working-dir . -- python -m data_apps.collect --dst data/sim_pick --num-episodes 200

SimWorker actors roll the episodes out (RGB-D rendered offscreen when EGL/OSMesa exists) and put
each one in the object store as frame rows; a Ray Data pipeline turns depth into point clouds
(runtime.robot.pointcloud stages), runs the data platform's labelers (success, phases), and commits
episode by episode into DIR (runtime.robot.manifest), then assembles the LeRobot v3 dataset.
Running it again with new seeds grows the same dataset. Label quality against the simulator's
ground truth is printed with the summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import pyarrow as pa
import ray
import ray.data

from data_apps.common import commit_and_finalize, setup_data_context
from runtime.cluster import connect
from runtime.robot.labeling.phases import PhaseSegmenter
from runtime.robot.labeling.stages import LabelingConfig
from runtime.robot.labeling.success import SuccessLabeler
from runtime.robot.manifest import EpisodeManifest
from runtime.robot.sim.env import FPS, SimConfig
from runtime.robot.sim.label_quality import LabelQuality, score_episode
from runtime.robot.sim.perception import CloudConfig, DepthCloudStage
from runtime.robot.sim.pool import SimPool, SimPoolConfig

# Fetch's right finger joint (state index 9) reads ~0.025 m when closed on the 5 cm block and 0.05
# when open: "closed" below 0.03 m. End effector xyz is state 0..2.
SIM_LABELING = dict(gripper_index=9, ee_indices=(0, 1, 2), closed_below=0.03, fps=float(FPS))


@dataclass(kw_only=True, slots=True)
class CollectConfig:
    dst: str
    seeds: list[int]
    modes: tuple[str, ...] = ("expert",)  # each seed is rolled out once per mode: "expert", "dagger", "policy"
    driver: dict | None = None
    noise_std: float = 0.1
    tag: str = "collect"
    cloud: CloudConfig = field(default_factory=CloudConfig)
    labeling: LabelingConfig = field(
        default_factory=lambda: LabelingConfig(success_rule="flag", instructions=None, **SIM_LABELING)
    )

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("collect.seeds must not be empty")
        for mode in self.modes:
            if mode not in ("expert", "dagger", "policy"):
                raise ValueError(f"collect.modes must be expert, dagger or policy, got {mode!r}")
            if mode != "expert" and self.driver is None:
                raise ValueError(f"collect.driver is required for mode {mode!r}")


@dataclass(kw_only=True, slots=True)
class CollectResult:
    num_episodes: int
    num_frames: int
    rollout_success_rate: float  # success of the episodes as rolled out (expert or policy driving)
    episodes_total: int
    frames_total: int
    label_quality: LabelQuality
    label_quality_by_mode: dict[str, LabelQuality]  # "expert" / "dagger" / "policy" episodes apart
    sources: list[str]
    wall_s: float

    def render(self) -> str:
        quality = self.label_quality
        return (
            f"collected {self.num_episodes} episodes ({self.num_frames} frames), rollout success "
            f"{self.rollout_success_rate:.0%}; dataset now {self.episodes_total} episodes / {self.frames_total} "
            f"frames; labels: success acc {quality.success_accuracy:.0%}, phase F1(+-{quality.tolerance_frames}) "
            f"{quality.phase_f1:.2f}; {self.wall_s:.1f} s"
        )


class EpisodeStage:
    """Depth -> point cloud, then the data platform's success and phase labelers, on whole episodes.

    One fused actor stage instead of one actor pool per step: on a 2-core laptop every extra
    actor pool costs seconds of start-up per round, and these steps are cheap.
    """

    def __init__(self, *, camera: dict | None, cloud: CloudConfig, labeling: LabelingConfig):
        self.stages = [] if camera is None else [DepthCloudStage(camera=camera, config=cloud)]
        if labeling.success_rule is not None:
            self.stages.append(SuccessLabeler(rule=labeling.success_rule, model_path=labeling.success_model_path))
        if labeling.phases:
            self.stages.append(PhaseSegmenter(gripper_index=labeling.gripper_index, ee_indices=labeling.ee_indices,
                                              closed_below=labeling.closed_below, fps=labeling.fps))

    def __call__(self, table: pa.Table) -> pa.Table:
        for stage in self.stages:
            table = stage(table)
        return table


def collect(pool: SimPool, config: CollectConfig) -> CollectResult:
    """Roll out, point-cloud, label and commit `config.seeds` into the dataset at `config.dst`."""
    started_s = time.perf_counter()
    results = []
    for mode in config.modes:
        noise_std = config.noise_std if mode == "expert" else 0.0
        results += pool.rollout(config.seeds, mode=mode, driver=config.driver, noise_std=noise_std, record=True,
                                tag=config.tag)
    setup_data_context()
    dataset = ray.data.from_arrow_refs([result["table"] for result in results])
    camera = next(iter(pool.camera_params().values())) if pool.rendering() else None
    dataset = dataset.map_batches(
        EpisodeStage,
        fn_constructor_kwargs={"camera": camera, "cloud": config.cloud, "labeling": config.labeling},
        batch_size=None,
        batch_format="pyarrow",
        concurrency=1,
        num_cpus=0.5,
    )
    summary = commit_and_finalize(dataset, dst=config.dst, pipeline="collect", started_s=started_s, fps=FPS,
                                  robot_type="fetch")
    sources = {result["source"] for result in results}
    quality, by_mode = LabelQuality(), {}
    for source, table in EpisodeManifest(config.dst).iter_committed():
        if source in sources:
            episode_quality = score_episode(table)
            quality.add(episode_quality)
            by_mode.setdefault(source.split("/")[-2], LabelQuality()).add(episode_quality)
    return CollectResult(
        num_episodes=len(results),
        num_frames=summary.frames_this_run,
        rollout_success_rate=sum(result["success"] for result in results) / len(results),
        episodes_total=summary.episodes_total,
        frames_total=summary.frames_total,
        label_quality=quality,
        label_quality_by_mode=by_mode,
        sources=sorted(sources),
        wall_s=time.perf_counter() - started_s,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_apps.collect", description=__doc__.splitlines()[0])
    parser.add_argument("--dst", required=True, help="LeRobot v3.0 dataset directory to create or grow")
    parser.add_argument("--num-episodes", type=int, default=50)
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--mode", default="expert", choices=("expert", "dagger"))
    parser.add_argument("--policy", default=None, help="policy checkpoint (safetensors) for --mode dagger")
    parser.add_argument("--noise-std", type=float, default=0.1, help="executed-action noise; labels stay clean")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--num-envs", type=int, default=8, help="environments per worker, stepped in lockstep")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of an embedded cluster")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "dagger" and not args.policy:
        raise ValueError("--policy is required with --mode dagger")
    connect(num_cpus=args.num_cpus)
    pool = SimPool(SimPoolConfig(num_workers=args.num_workers, num_envs_per_worker=args.num_envs),
                   SimConfig(image_size=args.image_size))
    try:
        config = CollectConfig(
            dst=args.dst, seeds=list(range(args.seed_start, args.seed_start + args.num_episodes)), modes=(args.mode,),
            driver={"kind": "checkpoint", "path": args.policy} if args.policy else None, noise_std=args.noise_std,
            tag=f"collect-{args.seed_start:07d}",
        )
        print(collect(pool, config).render(), flush=True)
    finally:
        pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
