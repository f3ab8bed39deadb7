"""RANSAC plane segmentation and ground removal.

All hypotheses are scored at once: num_iterations random point triples -> unit normals by a batched
cross product -> one (points x hypotheses) matrix product counts every hypothesis's inliers, in
chunks of points. The best plane is then refit to its inliers by least squares (SVD) and its inliers
recomputed. Seeded, so a run is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_CHUNK_POINTS = 16384


@dataclass(kw_only=True, slots=True)
class PlaneFit:
    """Plane a*x + b*y + c*z + d = 0 with unit normal (a, b, c); inlier_mask marks points within distance."""

    coefficients: np.ndarray
    inlier_mask: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        return self.coefficients[:3]

    @property
    def num_inliers(self) -> int:
        return int(self.inlier_mask.sum())


def _hypotheses(xyz: np.ndarray, num_iterations: int, rng: np.random.Generator) -> np.ndarray:
    """(num_iterations, 4) plane coefficients from random triples; degenerate triples get NaN."""
    triples = xyz[rng.integers(0, len(xyz), size=(num_iterations, 3))].astype(np.float64)
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normals = np.where(lengths > 1e-12, normals / lengths, np.nan)
    offsets = -np.einsum("ij,ij->i", normals, triples[:, 0])
    return np.concatenate([normals, offsets[:, None]], axis=1)


def _distances(xyz: np.ndarray, plane: np.ndarray) -> np.ndarray:
    return np.abs(xyz @ plane[:3] + plane[3])


def segment_plane(
    points: np.ndarray,
    *,
    distance_threshold: float = 0.02,
    num_iterations: int = 100,
    seed: int = 0,
    axis: Sequence[float] | None = None,
    max_angle_deg: float = 90.0,
) -> PlaneFit:
    """Largest plane in the cloud (by inlier count within distance_threshold).

    axis / max_angle_deg: only accept planes whose normal is within max_angle_deg of axis (e.g.
    axis=(0, 0, 1) for a ground plane in a z-up world frame, or (0, -1, 0) in an OpenCV camera frame).
    """
    if not distance_threshold > 0:
        raise ValueError(f"distance_threshold must be > 0, got {distance_threshold}")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    if len(points) < 3:
        raise ValueError(f"plane segmentation needs at least 3 points, got {len(points)}")
    xyz = np.ascontiguousarray(points[:, :3], dtype=np.float64)
    planes = _hypotheses(xyz, num_iterations, np.random.default_rng(seed))
    valid = np.isfinite(planes[:, 0])
    if axis is not None:
        direction = np.asarray(axis, dtype=np.float64)
        direction = direction / np.linalg.norm(direction)
        with np.errstate(invalid="ignore"):
            valid &= np.abs(planes[:, :3] @ direction) >= math.cos(math.radians(max_angle_deg))
    planes = planes[valid]
    if len(planes) == 0:
        return PlaneFit(coefficients=np.full(4, np.nan), inlier_mask=np.zeros(len(points), dtype=bool))
    # Scoring in float32 (half the memory traffic); the winner is re-checked in float64 below.
    xyz32, normals32 = xyz.astype(np.float32), np.ascontiguousarray(planes[:, :3].T, dtype=np.float32)
    offsets32 = planes[:, 3].astype(np.float32)
    scores = np.zeros(len(planes), dtype=np.int64)
    for begin in range(0, len(xyz), _CHUNK_POINTS):
        distances = xyz32[begin : begin + _CHUNK_POINTS] @ normals32
        distances += offsets32
        np.abs(distances, out=distances)
        scores += np.count_nonzero(distances <= distance_threshold, axis=0)
    best = planes[int(scores.argmax())]
    inliers = _distances(xyz, best) <= distance_threshold
    refined = _refit(xyz[inliers], best)
    refined_inliers = _distances(xyz, refined) <= distance_threshold
    if refined_inliers.sum() >= inliers.sum():
        best, inliers = refined, refined_inliers
    return PlaneFit(coefficients=best, inlier_mask=inliers)


def _refit(inliers: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Least-squares plane through the inliers, its normal oriented like the hypothesis's."""
    if len(inliers) < 3:
        return plane
    center = inliers.mean(axis=0)
    normal = np.linalg.svd(inliers - center, full_matrices=False)[2][-1]
    if normal @ plane[:3] < 0:
        normal = -normal
    return np.concatenate([normal, [-normal @ center]])


def remove_ground_plane(
    points: np.ndarray,
    *,
    distance_threshold: float = 0.02,
    num_iterations: int = 100,
    seed: int = 0,
    axis: Sequence[float] | None = None,
    max_angle_deg: float = 20.0,
) -> np.ndarray:
    """The points off the dominant plane (all channels kept); axis restricts which planes count as ground."""
    if len(points) < 3:
        return points
    fit = segment_plane(
        points,
        distance_threshold=distance_threshold,
        num_iterations=num_iterations,
        seed=seed,
        axis=axis,
        max_angle_deg=max_angle_deg,
    )
    return points[~fit.inlier_mask]
