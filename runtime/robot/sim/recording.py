"""Turn a rolled-out sim episode into frame rows of runtime.robot.schema, ground truth included.

Row t holds the observation at step t and the action taken there; `next.success` / `next.done` hold
what followed it. The simulator's truth travels as labels with source `sim.ground_truth` (frame
`phase`, episode `success`), the reference the labelers are scored against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from runtime.robot import schema
from runtime.robot.sim.env import FPS, TASK, SimFrame

GROUND_TRUTH_SOURCE = "sim.ground_truth"
GROUND_TRUTH_VERSION = "1"


@dataclass(kw_only=True, slots=True)
class Episode:
    """One rollout: frames[t] was observed, actions[t] is the recorded (label) action at frames[t]."""

    seed: int
    driver: str  # "expert", "policy" or "dagger" (policy drives, expert labels)
    frames: list[SimFrame] = field(default_factory=list)  # len(actions) + 1 observations
    actions: list[np.ndarray] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return bool(self.frames[-1].truth.success)

    @property
    def phases(self) -> list[str]:
        return [frame.truth.phase for frame in self.frames[: len(self.actions)]]


def episode_source(tag: str, episode: Episode) -> str:
    """Stable, sortable episode key: rounds and seeds sort in order in the committed dataset."""
    return f"sim://{tag}/{episode.driver}/seed-{episode.seed:07d}"


def episode_table(episode: Episode, *, source: str, episode_index: int = 0) -> pa.Table:
    num_frames = len(episode.actions)
    if num_frames == 0:
        raise ValueError(f"episode seed={episode.seed} has no actions")
    success = schema.Label(
        name="success", value=episode.success, source=GROUND_TRUTH_SOURCE, version=GROUND_TRUTH_VERSION,
        scope="episode",
    )
    rows = []
    for index in range(num_frames):
        frame, after = episode.frames[index], episode.frames[index + 1]
        row = {
            schema.EPISODE_INDEX: episode_index,
            schema.FRAME_INDEX: index,
            schema.TIMESTAMP: index / FPS,
            schema.TASK: TASK,
            schema.STATE: frame.state,
            schema.ACTION: np.asarray(episode.actions[index], np.float32),
            schema.DONE: index == num_frames - 1,
            schema.SUCCESS: bool(after.truth.success),
            schema.LABELS: schema.labels_to_json([
                schema.Label(name="phase", value=frame.truth.phase, source=GROUND_TRUTH_SOURCE,
                             version=GROUND_TRUTH_VERSION),
                success,
            ]),
            schema.EPISODE_SOURCE: source,
        }
        for camera, image in frame.images.items():
            row[schema.image_key(camera)] = schema.encode_image(image)
        for camera, depth in frame.depths.items():
            row[schema.depth_key(camera)] = schema.encode_depth(depth)
        rows.append(row)
    return schema.frames_to_table(rows)
