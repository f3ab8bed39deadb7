"""Score labeler output against simulator ground truth: success accuracy and phase-boundary F1.

Both come from the same `labels` column: labels whose source is `sim.ground_truth` are the
reference, labels from any other source are predictions. Counts pool over all episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from runtime.robot import schema
from runtime.robot.sim.ground_truth import boundary_f1, f1_from_counts, phase_boundaries
from runtime.robot.sim.recording import GROUND_TRUTH_SOURCE


@dataclass(kw_only=True, slots=True)
class LabelQuality:
    num_episodes: int = 0
    num_success_labeled: int = 0
    num_success_correct: int = 0
    boundary_true_positives: int = 0
    boundary_predicted: int = 0
    boundary_truth: int = 0
    tolerance_frames: int = 2

    @property
    def success_accuracy(self) -> float:
        return self.num_success_correct / self.num_success_labeled if self.num_success_labeled else float("nan")

    @property
    def phase_f1(self) -> float:
        return f1_from_counts(self.boundary_true_positives, self.boundary_predicted, self.boundary_truth)

    def add(self, other: LabelQuality) -> None:
        for name in ("num_episodes", "num_success_labeled", "num_success_correct", "boundary_true_positives",
                     "boundary_predicted", "boundary_truth"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict:
        return {"num_episodes": self.num_episodes, "success_accuracy": self.success_accuracy,
                "phase_f1": self.phase_f1, "tolerance_frames": self.tolerance_frames,
                "boundaries": [self.boundary_true_positives, self.boundary_predicted, self.boundary_truth]}


def score_episode(episode: pa.Table, tolerance_frames: int = 2) -> LabelQuality:
    """One episode's frame rows (in frame order) with ground-truth and predicted labels."""
    rows = [schema.labels_from_json(text) for text in episode.column(schema.LABELS).to_pylist()]
    quality = LabelQuality(num_episodes=1, tolerance_frames=tolerance_frames)
    truth_success = _episode_value(rows, "success", truth=True)
    predicted_success = _episode_value(rows, "success", truth=False)
    if truth_success is not None and predicted_success is not None:
        quality.num_success_labeled = 1
        quality.num_success_correct = int(bool(truth_success) == bool(predicted_success))
    truth_phases = [_frame_value(labels, "phase", truth=True) for labels in rows]
    predicted_phases = [_frame_value(labels, "phase", truth=False) for labels in rows]
    if None not in truth_phases and None not in predicted_phases:
        counts = boundary_f1(phase_boundaries(predicted_phases), phase_boundaries(truth_phases), tolerance_frames)
        quality.boundary_true_positives, quality.boundary_predicted, quality.boundary_truth = counts
    return quality


def score_episodes(episodes, tolerance_frames: int = 2) -> LabelQuality:
    total = LabelQuality(tolerance_frames=tolerance_frames)
    for episode in episodes:
        total.add(score_episode(episode, tolerance_frames))
    return total


def _is_truth(label: schema.Label) -> bool:
    return label.source == GROUND_TRUTH_SOURCE


def _episode_value(rows: list[list[schema.Label]], name: str, truth: bool):
    for label in rows[0] if rows else []:
        if label.name == name and label.scope == "episode" and _is_truth(label) == truth:
            return label.value
    return None


def _frame_value(labels: list[schema.Label], name: str, truth: bool):
    for label in labels:
        if label.name == name and label.scope == "frame" and _is_truth(label) == truth:
            return label.value
    return None
