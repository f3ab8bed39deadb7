"""Offscreen RGB-D cameras for MuJoCo scenes: backend choice (EGL, then OSMesa), intrinsics, extrinsics.

MuJoCo picks its GL backend from MUJOCO_GL when `mujoco` is first imported, so `select_gl_backend()`
must run before that import; it leaves a user's MUJOCO_GL alone. Without EGL or OSMesa, rendering is
switched off cleanly (`rendering_available()` is False) and episodes carry state only.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_BACKEND_LIBRARIES = {"egl": "EGL", "osmesa": "OSMesa"}
_DISABLED = {"disable", "disabled", "off", "false", "0"}
_probe: dict[str, bool] = {}


def select_gl_backend() -> str | None:
    """Set MUJOCO_GL to the first offscreen backend whose library exists; None when none does."""
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if chosen:
        return None if chosen in _DISABLED else chosen
    for backend, library in _BACKEND_LIBRARIES.items():
        if ctypes.util.find_library(library):
            os.environ["MUJOCO_GL"] = backend
            return backend
    os.environ["MUJOCO_GL"] = "disable"
    logger.warning("neither EGL nor OSMesa found; MuJoCo rendering is disabled (state-only episodes)")
    return None


def rendering_available() -> bool:
    """True when an offscreen GL context can really be created here (probed once per process)."""
    if "ok" not in _probe:
        backend = select_gl_backend()
        if backend is None:
            _probe["ok"] = False
        else:
            import mujoco

            try:
                context = mujoco.GLContext(8, 8)
                context.make_current()
                context.free()
                _probe["ok"] = True
            except Exception as error:  # any GL failure means: no rendering on this machine
                logger.warning("MuJoCo %s context failed (%s); rendering disabled", backend, error)
                _probe["ok"] = False
    return _probe["ok"]


@dataclass(kw_only=True, slots=True)
class CameraParams:
    """Pinhole intrinsics and the camera-to-world pose in the OpenCV convention (z forward, y down)."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    cam_to_world: np.ndarray  # (4, 4)

    def intrinsics(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "cam_to_world": self.cam_to_world.tolist(),
        }


def camera_params(model, data, name: str, width: int, height: int) -> CameraParams:
    import mujoco

    camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
    if camera_id < 0:
        raise ValueError(f"sim.cameras: no camera named {name!r} in the scene")
    fovy_rad = np.deg2rad(model.cam_fovy[camera_id])
    focal = 0.5 * height / np.tan(0.5 * fovy_rad)
    # MuJoCo cameras look down -z with +y up; OpenCV looks down +z with +y down.
    rotation = data.cam_xmat[camera_id].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = data.cam_xpos[camera_id]
    return CameraParams(
        name=name, width=width, height=height, fx=focal, fy=focal, cx=(width - 1) / 2, cy=(height - 1) / 2, cam_to_world=pose
    )


class RGBDCamera:
    """Renders RGB (uint8 HxWx3) and metric depth (float32 HxW, 0 = no return) from named cameras.

    One camera can render many environments built from the same scene: it keeps its own copy of
    the model and takes each environment's site positions (the goal marker) before drawing. A GL
    context costs ~125 MB, so a SimWorker shares one across all its environments.
    """

    def __init__(self, model, width: int, height: int, max_depth_m: float = 3.0):
        import copy

        import mujoco

        self._mujoco = mujoco
        self._model = copy.deepcopy(model)
        self._renderer = mujoco.Renderer(self._model, height=height, width=width)
        self.width = width
        self.height = height
        self.max_depth_m = max_depth_m

    def render(self, model, data, camera: str, rgb: bool = True, depth: bool = True) -> tuple:
        self._model.site_pos[:] = model.site_pos
        color = distance = None
        if rgb:
            self._renderer.disable_depth_rendering()
            self._renderer.update_scene(data, camera=camera)
            color = self._renderer.render().copy()
        if depth:
            self._renderer.enable_depth_rendering()
            self._renderer.update_scene(data, camera=camera)
            distance = self._renderer.render().astype(np.float32)
            distance[distance > self.max_depth_m] = 0.0
            self._renderer.disable_depth_rendering()
        return color, distance

    def close(self) -> None:
        self._renderer.close()
