"""Voxel-grid downsampling: every occupied voxel becomes the mean of its points (all channels).

Voxel keys are floor(xyz * (1 / voxel_size)) in float32, a grid anchored at the origin so that
consecutive frames share voxel boundaries. Keys become one linear int64 index over the occupied
bounding box, and per-voxel sums come from np.bincount over a compact voxel numbering: no sort,
which is what np.unique-based implementations pay for. Only a very sparse grid (bounding box far
larger than the number of points) falls back to a sort.
"""

from __future__ import annotations

import numpy as np

# Dense bincount path while the grid has at most this many cells per point (plus a floor).
_DENSE_CELLS_PER_POINT = 8
_DENSE_MIN_CELLS = 1 << 20


def _voxel_means(
    points: np.ndarray, voxel_size: float, rows: np.ndarray | None, num_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Means per (row, voxel); returns ((V, C) means, (V,) row of each voxel), ordered by row then key."""
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    num_channels = points.shape[1]
    if len(points) == 0:
        return np.empty((0, num_channels), np.float32), np.empty(0, np.int64)
    # Axis-major (3, N) layout: numpy's reductions over a short trailing axis are slow.
    keys = np.multiply(points[:, :3].T, np.float32(1.0 / voxel_size), out=np.empty((3, len(points)), np.float32))
    np.floor(keys, out=keys)
    keys -= keys.min(axis=1, keepdims=True)
    int_keys = keys.astype(np.int64)
    dims = int_keys.max(axis=1) + 1
    cells_per_row = int(dims[0] * dims[1] * dims[2])
    linear = int_keys[0] * int(dims[1] * dims[2])
    linear += int_keys[1] * int(dims[2])
    linear += int_keys[2]
    if rows is not None:
        linear += rows * cells_per_row
    num_cells = cells_per_row * max(num_rows, 1)
    if num_cells <= max(_DENSE_CELLS_PER_POINT * len(points), _DENSE_MIN_CELLS):
        points_per_cell = np.bincount(linear, minlength=num_cells)
        occupied = points_per_cell > 0
        voxel_of_cell = np.cumsum(occupied) - 1
        voxel = voxel_of_cell[linear]
        counts = points_per_cell[occupied]
        cells = np.flatnonzero(occupied)
    else:
        cells, voxel, counts = np.unique(linear, return_inverse=True, return_counts=True)
    num_voxels = len(counts)
    means = np.empty((num_voxels, num_channels), dtype=np.float32)
    for channel in range(num_channels):
        sums = np.bincount(voxel, weights=points[:, channel], minlength=num_voxels)
        means[:, channel] = sums / counts
    return means, cells // cells_per_row


def voxel_downsample(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """(N, C) cloud -> (V, C) voxel means, ordered by voxel key."""
    means, _ = _voxel_means(points, voxel_size, None, 1)
    return means


def voxel_downsample_batch(
    points: np.ndarray, counts: np.ndarray, voxel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated clouds ((sum N_i, C), (B,) counts) -> their voxel means in the same layout.

    One pass for the whole batch: the row index is the most significant part of the voxel key.
    """
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    means, voxel_rows = _voxel_means(points, voxel_size, rows, len(counts))
    return means, np.bincount(voxel_rows, minlength=len(counts)).astype(np.int64)
