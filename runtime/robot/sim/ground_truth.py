"""Simulator ground truth for pick-and-place: per-frame phase and success, and boundary scoring.

Phases come from physics (finger contacts, block motion), not from the commanded actions or the
gripper signal, so labelers that see only the recorded episode can be scored against them. The
names follow the phase labeler's vocabulary: `approach` (block not yet held), `grasp` (both fingers
on the block, block not yet carried), `transport` (held and moved > 1 cm from where it was
grasped) and `release` (contact lost after a grasp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHASES = ("approach", "grasp", "transport", "release")
CARRIED_M = 0.01


@dataclass(kw_only=True, slots=True)
class GroundTruth:
    success: bool
    grasped: bool
    lifted: bool
    gripper_to_object_m: float
    object_to_goal_m: float
    phase: str = "approach"

    def to_dict(self) -> dict:
        return {
            "success": self.success,
            "grasped": self.grasped,
            "lifted": self.lifted,
            "gripper_to_object_m": self.gripper_to_object_m,
            "object_to_goal_m": self.object_to_goal_m,
            "phase": self.phase,
        }


class PhaseTracker:
    """Per-episode memory the phase needs: where the block was when the fingers first closed on it."""

    def __init__(self) -> None:
        self.grasp_position: np.ndarray | None = None
        self.ever_grasped = False

    def update(self, grasped: bool, object_position: np.ndarray) -> str:
        if grasped:
            if self.grasp_position is None:
                self.grasp_position = np.array(object_position, dtype=np.float64)
            self.ever_grasped = True
            moved = float(np.linalg.norm(object_position - self.grasp_position))
            return "transport" if moved > CARRIED_M else "grasp"
        self.grasp_position = None  # a new grasp starts over
        return "release" if self.ever_grasped else "approach"


def phase_boundaries(phases: list[str]) -> list[int]:
    """Frame indices where a new phase starts (frame 0 is not a boundary)."""
    return [index for index in range(1, len(phases)) if phases[index] != phases[index - 1]]


def boundary_f1(predicted: list[int], truth: list[int], tolerance_frames: int = 2) -> tuple[int, int, int]:
    """Greedy one-to-one matching within +-tolerance; returns (true_pos, num_predicted, num_truth).

    Counts rather than a ratio, so callers can pool them over many episodes before dividing.
    """
    unmatched = sorted(truth)
    true_positives = 0
    for frame in sorted(predicted):
        best = None
        for candidate in unmatched:
            if abs(candidate - frame) <= tolerance_frames and (best is None or abs(candidate - frame) < abs(best - frame)):
                best = candidate
        if best is not None:
            unmatched.remove(best)
            true_positives += 1
    return true_positives, len(predicted), len(truth)


def f1_from_counts(true_positives: int, num_predicted: int, num_truth: int) -> float:
    if num_predicted == 0 and num_truth == 0:
        return 1.0
    precision = true_positives / num_predicted if num_predicted else 0.0
    recall = true_positives / num_truth if num_truth else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
