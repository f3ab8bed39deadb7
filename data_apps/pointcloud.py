"""Depth frames -> fixed-size point clouds (depth -> cloud -> crop -> voxel -> FPS) as a Ray Data job.

    python -m data_apps.pointcloud --src synthetic --num-frames 2000 [--voxel-size 0.01] [--num-samples 512]
    python -m data_apps.pointcloud --src DEPTH_DIR --output DIR    # DEPTH_DIR: 16-bit mm .png or .npy frames
    ray job submit --working-dir . -- python -m data_apps.pointcloud --src synthetic --num-frames 20000

Shows Ray Data's progress, exports points/rows counters per stage (`strata_data_stage_points_total`)
and points/s, rows/s gauges (`strata_data_points_per_s`, `strata_data_rows_per_s`), and prints a
summary (also written to DIR/summary.json with --output). A depth file that cannot be read, or is
not --height x --width, is copied to DIR/quarantine/ with its reason and left out (without --output:
to a new temporary directory, named in the summary); the rest goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data_apps.common import connect_cluster
from data_apps.depth_frames import read_depth_frames
from runtime import metrics
from runtime.robot.manifest import Quarantine
from runtime.robot.pointcloud.pipeline import (
    PointCloudPipelineConfig,
    build_pointcloud_pipeline,
    synthetic_depth_frames,
)


@dataclass(kw_only=True, slots=True)
class PointCloudSummary:
    pipeline: str = "pointcloud"
    source: str
    frames: int
    points_in: int
    points_out: int
    wall_s: float
    frames_per_s: float
    points_per_s: float
    output: str | None
    quarantined: list[dict]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", required=True, help="'synthetic' or a directory of depth frames")
    parser.add_argument("--num-frames", type=int, default=1000, help="frames to render with --src synthetic")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--fov-y-deg", type=float, default=60.0)
    parser.add_argument("--depth-scale", type=float, default=0.001, help="metres per raw .npy depth unit")
    parser.add_argument("--crop-min", type=float, nargs=3, default=(-0.6, -0.6, 0.3))
    parser.add_argument("--crop-max", type=float, nargs=3, default=(0.6, 0.6, 1.2))
    parser.add_argument("--voxel-size", type=float, default=0.01)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", help="write the clouds as Parquet here")
    parser.add_argument("--num-cpus", type=int, help="CPUs of an embedded cluster (no RAY_ADDRESS)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> PointCloudSummary:
    import ray.data

    config = PointCloudPipelineConfig(
        height=args.height,
        width=args.width,
        fov_y_deg=args.fov_y_deg,
        depth_scale=args.depth_scale,
        crop_min=tuple(args.crop_min),
        crop_max=tuple(args.crop_max),
        voxel_size=args.voxel_size,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
    )
    if args.output and Path(args.output).exists() and any(Path(args.output).iterdir()):
        raise ValueError(f"--output {args.output} must be empty or not exist yet")
    connect_cluster(args.num_cpus, pipeline="pointcloud")
    ray.data.DataContext.get_current().enable_progress_bars = True
    if args.src == "synthetic":
        frames = synthetic_depth_frames(
            args.num_frames,
            height=args.height,
            width=args.width,
            fov_y_deg=args.fov_y_deg,
            batch_size=args.batch_size,
        )
    else:
        quarantine_root = args.output or tempfile.mkdtemp(prefix="strata-pointcloud-")
        frames = read_depth_frames(args.src, height=args.height, width=args.width, quarantine_root=quarantine_root,
                                   batch_size=args.batch_size)
    clouds = build_pointcloud_pipeline(frames, config)
    started = time.perf_counter()
    count_columns = ["num_points.depth", "num_points.sampled"]
    if args.output:
        clouds.write_parquet(args.output)
        written = ray.data.read_parquet(args.output, file_extensions=["parquet"])
        batches = written.select_columns(count_columns).iter_batches(batch_size=4096, batch_format="numpy")
    else:
        batches = clouds.select_columns(count_columns).iter_batches(batch_size=4096, batch_format="numpy")
    frames_done = points_in = points_out = 0
    for batch in batches:
        frames_done += len(batch["num_points.depth"])
        points_in += int(np.sum(batch["num_points.depth"]))
        points_out += int(np.sum(batch["num_points.sampled"]))
    wall_s = time.perf_counter() - started
    summary = PointCloudSummary(
        source=args.src,
        frames=frames_done,
        points_in=points_in,
        points_out=points_out,
        wall_s=round(wall_s, 3),
        frames_per_s=round(frames_done / wall_s, 1),
        points_per_s=round(points_in / wall_s, 1),
        output=args.output,
        quarantined=[] if args.src == "synthetic" else [
            {"source": e["source"], "reason": e["reason"], "copied_to": e["copied_to"]}
            for e in Quarantine(quarantine_root).entries()],
    )
    tags = {"pipeline": "pointcloud"}
    metrics.gauge("strata_data_rows_per_s", "frame rows per second, last run", ("pipeline",)).set(
        summary.frames_per_s, tags
    )
    metrics.gauge("strata_data_points_per_s", "point-cloud points per second, last run", ("pipeline",)).set(
        summary.points_per_s, tags
    )
    if args.output:
        Path(args.output, "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    print(json.dumps(asdict(summary), indent=2))
    print(
        f"pointcloud: {summary.frames} frames in {summary.wall_s:.1f} s = {summary.frames_per_s:.1f} frames/s, "
        f"{summary.points_per_s / 1e6:.2f} M points/s in, {summary.points_out} points out",
        file=sys.stderr if os.environ.get("STRATA_QUIET") else sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
