"""Depth image -> point cloud with pinhole intrinsics (OpenCV camera frame: x right, y down, z forward)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(kw_only=True, slots=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels: u = fx * x / z + cx, v = fy * y / z + cy."""

    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if not self.fx > 0:
            raise ValueError(f"intrinsics.fx must be > 0, got {self.fx}")
        if not self.fy > 0:
            raise ValueError(f"intrinsics.fy must be > 0, got {self.fy}")

    @classmethod
    def from_fov(cls, *, width: int, height: int, fov_y_deg: float) -> CameraIntrinsics:
        """Square pixels, principal point at the image centre (what MuJoCo's cameras render)."""
        if not 0 < fov_y_deg < 180:
            raise ValueError(f"fov_y_deg must be in (0, 180), got {fov_y_deg}")
        focal = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
        return cls(fx=focal, fy=focal, cx=(width - 1) / 2, cy=(height - 1) / 2)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)


def _pixel_rays(height: int, width: int, intrinsics: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (u - cx) / fx and (v - cy) / fy as float32 (H * W,) vectors, row-major."""
    ray_x = ((np.arange(width, dtype=np.float64) - intrinsics.cx) / intrinsics.fx).astype(np.float32)
    ray_y = ((np.arange(height, dtype=np.float64) - intrinsics.cy) / intrinsics.fy).astype(np.float32)
    return np.tile(ray_x, height), np.repeat(ray_y, width)


def depth_to_points_batch(
    depths: np.ndarray,
    intrinsics: CameraIntrinsics,
    *,
    depth_scale: float = 1.0,
    min_depth: float = 0.0,
    max_depth: float = math.inf,
    colors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W) depth images -> ((sum N_i, 3 or 6) float32 points, (B,) int64 counts).

    z = depth * depth_scale (use 0.001 for millimetre images); pixels with z <= min_depth,
    z > max_depth or non-finite z (0 = no return) are dropped. Points are in pixel row-major order.
    colors: optional (B, H, W, 3) RGB appended as three extra channels (0..255 floats).
    """
    if depths.ndim != 3:
        raise ValueError(f"depths must have shape (B, H, W), got {depths.shape}")
    if depth_scale <= 0:
        raise ValueError(f"depth_scale must be > 0, got {depth_scale}")
    num_frames, height, width = depths.shape
    ray_x, ray_y = _pixel_rays(height, width, intrinsics)
    z = depths.reshape(num_frames, height * width).astype(np.float32, copy=False)
    if depth_scale != 1.0:
        z = z * np.float32(depth_scale)
    valid = z > np.float32(min_depth)
    if math.isfinite(max_depth):
        valid &= z <= np.float32(max_depth)
    else:
        valid &= np.isfinite(z)
    counts = valid.sum(axis=1, dtype=np.int64)
    pixel = np.flatnonzero(valid)  # index into (B * H * W)
    z_valid = z.reshape(-1)[pixel]
    pixel_in_frame = pixel % (height * width)
    num_channels = 3 if colors is None else 6
    points = np.empty((len(pixel), num_channels), dtype=np.float32)
    np.multiply(z_valid, ray_x[pixel_in_frame], out=points[:, 0])
    np.multiply(z_valid, ray_y[pixel_in_frame], out=points[:, 1])
    points[:, 2] = z_valid
    if colors is not None:
        if colors.shape[:3] != depths.shape or colors.shape[-1] != 3:
            raise ValueError(f"colors must have shape {depths.shape + (3,)}, got {colors.shape}")
        points[:, 3:] = colors.reshape(-1, 3)[pixel]
    return points, counts


def depth_to_points(
    depth: np.ndarray,
    intrinsics: CameraIntrinsics,
    *,
    depth_scale: float = 1.0,
    min_depth: float = 0.0,
    max_depth: float = math.inf,
    colors: np.ndarray | None = None,
) -> np.ndarray:
    """One (H, W) depth image -> (N, 3) float32 points (or (N, 6) with colors); see depth_to_points_batch."""
    if depth.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {depth.shape}")
    points, _ = depth_to_points_batch(
        depth[None],
        intrinsics,
        depth_scale=depth_scale,
        min_depth=min_depth,
        max_depth=max_depth,
        colors=None if colors is None else colors[None],
    )
    return points


def transform_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform (e.g. camera -> world) to the xyz channels; other channels pass through."""
    transform = np.asarray(transform, dtype=np.float32)
    if transform.shape != (4, 4):
        raise ValueError(f"transform must be 4x4, got {transform.shape}")
    out = np.array(points, dtype=np.float32, copy=True)
    out[:, :3] = points[:, :3] @ transform[:3, :3].T + transform[:3, 3]
    return out
