"""Ingest a directory of mixed robot logs (MCAP, ROS 1/2 bags, robomimic HDF5) into one labeled LeRobot v3 dataset.

    python -m data_apps.ingest --src LOG_DIR --dst DIR [--topic-map map.yaml] [--fps 10] [--no-label]
    ray job submit --working-dir . -- python -m data_apps.ingest --src /data/robot_logs --dst /data/lerobot/run1

Every format found under --src is read by its streaming datasource; the union goes through the
labeling stages (unless --no-label) and is committed episode by episode with quarantine of corrupt
files, then assembled into the LeRobot dataset. Rerunning resumes where a killed run stopped.
"""

from __future__ import annotations

import argparse
import sys
import time

from data_apps.common import (
    commit_and_finalize,
    connect_cluster,
    discover_sources,
    read_sources,
    reader_for,
    setup_data_context,
)
from runtime.robot.labeling.stages import LabelingConfig, add_labeling_stages

INGEST_FORMATS = ("mcap", "rosbag", "hdf5")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_apps.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="directory of robot logs")
    parser.add_argument("--dst", required=True, help="output LeRobot v3.0 dataset directory")
    parser.add_argument("--topic-map", default=None, help="YAML/JSON topic mapping for MCAP and bags")
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--task", default=None)
    parser.add_argument("--no-label", action="store_true", help="skip the labeling stages")
    parser.add_argument("--num-cpus", type=int, default=None)
    return parser.parse_args(argv)


def run(args: argparse.Namespace):
    started_s = time.perf_counter()
    connect_cluster(args.num_cpus, pipeline="ingest")
    setup_data_context()
    datasets = []
    for src_format in INGEST_FORMATS:
        sources = discover_sources(args.src, src_format)
        if not sources:
            continue
        reader = reader_for(src_format, topic_mapping=args.topic_map, fps=args.fps, task=args.task)
        dataset = read_sources(sources, reader, dst=args.dst, name=f"Read{src_format.upper()}")
        if dataset is not None:
            datasets.append(dataset)
    dataset = datasets[0].union(*datasets[1:]) if datasets else None
    if dataset is not None and not args.no_label:
        dataset = add_labeling_stages(dataset, LabelingConfig(fps=args.fps or 10.0))
    return commit_and_finalize(dataset, dst=args.dst, pipeline="ingest", started_s=started_s, fps=args.fps)


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    print(summary.render(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
