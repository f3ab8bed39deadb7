"""Variable-length point clouds in a batch: per-row (N_i, C) float32 arrays, or one flat array + counts.

Ray Data hands a `map_batches` stage a column of clouds in one of three shapes: a (B, N, C) tensor
when every row has the same size, an object array of (N_i, C) arrays when sizes vary, or an object
array of flat (N_i * C,) lists (the episode schema's `observation.pointcloud`). These helpers turn
any of them into a list of (N_i, C) arrays, and concatenated `(points, counts)` for ops that work on
a whole batch at once, and back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_cloud(values, num_fields: int = 3) -> np.ndarray:
    """One cloud as a C-contiguous (N, num_fields) float32 array (accepts (N, C) or flat (N * C,))."""
    cloud = np.asarray(values, dtype=np.float32)
    if cloud.ndim == 1:
        if cloud.size % num_fields:
            raise ValueError(
                f"flat cloud of {cloud.size} values is not a multiple of num_fields={num_fields}"
            )
        cloud = cloud.reshape(-1, num_fields)
    if cloud.ndim != 2 or cloud.shape[1] < 3:
        raise ValueError(f"a cloud must have shape (N, C>=3), got {cloud.shape}")
    return np.ascontiguousarray(cloud)


def clouds_from_column(column, num_fields: int = 3) -> list[np.ndarray]:
    """A batch column of clouds (tensor, object array of arrays, or list) -> list of (N_i, C) arrays."""
    if isinstance(column, np.ndarray) and column.dtype != object and column.ndim == 3:
        return [np.ascontiguousarray(cloud, dtype=np.float32) for cloud in column]
    if isinstance(column, np.ndarray) and column.dtype != object and column.ndim == 2:
        return [as_cloud(row, num_fields) for row in column]  # fixed-size flat rows
    return [as_cloud(row, num_fields) for row in column]


def column_from_clouds(clouds: Sequence[np.ndarray], flat: bool = False) -> np.ndarray:
    """List of (N_i, C) clouds -> a batch column: a (B, N, C) tensor when sizes agree, else object array.

    flat=True stores each row as a flat (N_i * C,) array, the episode schema's list<float32> layout.
    """
    rows = [cloud.reshape(-1) for cloud in clouds] if flat else list(clouds)
    shapes = {row.shape for row in rows}
    if len(shapes) == 1 and rows:
        return np.stack(rows)
    column = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        column[index] = row
    return column


def concat_clouds(clouds: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """List of (N_i, C) clouds -> ((sum N_i, C) points, (B,) int64 counts)."""
    counts = np.fromiter((len(cloud) for cloud in clouds), dtype=np.int64, count=len(clouds))
    if not clouds:
        return np.empty((0, 3), np.float32), counts
    return np.ascontiguousarray(np.concatenate(clouds, axis=0), dtype=np.float32), counts


def split_clouds(points: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Inverse of concat_clouds."""
    return np.split(points, np.cumsum(counts)[:-1]) if len(counts) else []


def segment_ids(counts: np.ndarray) -> np.ndarray:
    """(B,) counts -> (sum counts,) int64 row index of every point."""
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


_GRID_BITS = 5  # 32 cells per axis -> 15-bit Morton codes, which numpy radix-sorts as int16


def _spread_bits(values: np.ndarray) -> np.ndarray:
    spread = np.zeros_like(values)
    for bit in range(_GRID_BITS):
        spread |= ((values >> bit) & 1) << (3 * bit)
    return spread


_SPREAD = _spread_bits(np.arange(1 << _GRID_BITS, dtype=np.int16))  # cell -> its bits 3 apart


def morton_order(coords: np.ndarray) -> np.ndarray:
    """Point order along a Z-curve over a 32^3 grid of the bounding box (coords: (3, N) float32).

    Consecutive points in this order are spatially close: fixed-size runs of it make compact buckets.
    """
    low = coords.min(axis=1, keepdims=True)
    span = np.maximum((coords.max(axis=1, keepdims=True) - low).max(), np.float32(1e-12))  # cubic cells
    grid = 1 << _GRID_BITS
    cells = ((coords - low) * (grid / span)).astype(np.int16)
    np.minimum(cells, grid - 1, out=cells)
    codes = _SPREAD[cells[0]] | (_SPREAD[cells[1]] << 1) | (_SPREAD[cells[2]] << 2)
    return np.argsort(codes, kind="stable")
