"""Bounded memory: push a robot dataset many times larger than the object store through Ray Data.

    python -m benchmarks.robot_memory --total-mb 4096 --object-store-mb 512
    python -m benchmarks.robot_memory --total-mb 400 --object-store-mb 100 --no-baseline   # CI-sized
    ray job submit --working-dir . -- python -m benchmarks.robot_memory --total-mb 4096 --object-store-mb 512

Starts its own local Ray cluster (the object store size is the point), generates episodes of
point clouds and state inside read tasks (runtime.robot.formats.datasource.EpisodeDatasource),
maps them through a per-episode stage and commits them to a counting sink: the pipeline shape of
data_apps.convert without the disk. A sampler records object store bytes in use, bytes spilled
and the RSS of the whole Ray process tree. The baseline, in the same run, materializes the same
dataset (what a non-streaming pipeline does). Writes JSON (and a PNG) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data.datasource import Datasink

from runtime.robot import schema as S
from runtime.robot.formats.datasource import EpisodeDatasource

MB = 1024 * 1024
FRAMES_PER_EPISODE = 16


def synthetic_episodes(source: str, skip: frozenset[str], episode_mb: float = 8.0):
    """One episode of `episode_mb` (point clouds dominate), generated on the fly from its seed."""
    if source in skip:
        return
    seed = int(source.rsplit("#", 1)[1])
    rng = np.random.default_rng(seed)
    points_per_frame = int(episode_mb * MB / FRAMES_PER_EPISODE / 12)
    frames = [{S.EPISODE_INDEX: seed, S.FRAME_INDEX: i, S.TIMESTAMP: i / 10, S.TASK: "synthetic",
               S.STATE: rng.normal(size=7).astype(np.float32), S.ACTION: rng.normal(size=4).astype(np.float32),
               S.EPISODE_SOURCE: source, **S.pack_pointcloud(rng.normal(size=(points_per_frame, 3)))}
              for i in range(FRAMES_PER_EPISODE)]
    yield S.frames_to_table(frames)


class CenterClouds:
    """A per-episode actor-pool stage (like the labelers): subtract each episode's mean point.

    Being an actor pool, it is its own operator, so every block crosses the object store twice."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return center_clouds(batch)


def center_clouds(batch: pa.Table) -> pa.Table:
    out = []
    for episode in S.episode_tables(batch):
        flat = episode.column(S.POINTCLOUD).combine_chunks()
        values = flat.values.to_numpy().reshape(-1, 3)
        values = (values - values.mean(axis=0)).astype(np.float32).ravel()
        column = pa.ListArray.from_arrays(flat.offsets, pa.array(values))
        out.append(episode.set_column(episode.column_names.index(S.POINTCLOUD), S.POINTCLOUD, column))
    return pa.concat_tables(out)


class CountingSink(Datasink):
    def write(self, blocks, ctx):
        return sum(block.nbytes for block in blocks)

    def on_write_complete(self, write_result):
        self.total_bytes = sum(write_result.write_returns)


class Sampler(threading.Thread):
    """Samples object store use, spilled bytes and the Ray process tree's RSS every `period_s`."""

    def __init__(self, period_s: float = 0.2):
        super().__init__(daemon=True)
        from ray._private.internal_api import get_state_from_address

        self.state = get_state_from_address(ray.get_runtime_context().gcs_address)
        self.period_s = period_s
        self.samples: list[dict] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        import psutil
        from ray._private.internal_api import get_memory_info_reply

        root = psutil.Process(os.getpid())
        started = time.perf_counter()
        while not self.stopped.wait(self.period_s):
            stats = get_memory_info_reply(self.state).store_stats
            rss = 0
            for process in [root, *root.children(recursive=True)]:
                try:
                    rss += process.memory_info().rss
                except psutil.Error:
                    continue
            self.samples.append({"t_s": time.perf_counter() - started, "store_used_bytes": stats.object_store_bytes_used,
                                 "spilled_bytes": stats.spilled_bytes_total, "rss_bytes": rss})

    def peaks(self) -> dict:
        keys = ("store_used_bytes", "spilled_bytes", "rss_bytes")
        return {f"peak_{key}": max((s[key] for s in self.samples), default=0) for key in keys}


def dataset(num_episodes: int, episode_mb: float) -> ray.data.Dataset:
    import functools

    source = EpisodeDatasource([f"synthetic#{i:06d}" for i in range(num_episodes)],
                               functools.partial(synthetic_episodes, episode_mb=episode_mb), name="Synthetic")
    return ray.data.read_datasource(source, override_num_blocks=source.num_read_tasks()).map_batches(
        CenterClouds, batch_size=None, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)


def measure(run) -> dict:
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    processed = run()
    wall_s = time.perf_counter() - started
    sampler.stopped.set()
    sampler.join()
    return {"processed_bytes": processed, "wall_s": wall_s, **sampler.peaks(), "samples": sampler.samples}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.robot_memory")
    parser.add_argument("--total-mb", type=float, default=4096)
    parser.add_argument("--object-store-mb", type=float, default=512)
    parser.add_argument("--episode-mb", type=float, default=8)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true", help="skip the materializing baseline")
    parser.add_argument("--out", default="benchmarks/results/robot_memory.json")
    args = parser.parse_args(argv)
    if args.object_store_mb < 80:
        raise ValueError(f"object_store_mb must be >= 80 (Ray's floor), got {args.object_store_mb}")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=args.num_cpus, object_store_memory=int(args.object_store_mb * MB),
             include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    num_episodes = max(1, int(args.total_mb / args.episode_mb))

    def streaming() -> int:
        sink = CountingSink()
        dataset(num_episodes, args.episode_mb).write_datasink(sink)
        return sink.total_bytes

    def materialized() -> int:
        materialized = dataset(num_episodes, args.episode_mb).materialize()
        return int(materialized.size_bytes())

    result = {"total_mb": args.total_mb, "object_store_mb": args.object_store_mb, "episode_mb": args.episode_mb,
              "num_episodes": num_episodes, "num_cpus": args.num_cpus, "load_avg": os.getloadavg()}
    result["streaming"] = measure(streaming)
    if not args.no_baseline:
        result["baseline_materialize"] = measure(materialized)
        result["peak_store_plus_spill_ratio"] = (
            (result["streaming"]["peak_store_used_bytes"] + result["streaming"]["peak_spilled_bytes"])
            / max(1, result["baseline_materialize"]["peak_store_used_bytes"]
                  + result["baseline_materialize"]["peak_spilled_bytes"]))
    ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=_plain))
    _plot(result, out.with_suffix(".png"))
    summary = {k: v for k, v in result["streaming"].items() if k != "samples"}
    print(json.dumps({"streaming": summary, "ratio": result.get("peak_store_plus_spill_ratio")}, indent=2,
                     default=_plain))
    return result


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name in ("streaming", "baseline_materialize"):
        if name in result:
            samples = result[name]["samples"]
            axis.plot([s["t_s"] for s in samples], [s["store_used_bytes"] / MB for s in samples], label=f"{name} store")
            axis.plot([s["t_s"] for s in samples], [s["spilled_bytes"] / MB for s in samples], "--",
                      label=f"{name} spilled")
    axis.axhline(result["object_store_mb"], color="gray", lw=0.8, label="object store size")
    axis.set_xlabel("s")
    axis.set_ylabel("MB")
    axis.set_title(f"{result['total_mb']:.0f} MB through a {result['object_store_mb']:.0f} MB object store")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
