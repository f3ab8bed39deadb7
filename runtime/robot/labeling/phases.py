"""Subtask phase segmentation of pick-and-place episodes from gripper state and end-effector speed.

approach (gripper open, before the first grasp) -> grasp (closed, end effector still slow) ->
transport (closed, moving) -> release (open again, still slow) -> retreat. Frame-scope `phase`
labels plus an episode-scope `phase_segments` label [[phase, first_frame, last_frame], ...].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from runtime.robot import schema as S

PHASES = ("approach", "grasp", "transport", "release", "retreat")
VERSION = "1"


def segment_phases(
    gripper: np.ndarray, ee_position: np.ndarray | None, *, fps: float, closed_below: float, still_speed: float
) -> list[str]:
    """One phase name per frame."""
    num_frames = len(gripper)
    closed = gripper < closed_below
    if ee_position is None:
        speed = np.zeros(num_frames)
    else:
        step = np.linalg.norm(np.diff(ee_position, axis=0), axis=1) * fps
        speed = np.concatenate([step[:1], step]) if num_frames > 1 else np.zeros(num_frames)
    phases = ["approach"] * num_frames
    if not closed.any():
        return phases
    first, last = int(np.argmax(closed)), int(num_frames - 1 - np.argmax(closed[::-1]))
    _still_then_moving(phases, speed, first, last + 1, "grasp", "transport", still_speed)
    _still_then_moving(phases, speed, last + 1, num_frames, "release", "retreat", still_speed)
    return phases


def _still_then_moving(phases: list[str], speed: np.ndarray, start: int, stop: int, still: str, moving: str,
                       still_speed: float) -> None:
    """Frames [start, stop): `still` for the first frame and every slow one right after, then `moving`."""
    index = start
    while index < stop and (index == start or speed[index] < still_speed):
        phases[index] = still
        index += 1
    for rest in range(index, stop):
        phases[rest] = moving


def segments(phases: Sequence[str]) -> list[list]:
    out: list[list] = []
    for index, phase in enumerate(phases):
        if out and out[-1][0] == phase:
            out[-1][2] = index
        else:
            out.append([phase, index, index])
    return out


class PhaseSegmenter:
    """Ray Data stage: `gripper_index` picks the gripper opening out of observation.state,
    `ee_indices` the end-effector position (None: speed unknown, so grasp/release last one frame)."""

    def __init__(self, *, gripper_index: int = -1, ee_indices: Sequence[int] | None = (0, 1, 2),
                 closed_below: float = 0.02, still_speed: float = 0.05, fps: float = 10.0):
        if fps <= 0:
            raise ValueError(f"phases.fps must be > 0, got {fps}")
        self.gripper_index = gripper_index
        self.ee_indices = list(ee_indices) if ee_indices is not None else None
        self.closed_below = closed_below
        self.still_speed = still_speed
        self.fps = fps
        self.source = "strata.phases.gripper_velocity"

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for episode in S.episode_tables(batch):
            state = np.stack(episode.column(S.STATE).to_numpy(zero_copy_only=False)).astype(np.float64)
            phases = segment_phases(
                state[:, self.gripper_index], state[:, self.ee_indices] if self.ee_indices else None,
                fps=self.fps, closed_below=self.closed_below, still_speed=self.still_speed)
            episode_label = S.Label(name="phase_segments", value=segments(phases), source=self.source,
                                    version=VERSION, scope="episode")
            labels = [[S.Label(name="phase", value=phase, source=self.source, version=VERSION), episode_label]
                      for phase in phases]
            out.append(S.with_labels(episode, labels))
        return pa.concat_tables(out, promote_options="permissive") if out else batch
