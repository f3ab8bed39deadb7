"""Label robot episodes (success, phases, language instructions, human JSONL) into a new LeRobot v3 dataset.

    python -m data_apps.label --src LEROBOT_DIR --dst DIR [--instructions auto|template|llm|none]
        [--success-rule auto|flag|reward|model] [--success-model model.pt] [--no-phases]
        [--human-labels labels.jsonl] [--export-labels out.jsonl]
    ray job submit --working-dir . -- python -m data_apps.label --src data/pick --dst data/pick_labeled

Each labeler is a Ray Data actor-pool stage over whole episodes; the labels (with source and
version) land in the `labels` column. Episodes are committed one by one, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_apps.common import (
    commit_and_finalize,
    connect_cluster,
    discover_sources,
    read_sources,
    setup_data_context,
)
from runtime.robot.formats import lerobot_read
from runtime.robot.labeling.human import export_labels
from runtime.robot.labeling.stages import LabelingConfig, add_labeling_stages
from runtime.robot.manifest import EpisodeManifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_apps.label", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="LeRobot v3.0 dataset to label")
    parser.add_argument("--dst", required=True, help="labeled LeRobot v3.0 dataset to write")
    parser.add_argument("--success-rule", default="auto", choices=("auto", "flag", "reward", "model", "none"))
    parser.add_argument("--success-model", default=None, help="TorchScript classifier: final state -> logit")
    parser.add_argument("--no-phases", action="store_true")
    parser.add_argument("--gripper-index", type=int, default=-1)
    parser.add_argument("--ee-indices", default="0,1,2", help="state indices of the end-effector position, or ''")
    parser.add_argument("--closed-below", type=float, default=0.02)
    parser.add_argument("--instructions", default="auto", choices=("auto", "template", "llm", "none"))
    parser.add_argument("--llm-app", default="llm", help="Serve application name of the LLM")
    parser.add_argument("--human-labels", default=None, help="JSONL of human labels to merge in")
    parser.add_argument("--export-labels", default=None, help="write every label to this JSONL file")
    parser.add_argument("--concurrency", type=int, default=1, help="actors per labeling stage")
    parser.add_argument("--num-cpus", type=int, default=None)
    return parser.parse_args(argv)


def labeling_config(args: argparse.Namespace, fps: float) -> LabelingConfig:
    ee_indices = tuple(int(i) for i in args.ee_indices.split(",")) if args.ee_indices else None
    return LabelingConfig(
        success_rule=None if args.success_rule == "none" else args.success_rule,
        success_model_path=args.success_model, phases=not args.no_phases, gripper_index=args.gripper_index,
        ee_indices=ee_indices, closed_below=args.closed_below, fps=fps,
        instructions=None if args.instructions == "none" else args.instructions, llm_app_name=args.llm_app,
        human_labels_path=args.human_labels, concurrency=args.concurrency,
    )


def run(args: argparse.Namespace):
    started_s = time.perf_counter()
    connect_cluster(args.num_cpus, pipeline="label")
    setup_data_context()
    fps = lerobot_read.LeRobotDataset(args.src).fps
    sources = discover_sources(args.src, "lerobot")
    dataset = read_sources(sources, lerobot_read.read_episodes, dst=args.dst, name="ReadLeRobot")
    if dataset is not None:
        dataset = add_labeling_stages(dataset, labeling_config(args, fps))
    summary = commit_and_finalize(dataset, dst=args.dst, pipeline="label", started_s=started_s, fps=fps)
    if args.export_labels:
        tables = (table for _, table in EpisodeManifest(args.dst).iter_committed())
        count = export_labels(tables, Path(args.export_labels))
        print(f"exported {count} labels to {args.export_labels}")
    return summary


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    print(summary.render(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
