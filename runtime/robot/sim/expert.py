"""Scripted pick-and-place expert: a Markov controller on the policy state (no hidden memory).

Because its action depends only on the current state vector, it can label any state the learner
visits (DAgger) and it recovers by itself from a dropped or pushed block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.robot.sim.env import ACTION_DIM


@dataclass(kw_only=True, slots=True)
class ExpertConfig:
    gain: float = 12.0  # action units per metre of error (1 unit = 5 cm per step in Fetch)
    hover_m: float = 0.05  # approach height above the block before descending
    align_xy_m: float = 0.01  # horizontal error below which the gripper descends
    close_radius_m: float = 0.012  # gripper-to-block distance at which the fingers close
    held_radius_m: float = 0.03  # block still between the fingers while carried
    held_width_m: float = 0.07  # finger opening below which the block counts as held

    def __post_init__(self) -> None:
        if self.gain <= 0:
            raise ValueError(f"expert.gain must be > 0, got {self.gain}")


class ScriptedExpert:
    """`act(state) -> action`; one instance may serve many environments (it keeps no state)."""

    def __init__(self, config: ExpertConfig | None = None):
        self.config = config or ExpertConfig()

    def act(self, state: np.ndarray) -> np.ndarray:
        config = self.config
        state = np.asarray(state, dtype=np.float64)
        grip, block, relative = state[0:3], state[3:6], state[6:9]
        finger_width = state[9] + state[10]
        goal = state[25:28]
        distance = float(np.linalg.norm(relative))
        action = np.zeros(ACTION_DIM)
        if distance < config.held_radius_m and finger_width < config.held_width_m:
            action[:3] = config.gain * (goal - block)  # carry: move so the block reaches the goal
            action[3] = -1.0
        elif distance < config.close_radius_m:
            action[3] = -1.0  # at the block: hold still and close
        else:
            above = block + np.array([0.0, 0.0, config.hover_m])
            horizontal_error = float(np.linalg.norm(block[:2] - grip[:2]))
            if horizontal_error > config.align_xy_m and grip[2] < above[2] - 0.01:
                # Too low to travel sideways without knocking the block: rise first.
                target = np.array([grip[0], grip[1], above[2]])
            elif horizontal_error > config.align_xy_m:
                target = above
            else:
                target = block
            action[:3] = config.gain * (target - grip)
            action[3] = 1.0
        return np.clip(action, -1.0, 1.0).astype(np.float32)
