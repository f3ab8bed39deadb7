"""Wire the labeling stages onto a Ray Dataset of whole-episode blocks."""

from __future__ import annotations

from dataclasses import dataclass

import ray.data

from runtime.robot.labeling.human import HumanLabelImporter
from runtime.robot.labeling.language import InstructionLabeler
from runtime.robot.labeling.phases import PhaseSegmenter
from runtime.robot.labeling.success import SuccessLabeler


@dataclass(kw_only=True, slots=True)
class LabelingConfig:
    success_rule: str | None = "auto"  # None: no success stage
    success_model_path: str | None = None
    phases: bool = True
    gripper_index: int = -1
    ee_indices: tuple[int, ...] | None = (0, 1, 2)
    closed_below: float = 0.02
    fps: float = 10.0
    instructions: str | None = "auto"  # "template" | "llm" | "auto" | None
    llm_app_name: str = "llm"
    human_labels_path: str | None = None
    concurrency: int = 1  # actors per stage
    num_cpus_per_actor: float = 0.25  # rule stages are light; keep CPUs for the readers


def add_labeling_stages(dataset: ray.data.Dataset, config: LabelingConfig) -> ray.data.Dataset:
    """Each stage is an actor pool of `config.concurrency` actors (its model or handle is set up once
    per actor) mapping whole blocks."""
    common = {"batch_size": None, "batch_format": "pyarrow", "num_cpus": config.num_cpus_per_actor,
              "compute": ray.data.ActorPoolStrategy(size=config.concurrency)}
    if config.success_rule is not None:
        dataset = dataset.map_batches(SuccessLabeler, fn_constructor_kwargs={
            "rule": config.success_rule, "model_path": config.success_model_path}, **common)
    if config.phases:
        dataset = dataset.map_batches(PhaseSegmenter, fn_constructor_kwargs={
            "gripper_index": config.gripper_index, "ee_indices": config.ee_indices,
            "closed_below": config.closed_below, "fps": config.fps}, **common)
    if config.instructions is not None:
        dataset = dataset.map_batches(InstructionLabeler, fn_constructor_kwargs={
            "mode": config.instructions, "app_name": config.llm_app_name}, **common)
    if config.human_labels_path is not None:
        dataset = dataset.map_batches(HumanLabelImporter, fn_constructor_args=(config.human_labels_path,), **common)
    return dataset
