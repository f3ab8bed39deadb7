"""Farthest point sampling (FPS): pick num_samples points, each the farthest from those already picked.

Three exact implementations of the same greedy rule (distances in float32 as (dx*dx + dy*dy) + dz*dz;
ties go to the lowest index), chosen by size:
- dense: one cloud, every point's min-distance updated per pick (axis-major buffers, in-place ufuncs);
- bucketed: large clouds. Points are grouped into spatially compact buckets (Morton order of a
  coarse grid, fixed-size chunks); a pick only touches buckets whose bounding box is closer to it than
  their current farthest point, which after the first few picks is a small fraction of the cloud.
  (Exact; only ties between duplicate points may resolve to another copy of the same point.)
- batched: many small clouds (a Ray Data batch) padded into one (B, N) array, so each of the
  num_samples steps costs a handful of numpy calls for the whole batch instead of per cloud.
A cloud with fewer distinct points than num_samples repeats index 0 once all its points are taken.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.robot.pointcloud import sampling_kernels
from runtime.robot.pointcloud.cloud import morton_order

_BUCKETED_MIN_POINTS = 16384
_BUCKET_SIZE = 128
_COMPILED_BUCKET_SIZE = 64


def _check(num_points: int, num_samples: int, start_index: int) -> None:
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_points and not 0 <= start_index < num_points:
        raise ValueError(f"start_index must be in [0, {num_points}), got {start_index}")


def _fps_dense(xyz: np.ndarray, num_samples: int, start_index: int) -> np.ndarray:
    x, y, z = (np.ascontiguousarray(xyz[:, axis]) for axis in range(3))
    min_dist = np.full(len(x), np.inf, dtype=np.float32)
    dist = np.empty_like(min_dist)
    scratch = np.empty_like(min_dist)
    picked = np.empty(num_samples, dtype=np.int64)
    farthest = start_index
    for step in range(num_samples):
        picked[step] = farthest
        np.subtract(x, x[farthest], out=dist)
        np.multiply(dist, dist, out=dist)
        np.subtract(y, y[farthest], out=scratch)
        np.multiply(scratch, scratch, out=scratch)
        dist += scratch
        np.subtract(z, z[farthest], out=scratch)
        np.multiply(scratch, scratch, out=scratch)
        dist += scratch
        np.minimum(min_dist, dist, out=min_dist)
        farthest = int(min_dist.argmax())
    return picked


def _fps_bucketed(xyz: np.ndarray, num_samples: int, start_index: int) -> np.ndarray:
    num_points, size = len(xyz), _BUCKET_SIZE
    coords = np.ascontiguousarray(xyz.T)
    order = morton_order(coords)
    num_buckets = -(-num_points // size)
    if num_buckets * size > num_points:  # pad with copies of the last point: same distances, same point
        order = np.concatenate([order, np.full(num_buckets * size - num_points, order[-1])])
    buckets = np.ascontiguousarray(
        np.take(coords, order, axis=1).reshape(3, num_buckets, size).transpose(1, 0, 2)
    )
    box_low = np.ascontiguousarray(buckets.min(axis=2).T)  # (3, num_buckets)
    box_high = np.ascontiguousarray(buckets.max(axis=2).T)
    min_dist = np.full((num_buckets, size), np.inf, dtype=np.float32)
    bucket_max = np.full(num_buckets, np.inf, dtype=np.float32)
    bucket, slot = divmod(int(np.flatnonzero(order[:num_points] == start_index)[0]), size)
    picked = np.empty(num_samples, dtype=np.int64)
    gap = np.empty((3, num_buckets), dtype=np.float32)
    gap_high = np.empty_like(gap)
    scratch, full_dist = np.empty_like(buckets), np.empty_like(min_dist)
    subtract, maximum, minimum, square, take = np.subtract, np.maximum, np.minimum, np.square, np.take
    for step in range(num_samples):
        picked[step] = bucket * size + slot
        query = buckets[bucket, :, slot : slot + 1]  # (3, 1)
        # Squared distance from the pick to each bucket's box: a lower bound for all its points
        # (built from the points' own coordinates, so float rounding cannot push it past them).
        subtract(box_low, query, out=gap)
        subtract(query, box_high, out=gap_high)
        maximum(gap, gap_high, out=gap)
        maximum(gap, 0, out=gap)
        square(gap, out=gap)
        lower_bound = gap[0] + gap[1]
        lower_bound += gap[2]
        touched = np.flatnonzero(lower_bound < bucket_max)
        if 2 * len(touched) > num_buckets:  # most of the cloud: in place, no gather/scatter
            subtract(buckets, query, out=scratch)
            square(scratch, out=scratch)
            dist = np.add(scratch[:, 0], scratch[:, 1], out=full_dist)
            dist += scratch[:, 2]
            minimum(min_dist, dist, out=min_dist)
            min_dist.max(axis=1, out=bucket_max)
        else:
            diff = take(buckets, touched, axis=0)
            diff -= query
            square(diff, out=diff)
            dist = diff[:, 0] + diff[:, 1]
            dist += diff[:, 2]
            minimum(take(min_dist, touched, axis=0), dist, out=dist)
            min_dist[touched] = dist
            bucket_max[touched] = dist.max(axis=1)
        bucket = int(bucket_max.argmax())
        slot = int(min_dist[bucket].argmax())
    return order[picked]


def _fps_compiled(xyz: np.ndarray, num_samples: int, start_index: int) -> np.ndarray:
    num_points = len(xyz)
    coords = np.ascontiguousarray(xyz.T)
    order = morton_order(coords) if num_points > _COMPILED_BUCKET_SIZE else np.arange(num_points)
    x, y, z = (np.ascontiguousarray(axis[order]) for axis in coords)
    starts = np.append(np.arange(0, num_points, _COMPILED_BUCKET_SIZE, dtype=np.int64), num_points)
    start_position = int(np.flatnonzero(order == start_index)[0])
    return sampling_kernels.fps_buckets(x, y, z, order.astype(np.int64), starts, num_samples, start_position)


def farthest_point_sample(points: np.ndarray, num_samples: int, *, start_index: int = 0) -> np.ndarray:
    """Indices (num_samples,) int64 of the FPS picks from an (N, C>=3) cloud, starting at start_index."""
    _check(len(points), num_samples, start_index)
    if len(points) == 0:
        return np.empty(0, dtype=np.int64)
    xyz = np.ascontiguousarray(points[:, :3], dtype=np.float32)
    if sampling_kernels.AVAILABLE:
        return _fps_compiled(xyz, num_samples, start_index)
    if len(xyz) >= _BUCKETED_MIN_POINTS and num_samples < len(xyz):
        return _fps_bucketed(xyz, num_samples, start_index)
    return _fps_dense(xyz, num_samples, start_index)


def farthest_point_sample_batch(
    clouds: Sequence[np.ndarray], num_samples: int, *, start_index: int = 0
) -> list[np.ndarray]:
    """FPS indices for each cloud of a batch at once (same picks as farthest_point_sample per cloud).

    Empty clouds give empty index arrays. Clouds are padded to the largest with copies of their start
    point, which can never be farther than a real point.
    """
    sizes = [len(cloud) for cloud in clouds]
    for size in sizes:
        _check(size, num_samples, start_index)
    result = [np.empty(0, dtype=np.int64) for _ in clouds]
    big = 1 if sampling_kernels.AVAILABLE else _BUCKETED_MIN_POINTS  # compiled: every cloud on its own
    for row, size in enumerate(sizes):  # big clouds: the bucketed single-cloud path is faster
        if size >= big:
            result[row] = farthest_point_sample(clouds[row], num_samples, start_index=start_index)
    live = [row for row, size in enumerate(sizes) if 0 < size < big]
    if not live or num_samples == 0:
        return result
    width = max(sizes[row] for row in live)
    coords = np.empty((3, len(live), width), dtype=np.float32)
    for slot, row in enumerate(live):
        cloud = clouds[row]
        coords[:, slot, : sizes[row]] = cloud[:, :3].T
        coords[:, slot, sizes[row] :] = cloud[start_index, :3, None]
    x, y, z = coords
    columns = np.arange(len(live))
    min_dist = np.full((len(live), width), np.inf, dtype=np.float32)
    dist = np.empty_like(min_dist)
    scratch = np.empty_like(min_dist)
    picked = np.empty((len(live), num_samples), dtype=np.int64)
    farthest = np.full(len(live), start_index, dtype=np.int64)
    for step in range(num_samples):
        picked[:, step] = farthest
        query = coords[:, columns, farthest, None]  # (3, B, 1)
        np.subtract(x, query[0], out=dist)
        np.multiply(dist, dist, out=dist)
        np.subtract(y, query[1], out=scratch)
        np.multiply(scratch, scratch, out=scratch)
        dist += scratch
        np.subtract(z, query[2], out=scratch)
        np.multiply(scratch, scratch, out=scratch)
        dist += scratch
        np.minimum(min_dist, dist, out=min_dist)
        farthest = min_dist.argmax(axis=1)
    for slot, row in enumerate(live):
        result[row] = picked[slot]
    return result
