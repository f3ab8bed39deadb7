"""Per-point transforms: axis-aligned box crop and normalization into the unit sphere."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _bounds(min_bound: Sequence[float], max_bound: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    low = np.asarray(min_bound, dtype=np.float32)
    high = np.asarray(max_bound, dtype=np.float32)
    if low.shape != (3,) or high.shape != (3,):
        raise ValueError(f"min_bound and max_bound must be 3 numbers, got {low.tolist()} and {high.tolist()}")
    if np.any(low > high):
        raise ValueError(
            f"min_bound must be <= max_bound on every axis, got {low.tolist()} > {high.tolist()}"
        )
    return low, high


def crop_box_mask(points: np.ndarray, min_bound: Sequence[float], max_bound: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points with min_bound <= xyz <= max_bound (bounds inclusive)."""
    low, high = _bounds(min_bound, max_bound)
    mask = points[:, 0] >= low[0]
    for axis in range(3):
        if axis:
            mask &= points[:, axis] >= low[axis]
        mask &= points[:, axis] <= high[axis]
    return mask


def crop_box(points: np.ndarray, min_bound: Sequence[float], max_bound: Sequence[float]) -> np.ndarray:
    """The points inside the box (all channels kept)."""
    return points[crop_box_mask(points, min_bound, max_bound)]


def crop_box_batch(
    points: np.ndarray, counts: np.ndarray, min_bound: Sequence[float], max_bound: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop concatenated clouds: ((sum N_i, C), (B,) counts) -> the same layout, inside the box."""
    mask = crop_box_mask(points, min_bound, max_bound)
    rows = np.repeat(np.arange(len(counts)), counts)
    kept = np.bincount(rows[mask], minlength=len(counts)).astype(np.int64)
    return points[mask], kept


def normalize_points(points: np.ndarray, *, center: str = "centroid") -> tuple[np.ndarray, np.ndarray, float]:
    """Center the xyz channels and scale them into the unit sphere (PointNet's input convention).

    center: "centroid" (mean point) or "bbox" (middle of the bounding box). Returns (normalized,
    center, scale) with normalized_xyz = (xyz - center) / scale; other channels pass through. A cloud
    of identical points gets scale 1.
    """
    if center not in ("centroid", "bbox"):
        raise ValueError(f"center must be 'centroid' or 'bbox', got {center!r}")
    out = np.array(points, dtype=np.float32, copy=True)
    if len(out) == 0:
        return out, np.zeros(3, np.float32), 1.0
    xyz = out[:, :3]
    if center == "centroid":
        middle = xyz.mean(axis=0, dtype=np.float64).astype(np.float32)
    else:
        middle = ((xyz.min(axis=0) + xyz.max(axis=0)) / 2).astype(np.float32)
    xyz -= middle
    radius = float(np.sqrt(np.max(np.einsum("ij,ij->i", xyz, xyz))))
    scale = radius if radius > 0 else 1.0
    xyz /= np.float32(scale)
    return out, middle, scale
