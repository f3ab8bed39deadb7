"""Farthest point sampling: every implementation picks exactly what the naive O(N*K) loop picks."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.robot.pointcloud import sampling, sampling_kernels
from runtime.robot.pointcloud.sampling import farthest_point_sample, farthest_point_sample_batch


def naive_fps(points, num_samples, start_index=0):
    """The textbook loop, one point at a time, distances in float32 as (dx*dx + dy*dy) + dz*dz."""
    xyz = points[:, :3].astype(np.float32)
    min_dist = [np.float32(np.inf)] * len(xyz)
    picked, farthest = [], start_index
    for _ in range(num_samples):
        picked.append(farthest)
        best, best_value = 0, np.float32(-1)
        for index, point in enumerate(xyz):
            delta = point - xyz[farthest]
            dist = (delta[0] * delta[0] + delta[1] * delta[1]) + delta[2] * delta[2]
            if dist < min_dist[index]:
                min_dist[index] = dist
            if min_dist[index] > best_value:
                best, best_value = index, min_dist[index]
        farthest = best
    return np.array(picked, dtype=np.int64)


@pytest.mark.parametrize("start_index", [0, 17])
def test_dense_fps_matches_naive_loop(start_index):
    points = np.random.default_rng(0).normal(size=(600, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        farthest_point_sample(points, 40, start_index=start_index), naive_fps(points, 40, start_index)
    )


def test_bucketed_fps_matches_dense(monkeypatch):
    rng = np.random.default_rng(1)
    surface = rng.random((6000, 2), dtype=np.float32)
    points = np.c_[surface, 0.1 * np.sin(6 * surface[:, :1])].astype(np.float32)
    dense = sampling._fps_dense(points, 300, 5)
    np.testing.assert_array_equal(dense[:30], naive_fps(points[:, :3], 30, 5))
    monkeypatch.setattr(sampling, "_BUCKET_SIZE", 64)
    np.testing.assert_array_equal(sampling._fps_bucketed(points, 300, 5), dense)
    np.testing.assert_array_equal(farthest_point_sample(points, 300, start_index=5), dense)


def test_bucketed_fps_on_uneven_bucket_count():
    points = np.random.default_rng(2).random((20_001, 3), dtype=np.float32)  # not a multiple of 128
    assert len(points) >= sampling._BUCKETED_MIN_POINTS
    np.testing.assert_array_equal(
        farthest_point_sample(points, 200, start_index=20_000), sampling._fps_dense(points, 200, 20_000)
    )


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("bucketed_min_points", [16384, 200])
def test_batched_fps_matches_per_cloud(monkeypatch, bucketed_min_points, compiled):
    monkeypatch.setattr(
        sampling, "_BUCKETED_MIN_POINTS", bucketed_min_points
    )  # 200: the 300 cloud goes alone
    monkeypatch.setattr(sampling_kernels, "AVAILABLE", compiled and sampling_kernels.AVAILABLE)
    rng = np.random.default_rng(3)
    clouds = [rng.normal(size=(n, 3)).astype(np.float32) for n in (50, 0, 300, 7)]
    picks = farthest_point_sample_batch(clouds, 32, start_index=0)
    assert picks[1].shape == (0,)
    for cloud, got in zip(clouds, picks):
        if len(cloud):
            np.testing.assert_array_equal(got, naive_fps(cloud, 32))


def test_fps_with_fewer_points_than_samples_repeats_index_zero():
    points = np.eye(3, dtype=np.float32)
    got = farthest_point_sample(points, 5, start_index=1)
    assert sorted(got[:3].tolist()) == [0, 1, 2]
    assert got[3:].tolist() == [0, 0]
    np.testing.assert_array_equal(got, naive_fps(points, 5, 1))


def test_fps_spreads_points_out():
    """FPS picks cover the cloud far better than the first K points do."""
    points = np.random.default_rng(4).random((5000, 3), dtype=np.float32)
    picked = points[farthest_point_sample(points, 64)]

    def coverage_radius(sample):
        return np.sqrt(((points[:, None, :] - sample[None]) ** 2).sum(-1)).min(axis=1).max()

    assert coverage_radius(picked) < 0.6 * coverage_radius(points[:64])


def test_fps_rejects_bad_arguments():
    points = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="start_index"):
        farthest_point_sample(points, 2, start_index=4)
    with pytest.raises(ValueError, match="num_samples"):
        farthest_point_sample(points, -1)
    assert farthest_point_sample(np.zeros((0, 3), np.float32), 3).shape == (0,)


@pytest.mark.skipif(not sampling_kernels.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("bucket_size", [1, 7, 64])
def test_compiled_fps_matches_naive_and_numpy_paths(monkeypatch, bucket_size):
    """The numba bucketed kernel picks exactly what the naive loop and the numpy paths pick."""
    monkeypatch.setattr(sampling, "_COMPILED_BUCKET_SIZE", bucket_size)
    rng = np.random.default_rng(5)
    small = rng.normal(size=(500, 3)).astype(np.float32)
    np.testing.assert_array_equal(farthest_point_sample(small, 60, start_index=9), naive_fps(small, 60, 9))
    large = rng.random((40_000, 3), dtype=np.float32)
    np.testing.assert_array_equal(
        farthest_point_sample(large, 256, start_index=123), sampling._fps_dense(large, 256, 123)
    )


@pytest.mark.skipif(not sampling_kernels.AVAILABLE, reason="numba not installed")
def test_compiled_fps_breaks_ties_to_the_lowest_index():
    """Duplicated points and a lattice (many equal distances) still give the naive loop's picks."""
    grid = np.stack(np.meshgrid(*[np.arange(6, dtype=np.float32)] * 3), -1).reshape(-1, 3)
    points = np.concatenate([grid, grid[::-1]])  # every point twice
    np.testing.assert_array_equal(farthest_point_sample(points, 40, start_index=3), naive_fps(points, 40, 3))
