"""Convert robot logs (LeRobot, MCAP, ROS 1/2 bags, robomimic HDF5) into a LeRobot v3.0 dataset.

    python -m data_apps.convert --src PATH --src-format lerobot|mcap|rosbag|hdf5 --dst DIR
    ray job submit --working-dir . -- python -m data_apps.convert --src PATH --src-format mcap --dst DIR

A streaming Ray Data pipeline: one read task per share of the input files yields one block per
episode; each episode is committed on its own (runtime.robot.manifest), so a killed run started
again with the same arguments finishes with every episode exactly once. Corrupt or truncated inputs
are copied to <dst>/quarantine/ with their reason and the rest goes on. Options:
--topic-map FILE (YAML/JSON TopicMapping for MCAP/bags, custom topics included), --fps, --task,
--robot-type, --video-codec, --no-videos, --num-cpus (embedded cluster only).
"""

from __future__ import annotations

import argparse
import sys
import time

from data_apps.common import (
    FORMATS,
    commit_and_finalize,
    connect_cluster,
    discover_sources,
    read_sources,
    reader_for,
    setup_data_context,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_apps.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="input file, bag directory, dataset root or directory")
    parser.add_argument("--src-format", required=True, choices=FORMATS)
    parser.add_argument("--dst", required=True, help="output LeRobot v3.0 dataset directory")
    parser.add_argument("--topic-map", default=None, help="YAML/JSON topic mapping for mcap/rosbag inputs")
    parser.add_argument("--fps", type=float, default=None, help="frame rate (default: from the data)")
    parser.add_argument("--task", default=None, help="task text for episodes that carry none")
    parser.add_argument("--robot-type", default="unknown")
    parser.add_argument("--video-codec", default="libx264")
    parser.add_argument("--no-videos", action="store_true", help="store camera frames as PNG in Parquet")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of an embedded local cluster")
    return parser.parse_args(argv)


def run(args: argparse.Namespace):
    started_s = time.perf_counter()
    connect_cluster(args.num_cpus, pipeline="convert")
    setup_data_context()
    sources = discover_sources(args.src, args.src_format)
    if not sources:
        raise ValueError(f"src {args.src} holds no {args.src_format} inputs")
    read_episodes = reader_for(args.src_format, topic_mapping=args.topic_map, fps=args.fps, task=args.task)
    dataset = read_sources(sources, read_episodes, dst=args.dst, name=f"Read{args.src_format.upper()}")
    fps = args.fps
    if fps is None and args.src_format == "lerobot":
        from runtime.robot.formats.lerobot_read import LeRobotDataset

        fps = LeRobotDataset(args.src).fps
    return commit_and_finalize(
        dataset, dst=args.dst, pipeline="convert", started_s=started_s, fps=fps, robot_type=args.robot_type,
        video_codec=args.video_codec, use_videos=not args.no_videos,
    )


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    print(summary.render(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
