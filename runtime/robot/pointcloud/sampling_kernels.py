"""Compiled (numba) farthest point sampling over spatial buckets: the fast path of `sampling`.

Same greedy rule and arithmetic as the numpy paths (float32 distances as (dx*dx + dy*dy) + dz*dz,
ties to the lowest original index), so picks are identical. Points arrive sorted into spatially
compact buckets; a pick updates only the buckets whose bounding box is closer to it than their current
farthest point. The box bound is computed from the points' own float32 coordinates, so rounding can
never make it exceed a member's true distance: the skip is exact.

`AVAILABLE` is False when numba is not installed; callers then use the numpy paths.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba ships with the robot extra
    numba = None

AVAILABLE = numba is not None


def _fps_buckets(x, y, z, original, starts, num_samples, start_position):  # pragma: no cover - compiled
    num_points = x.shape[0]
    num_buckets = starts.shape[0] - 1
    f32 = np.float32
    low = np.empty((3, num_buckets), dtype=np.float32)
    high = np.empty((3, num_buckets), dtype=np.float32)
    for b in range(num_buckets):
        lx, ly, lz = x[starts[b]], y[starts[b]], z[starts[b]]
        hx, hy, hz = lx, ly, lz
        for i in range(starts[b] + 1, starts[b + 1]):
            lx, hx = min(lx, x[i]), max(hx, x[i])
            ly, hy = min(ly, y[i]), max(hy, y[i])
            lz, hz = min(lz, z[i]), max(hz, z[i])
        low[0, b], low[1, b], low[2, b] = lx, ly, lz
        high[0, b], high[1, b], high[2, b] = hx, hy, hz
    min_dist = np.full(num_points, np.inf, dtype=np.float32)
    bucket_max = np.full(num_buckets, np.inf, dtype=np.float32)
    bucket_arg = np.empty(num_buckets, dtype=np.int64)  # position of each bucket's farthest point
    picked = np.empty(num_samples, dtype=np.int64)
    position = start_position
    zero = f32(0.0)
    for step in range(num_samples):
        picked[step] = original[position]
        qx, qy, qz = x[position], y[position], z[position]
        for b in range(num_buckets):
            gx = max(max(low[0, b] - qx, qx - high[0, b]), zero)
            gy = max(max(low[1, b] - qy, qy - high[1, b]), zero)
            gz = max(max(low[2, b] - qz, qz - high[2, b]), zero)
            bound = (gx * gx + gy * gy) + gz * gz
            if not bound < bucket_max[b]:
                continue
            begin, end = starts[b], starts[b + 1]
            best = f32(-1.0)
            for i in range(begin, end):  # update; vectorizes
                dx, dy, dz = x[i] - qx, y[i] - qy, z[i] - qz
                d = min(min_dist[i], (dx * dx + dy * dy) + dz * dz)
                min_dist[i] = d
                best = max(best, d)
            arg = end
            for i in range(begin, end):  # lowest original index among the bucket's maxima
                if min_dist[i] == best and (arg == end or original[i] < original[arg]):
                    arg = i
            bucket_max[b] = best
            bucket_arg[b] = arg
        position = bucket_arg[0]
        best = bucket_max[0]
        for b in range(1, num_buckets):
            value = bucket_max[b]
            if value > best or (value == best and original[bucket_arg[b]] < original[position]):
                best, position = value, bucket_arg[b]
    return picked


if AVAILABLE:
    fps_buckets = numba.njit(cache=True, nogil=True, boundscheck=False)(_fps_buckets)
else:  # pragma: no cover
    fps_buckets = None
