"""Statistical outlier removal: drop points whose mean distance to their k nearest neighbours is large.

Same rule as PCL's StatisticalOutlierRemoval and Open3D's remove_statistical_outlier: with d_i the
mean distance from point i to its num_neighbors nearest other points, keep the points with
d_i <= mean(d) + std_ratio * std(d). Neighbours come from exact brute force in torch (matrix-product
distances, top-k), chunked so memory stays at chunk_size x N floats: O(N^2) work, meant for the
per-frame clouds (a few 10k points) that robot pipelines see after voxel downsampling.
"""

from __future__ import annotations

import numpy as np
import torch


def mean_neighbor_distances(points: np.ndarray, num_neighbors: int, *, chunk_size: int = 1024) -> np.ndarray:
    """(N,) float32 mean Euclidean distance from each point to its num_neighbors nearest other points."""
    num_points = len(points)
    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
    if num_points <= num_neighbors:
        raise ValueError(
            f"statistical outlier removal needs more than num_neighbors={num_neighbors} points, got {num_points}"
        )
    xyz = torch.from_numpy(np.ascontiguousarray(points[:, :3], dtype=np.float32))
    norms = (xyz * xyz).sum(dim=1)
    out = torch.empty(num_points, dtype=torch.float32)
    for begin in range(0, num_points, chunk_size):
        query = xyz[begin : begin + chunk_size]
        squared = torch.addmm(norms[None, :], query, xyz.T, alpha=-2.0)
        squared += norms[begin : begin + chunk_size, None]
        squared.clamp_(min=0.0)
        nearest = torch.topk(squared, num_neighbors + 1, dim=1, largest=False, sorted=True).values
        out[begin : begin + chunk_size] = nearest[:, 1:].sqrt().mean(dim=1)  # column 0 is the point itself
    return out.numpy()


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
