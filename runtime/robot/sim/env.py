"""Tabletop pick-and-place in MuJoCo: gymnasium-robotics' FetchPickAndPlace with RGB-D cameras and ground truth.

One `PickPlaceSim` is one robot: `reset(seed)` places block and goal (the seed fixes the start state, so
a failed start can be replayed), `step(action)` advances 40 ms, and each `SimFrame` carries the policy
state, the rendered cameras and the simulator's ground truth (grasp contacts, phase, success).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.robot.sim.camera import (
    CameraParams,
    RGBDCamera,
    camera_params,
    rendering_available,
    select_gl_backend,
)
from runtime.robot.sim.ground_truth import PHASES, GroundTruth, PhaseTracker

STATE_DIM = 28  # Fetch observation (25) + desired goal (3)
ACTION_DIM = 4  # end-effector dx, dy, dz (x 5 cm) and gripper open (+1) / close (-1)
FPS = 25  # Fetch applies each action for 20 x 2 ms substeps
STATE_NAMES = (
    [f"grip_pos.{a}" for a in "xyz"]
    + [f"object_pos.{a}" for a in "xyz"]
    + [f"object_rel_pos.{a}" for a in "xyz"]
    + ["finger_r", "finger_l"]
    + [f"object_rot.{a}" for a in "xyz"]
    + [f"object_velp.{a}" for a in "xyz"]
    + [f"object_velr.{a}" for a in "xyz"]
    + [f"grip_velp.{a}" for a in "xyz"]
    + ["finger_r_vel", "finger_l_vel"]
    + [f"goal.{a}" for a in "xyz"]
)
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
TASK = "pick up the block and place it at the target"


@dataclass(kw_only=True, slots=True)
class SimConfig:
    """The simulated robot cell: which task, how long an episode is, what the cameras see."""

    env_id: str = "FetchPickAndPlace-v4"
    max_episode_steps: int = 50
    image_size: int = 64
    cameras: tuple[str, ...] = ("external_camera_0",)
    render: bool | None = None  # None: render when an offscreen GL backend works here
    rgb: bool = True
    depth: bool = True
    max_depth_m: float = 3.0
    num_settle_steps: int = 3  # open the gripper before the episode's first frame

    def __post_init__(self) -> None:
        if self.max_episode_steps < 1:
            raise ValueError(f"sim.max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if self.image_size < 8:
            raise ValueError(f"sim.image_size must be >= 8, got {self.image_size}")
        if self.max_depth_m <= 0:
            raise ValueError(f"sim.max_depth_m must be > 0, got {self.max_depth_m}")


@dataclass(kw_only=True, slots=True)
class SimFrame:
    """What the robot saw at one step, and what the simulator knows to be true."""

    state: np.ndarray  # (STATE_DIM,) float32
    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> uint8 (H, W, 3)
    depths: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> float32 metres (H, W)
    truth: GroundTruth


class PickPlaceSim:
    """One simulated robot; not thread-safe (one per actor or per loop)."""

    def __init__(self, config: SimConfig | None = None, camera: RGBDCamera | None = None):
        """`camera`: a renderer shared with other sims of the same scene (see RGBDCamera); else one is
        made on first use."""
        self.config = config or SimConfig()
        select_gl_backend()  # before mujoco is imported
        import gymnasium as gym
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)
        self._env = gym.make(
            self.config.env_id, max_episode_steps=self.config.max_episode_steps + self.config.num_settle_steps
        )
        self._raw = self._env.unwrapped
        self.rendering = bool(self.config.render is not False and rendering_available())
        if self.config.render and not self.rendering:
            raise ValueError("sim.render=True but no offscreen GL backend (EGL/OSMesa) works here")
        self._camera = camera if self.rendering else None
        self._owns_camera = False
        import mujoco

        geom = lambda name: mujoco.mj_name2id(self._raw.model, mujoco.mjtObj.mjOBJ_GEOM, name)  # noqa: E731
        self._object_geom = geom("object0")
        self._finger_geoms = (geom("robot0:r_gripper_finger_link"), geom("robot0:l_gripper_finger_link"))
        self._observation: dict | None = None
        self._phases = PhaseTracker()
        self.seed: int | None = None
        self.num_steps = 0
        self.capture = self.rendering  # render cameras into frames (switch off for state-only rollouts)

    @property
    def goal(self) -> np.ndarray:
        return np.asarray(self._raw.goal, dtype=np.float64).copy()

    @property
    def table_height_m(self) -> float:
        return float(self._raw.height_offset)

    def camera_params(self) -> dict[str, CameraParams]:
        size = self.config.image_size
        return {name: camera_params(self._raw.model, self._raw.data, name, size, size) for name in self.config.cameras}

    def reset(self, seed: int) -> SimFrame:
        self.seed = int(seed)
        self._observation, _ = self._env.reset(seed=self.seed)
        self._raw._render_callback()  # moves the visible target marker onto this episode's goal
        # Fetch resets with its fingers shut; an episode starts from the ready pose, gripper open.
        for _ in range(self.config.num_settle_steps):
            self._observation, _, _, _, _ = self._env.step(np.array([0.0, 0.0, 0.0, 1.0], np.float32))
        self._phases = PhaseTracker()
        self.num_steps = 0
        return self._frame()

    def step(self, action: np.ndarray) -> SimFrame:
        if self._observation is None:
            raise RuntimeError("PickPlaceSim.step called before reset")
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(ACTION_DIM), -1.0, 1.0)
        self._observation, _, _, _, _ = self._env.step(action)
        self.num_steps += 1
        return self._frame()

    @property
    def done(self) -> bool:
        return self.num_steps >= self.config.max_episode_steps

    def _grasp_contacts(self) -> tuple[bool, bool]:
        data = self._raw.data
        touching = [False, False]
        for index in range(data.ncon):
            contact = data.contact[index]
            pair = (contact.geom1, contact.geom2)
            if self._object_geom not in pair:
                continue
            for finger, geom in enumerate(self._finger_geoms):
                if geom in pair:
                    touching[finger] = True
        return touching[0], touching[1]

    def _frame(self) -> SimFrame:
        observation = self._observation
        state = np.concatenate([observation["observation"], observation["desired_goal"]]).astype(np.float32)
        object_pos = observation["achieved_goal"]
        right, left = self._grasp_contacts()
        lifted = bool(object_pos[2] > self.table_height_m + 0.01)
        truth = GroundTruth(
            success=bool(np.linalg.norm(object_pos - observation["desired_goal"]) < self._raw.distance_threshold),
            grasped=right and left,
            lifted=lifted,
            gripper_to_object_m=float(np.linalg.norm(observation["observation"][6:9])),
            object_to_goal_m=float(np.linalg.norm(object_pos - observation["desired_goal"])),
        )
        truth.phase = self._phases.update(truth.grasped, object_pos)
        frame = SimFrame(state=state, truth=truth)
        if self.rendering and self.capture:
            camera = self.camera()
            for name in self.config.cameras:
                color, depth = camera.render(self._raw.model, self._raw.data, name, rgb=self.config.rgb,
                                             depth=self.config.depth)
                if color is not None:
                    frame.images[name] = color
                if depth is not None:
                    frame.depths[name] = depth
        return frame

    def camera(self) -> RGBDCamera:
        if self._camera is None:
            if not self.rendering:
                raise RuntimeError("this sim has no offscreen rendering backend")
            size = self.config.image_size
            self._camera = RGBDCamera(self._raw.model, size, size, self.config.max_depth_m)
            self._owns_camera = True
        return self._camera

    def close(self) -> None:
        if self._camera is not None and self._owns_camera:
            self._camera.close()
        self._camera = None
        self._env.close()


__all__ = ["ACTION_DIM", "ACTION_NAMES", "FPS", "PHASES", "STATE_DIM", "STATE_NAMES", "TASK", "PickPlaceSim", "SimConfig", "SimFrame"]
