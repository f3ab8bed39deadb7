"""Statistical outlier removal: drop points whose mean distance to their k nearest neighbours is large.

Same rule as PCL's StatisticalOutlierRemoval and Open3D's remove_statistical_outlier: with d_i the
mean distance from point i to its num_neighbors nearest other points, keep the points with
d_i <= mean(d) + std_ratio * std(d).

Neighbours are exact. Small clouds use brute force (matrix-product distances + top-k in torch).
Larger ones are cut into query groups, the cells of a grid a few neighbour radii wide (the radius:
the median k-th neighbour distance of a sample); each group is matched only against the points
inside its bounding box grown by one radius, found through a sorted-x index. A query's answer is
provably exact when its k-th neighbour lies closer than the grown box's boundary; queries that fail
(sparser regions) retry with a larger radius, and the last few (outliers) against the whole cloud.
"""

from __future__ import annotations

import numpy as np
import torch

_BRUTE_FORCE_MAX_POINTS = 4096
_RADIUS_SAMPLE = 256
_CELL_RADII = 3.0
_RADIUS_SCALES = (0.75, 1.5, 3.0)
_RADIUS_QUANTILE = 0.5


def _knn_mean(
    query: torch.Tensor, candidates: torch.Tensor, num_neighbors: int
) -> tuple[np.ndarray, np.ndarray]:
    """(mean distance to the num_neighbors nearest candidates excluding the query itself, k-th distance)."""
    squared = torch.addmm((candidates * candidates).sum(1)[None, :], query, candidates.T, alpha=-2.0)
    squared += (query * query).sum(1, keepdim=True)
    squared.clamp_(min=0.0)
    # np.partition beats torch.topk here; the k+1 smallest include the point itself (the minimum).
    nearest = np.sqrt(np.partition(squared.numpy(), num_neighbors, axis=1)[:, : num_neighbors + 1])
    mean = (nearest.sum(axis=1) - nearest.min(axis=1)) / np.float32(num_neighbors)
    return mean.astype(np.float32), nearest[:, num_neighbors]


def _brute_force(xyz: torch.Tensor, rows: torch.Tensor, num_neighbors: int, chunk_size: int) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float32)
    for begin in range(0, len(rows), chunk_size):
        out[begin : begin + chunk_size] = _knn_mean(
            xyz[rows[begin : begin + chunk_size]], xyz, num_neighbors
        )[0]
    return out


def _neighbor_radius(xyz: torch.Tensor, num_neighbors: int, rng: np.random.Generator) -> float:
    """A quantile of the k-th neighbour distance over a random sample of the cloud."""
    sample = torch.from_numpy(rng.choice(len(xyz), size=min(_RADIUS_SAMPLE, len(xyz)), replace=False))
    kth = _knn_mean(xyz[sample], xyz, num_neighbors)[1]
    return float(np.quantile(kth, _RADIUS_QUANTILE))


def mean_neighbor_distances(points: np.ndarray, num_neighbors: int, *, chunk_size: int = 1024) -> np.ndarray:
    """(N,) float32 mean Euclidean distance from each point to its num_neighbors nearest other points."""
    num_points = len(points)
    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
    if num_points <= num_neighbors:
        raise ValueError(
            f"statistical outlier removal needs more than num_neighbors={num_neighbors} points, got {num_points}"
        )
    xyz_np = np.ascontiguousarray(points[:, :3], dtype=np.float32)
    xyz = torch.from_numpy(xyz_np)
    if num_points <= max(_BRUTE_FORCE_MAX_POINTS, 8 * num_neighbors):
        return _brute_force(xyz, torch.arange(num_points), num_neighbors, chunk_size)
    radius = _neighbor_radius(xyz, num_neighbors, np.random.default_rng(0))
    if not radius > 0:  # mostly duplicate points
        return _brute_force(xyz, torch.arange(num_points), num_neighbors, chunk_size)
    by_x = np.argsort(xyz_np[:, 0], kind="stable")
    index = (xyz_np, by_x, xyz_np[by_x, 0])
    out = np.empty(num_points, dtype=np.float32)
    rows = np.arange(num_points)
    for scale in _RADIUS_SCALES:  # queries that fail at one radius retry at a larger one
        rows = _pruned_pass(xyz, index, rows, radius * scale, num_neighbors, out)
        if len(rows) == 0:
            return out
    out[rows] = _brute_force(xyz, torch.from_numpy(rows), num_neighbors, chunk_size)
    return out


def _pruned_pass(xyz, index, rows, radius, num_neighbors, out) -> np.ndarray:
    """kNN means of `rows` from nearby candidates only; writes `out`, returns the rows not proven exact.

    Query groups are the cells of a grid _CELL_RADII radii wide; a group's candidates are the points in
    its bounding box grown by one radius.
    """
    xyz_np, by_x, sorted_x = index
    cells = np.floor(xyz_np[rows] * np.float32(1.0 / (_CELL_RADII * radius))).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    keys = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    by_cell = rows[np.argsort(keys, kind="stable")]
    bounds = np.flatnonzero(np.diff(np.sort(keys, kind="stable"))) + 1
    failed = []
    for group_rows in np.split(by_cell, bounds):
        group = xyz_np[group_rows]
        low, high = group.min(axis=0) - radius, group.max(axis=0) + radius
        first = np.searchsorted(sorted_x, low[0], side="left")
        last = np.searchsorted(sorted_x, high[0], side="right")
        candidates = by_x[first:last]
        inside = xyz_np[candidates, 1:]
        candidates = candidates[np.all((inside >= low[1:]) & (inside <= high[1:]), axis=1)]
        if len(candidates) <= num_neighbors:
            failed.append(group_rows)
            continue
        mean, kth = _knn_mean(torch.from_numpy(group), xyz[torch.from_numpy(candidates)], num_neighbors)
        to_boundary = np.minimum(group - low, high - group).min(axis=1)
        exact = kth * np.float32(1.0001) < to_boundary  # nothing outside the box can be nearer
        out[group_rows[exact]] = mean[exact]
        if not exact.all():
            failed.append(group_rows[~exact])
    return np.concatenate(failed) if failed else np.empty(0, dtype=np.int64)


def statistical_outlier_mask(
    points: np.ndarray, *, num_neighbors: int = 20, std_ratio: float = 2.0, chunk_size: int = 1024
) -> np.ndarray:
    """Boolean mask of the points to keep (True = inlier)."""
    if std_ratio < 0:
        raise ValueError(f"std_ratio must be >= 0, got {std_ratio}")
    distances = mean_neighbor_distances(points, num_neighbors, chunk_size=chunk_size).astype(np.float64)
    threshold = distances.mean() + std_ratio * distances.std()
    return distances <= threshold


def remove_statistical_outliers(
    points: np.ndarray, *, num_neighbors: int = 20, std_ratio: float = 2.0
) -> np.ndarray:
    """The inlier points (all channels kept); clouds too small to judge pass through unchanged."""
    if len(points) <= num_neighbors:
        return points
    return points[statistical_outlier_mask(points, num_neighbors=num_neighbors, std_ratio=std_ratio)]
