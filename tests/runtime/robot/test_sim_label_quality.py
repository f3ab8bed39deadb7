"""Boundary F1 and label scoring against simulator ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.robot import schema
from runtime.robot.sim.ground_truth import boundary_f1, f1_from_counts, phase_boundaries
from runtime.robot.sim.label_quality import score_episode
from runtime.robot.sim.recording import GROUND_TRUTH_SOURCE


def test_boundaries_and_tolerant_matching():
    assert phase_boundaries(["a", "a", "b", "b", "c"]) == [2, 4]
    assert boundary_f1([3, 10], [2, 13], tolerance_frames=2) == (1, 2, 2)
    assert boundary_f1([2, 3], [2], tolerance_frames=2) == (1, 2, 1)  # one truth matches once
    assert f1_from_counts(1, 2, 2) == pytest.approx(0.5)
    assert f1_from_counts(0, 0, 0) == 1.0


def _episode(truth_phases, predicted_phases, truth_success, predicted_success):
    rows = []
    for index, (truth, predicted) in enumerate(zip(truth_phases, predicted_phases)):
        labels = [
            schema.Label(name="phase", value=truth, source=GROUND_TRUTH_SOURCE, version="1"),
            schema.Label(name="success", value=truth_success, source=GROUND_TRUTH_SOURCE, version="1",
                         scope="episode"),
            schema.Label(name="phase", value=predicted, source="labeler", version="1"),
            schema.Label(name="success", value=predicted_success, source="labeler", version="1", scope="episode"),
        ]
        rows.append({schema.EPISODE_INDEX: 0, schema.FRAME_INDEX: index, schema.TIMESTAMP: index / 25,
                     schema.STATE: np.zeros(3, np.float32), schema.ACTION: np.zeros(2, np.float32),
                     schema.LABELS: schema.labels_to_json(labels), schema.EPISODE_SOURCE: "e0"})
    return schema.frames_to_table(rows)


def test_score_episode_counts_success_and_boundaries():
    truth = ["approach"] * 5 + ["grasp"] * 2 + ["transport"] * 5
    shifted = ["approach"] * 6 + ["grasp"] * 4 + ["transport"] * 2  # boundaries 6 (ok) and 10 (3 late)
    quality = score_episode(_episode(truth, shifted, True, True))
    assert quality.success_accuracy == 1.0
    assert (quality.boundary_true_positives, quality.boundary_predicted, quality.boundary_truth) == (1, 2, 2)
    assert score_episode(_episode(truth, truth, True, False)).success_accuracy == 0.0
    assert score_episode(_episode(truth, truth, True, True)).phase_f1 == 1.0
