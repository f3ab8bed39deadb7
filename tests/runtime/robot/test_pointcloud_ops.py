"""Depth projection, box crop, voxel means and normalization against brute-force per-point references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.tolerances import max_magnitude, rounding_tolerance, ulp, unit_roundoff

from runtime.robot.pointcloud.cloud import clouds_from_column, column_from_clouds, concat_clouds, split_clouds
from runtime.robot.pointcloud.projection import (
    CameraIntrinsics,
    depth_to_points,
    depth_to_points_batch,
    transform_points,
)
from runtime.robot.pointcloud.transforms import crop_box, crop_box_batch, normalize_points
from runtime.robot.pointcloud.voxel import voxel_downsample, voxel_downsample_batch

INTRINSICS = CameraIntrinsics(fx=50.0, fy=55.0, cx=15.5, cy=11.0)


def reference_depth_to_points(depth, intrinsics, depth_scale, max_depth):
    points = []
    for v in range(depth.shape[0]):
        for u in range(depth.shape[1]):
            z = np.float32(depth[v, u]) * np.float32(depth_scale)
            if z > 0 and z <= max_depth:
                x = z * np.float32((u - intrinsics.cx) / intrinsics.fx)
                y = z * np.float32((v - intrinsics.cy) / intrinsics.fy)
                points.append((x, y, z))
    return np.array(points, dtype=np.float32).reshape(-1, 3)


def test_depth_to_points_matches_pixel_loop():
    rng = np.random.default_rng(0)
    depth = rng.integers(0, 3000, size=(24, 32)).astype(np.uint16)
    depth[rng.random(depth.shape) < 0.2] = 0  # no return
    got = depth_to_points(depth, INTRINSICS, depth_scale=0.001, max_depth=2.5)
    want = reference_depth_to_points(depth, INTRINSICS, 0.001, 2.5)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_depth_to_points_batch_counts_and_colors():
    rng = np.random.default_rng(1)
    depths = rng.random((3, 8, 10)).astype(np.float32)
    depths[1] = 0.0  # an empty frame
    depths[2, :4] = np.nan
    colors = rng.integers(0, 255, size=(3, 8, 10, 3)).astype(np.uint8)
    points, counts = depth_to_points_batch(depths, INTRINSICS, colors=colors)
    assert counts.tolist() == [80, 0, 40]
    assert points.shape == (120, 6)
    np.testing.assert_array_equal(points[80:, 3:], colors[2, 4:].reshape(-1, 3))
    np.testing.assert_array_equal(points[:80, :3], depth_to_points(depths[0], INTRINSICS))


def test_projection_inverts_pinhole_model():
    intrinsics = CameraIntrinsics.from_fov(width=64, height=48, fov_y_deg=60)
    depth = np.full((48, 64), 2.0, dtype=np.float32)
    points = depth_to_points(depth, intrinsics)
    u = intrinsics.fx * points[:, 0] / points[:, 2] + intrinsics.cx
    v = intrinsics.fy * points[:, 1] / points[:, 2] + intrinsics.cy
    # float32 round trip: the pixel ray (u - cx) / fx and z * ray when projecting, fx * x, / z and + cx
    # here: 5 roundings at magnitudes up to the largest pixel coordinate
    tol = rounding_tolerance(np.float32, 63, 5)
    np.testing.assert_allclose(u.reshape(48, 64), np.tile(np.arange(64), (48, 1)), rtol=0, atol=tol)
    np.testing.assert_allclose(v.reshape(48, 64), np.repeat(np.arange(48)[:, None], 64, 1), rtol=0, atol=tol)


def test_intrinsics_reject_bad_focal_length():
    with pytest.raises(ValueError, match="fx"):
        CameraIntrinsics(fx=0, fy=1, cx=0, cy=0)


def test_transform_points_applies_rigid_motion():
    points = np.array([[1, 0, 0, 7]], dtype=np.float32)
    transform = np.eye(4)
    transform[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    transform[:3, 3] = [0, 0, 2]
    # a signed permutation and an integer shift: every product and sum is exact in float32
    np.testing.assert_array_equal(transform_points(points, transform), [[0, 1, 2, 7]])


def test_crop_box_matches_loop_and_is_inclusive():
    rng = np.random.default_rng(2)
    points = rng.uniform(-1, 1, size=(5000, 4)).astype(np.float32)
    points[0, :3] = [0.5, 0.5, 0.5]  # exactly on the max corner
    low, high = (-0.5, -0.25, 0.0), (0.5, 0.5, 0.5)
    want = np.array([p for p in points if all(low[a] <= p[a] <= high[a] for a in range(3))])
    np.testing.assert_array_equal(crop_box(points, low, high), want)
    with pytest.raises(ValueError, match="min_bound"):
        crop_box(points, (1, 0, 0), (0, 1, 1))


def test_crop_box_batch_keeps_rows_including_empty_ones():
    rng = np.random.default_rng(3)
    clouds = [rng.uniform(-1, 1, (n, 3)).astype(np.float32) for n in (100, 0, 50, 0)]
    points, counts = concat_clouds(clouds)
    kept, kept_counts = crop_box_batch(points, counts, (-0.5,) * 3, (0.5,) * 3)
    for cloud, got in zip(clouds, split_clouds(kept, kept_counts)):
        np.testing.assert_array_equal(got, crop_box(cloud, (-0.5,) * 3, (0.5,) * 3))


def reference_voxel_means(points, voxel_size):
    sums: dict[tuple, list] = {}
    inverse = np.float32(1.0 / voxel_size)
    for point in points:
        key = tuple(math.floor(np.float32(point[a]) * inverse) for a in range(3))
        entry = sums.setdefault(key, [np.zeros(points.shape[1]), 0])
        entry[0] += point.astype(np.float64)
        entry[1] += 1
    return {key: total / count for key, (total, count) in sums.items()}


@pytest.mark.parametrize("voxel_size", [0.05, 0.3])
def test_voxel_downsample_means_match_dictionary_reference(voxel_size):
    rng = np.random.default_rng(4)
    points = rng.normal(0, 1, size=(4000, 4)).astype(np.float32)  # negative coordinates too
    got = voxel_downsample(points, voxel_size)
    want = reference_voxel_means(points, voxel_size)
    assert len(got) == len(want)
    got_sorted = got[np.lexsort(got.T[::-1])]
    want_sorted = np.array(sorted(want.values(), key=tuple), dtype=np.float32)
    want_sorted = want_sorted[np.lexsort(want_sorted.T[::-1])]
    # both sum in float64 (other orders: ~1e-16 apart) and round the mean to float32 once: at most
    # one float32 step apart, at the points' magnitude
    np.testing.assert_allclose(got_sorted, want_sorted, rtol=0, atol=ulp(np.float32, max_magnitude(points)))


def test_voxel_downsample_sparse_grid_uses_same_result():
    rng = np.random.default_rng(5)
    points = rng.uniform(0, 1, size=(200, 3)).astype(np.float32)
    points[:100] += 1000.0  # a huge, nearly empty bounding box -> the sort-based path
    got = voxel_downsample(points, 0.01)
    want = reference_voxel_means(points, 0.01)
    assert len(got) == len(want)
    np.testing.assert_allclose(np.sort(got[:, 0]), np.sort([m[0] for m in want.values()]), rtol=0,
                               atol=ulp(np.float32, max_magnitude(points)))  # as above


def test_voxel_downsample_batch_keeps_clouds_apart():
    rng = np.random.default_rng(6)
    clouds = [rng.uniform(0, 1, (n, 3)).astype(np.float32) for n in (300, 0, 500)]
    clouds[2][:] = clouds[2] * 0.5  # overlapping space with cloud 0: must not merge
    points, counts = concat_clouds(clouds)
    means, mean_counts = voxel_downsample_batch(points, counts, 0.1)
    for cloud, got in zip(clouds, split_clouds(means, mean_counts)):
        # per-voxel sums add the same points in the same order whatever else is in the batch
        np.testing.assert_array_equal(got, voxel_downsample(cloud, 0.1))
    with pytest.raises(ValueError, match="voxel_size"):
        voxel_downsample(points, 0.0)


def test_normalize_points_into_unit_sphere():
    rng = np.random.default_rng(7)
    points = rng.normal(5, 3, size=(1000, 4)).astype(np.float32)
    normalized, center, scale = normalize_points(points)
    # the centroid is the exact (float64) mean, stored once in float32
    np.testing.assert_allclose(center, points[:, :3].mean(axis=0, dtype=np.float64), rtol=unit_roundoff(np.float32))
    # |normalized| <= 1 with equality for the farthest point, up to float32 rounding: centring, the squared
    # norm (3 products, 2 sums), the scale, the division, and this norm again: ~12 roundings at 1.0
    np.testing.assert_allclose(np.linalg.norm(normalized[:, :3], axis=1).max(), 1.0, rtol=0,
                               atol=rounding_tolerance(np.float32, 1.0, 12))
    # centring, scaling and back: 4 roundings (and the scale's own) at the points' magnitude
    np.testing.assert_allclose(normalized[:, :3] * scale + center, points[:, :3], rtol=0,
                               atol=rounding_tolerance(np.float32, max_magnitude(points[:, :3]), 5))
    np.testing.assert_array_equal(normalized[:, 3], points[:, 3])
    same, _, unit = normalize_points(np.ones((5, 3), np.float32), center="bbox")
    assert unit == 1.0 and not same.any()


def test_cloud_column_layouts_round_trip():
    clouds = [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((0, 3), np.float32)]
    ragged = column_from_clouds(clouds)
    assert ragged.dtype == object
    assert [c.shape for c in clouds_from_column(ragged)] == [(2, 3), (0, 3)]
    flat = column_from_clouds(clouds, flat=True)
    assert flat[0].shape == (6,)
    assert [c.shape for c in clouds_from_column(flat)] == [(2, 3), (0, 3)]
    fixed = column_from_clouds([clouds[0], clouds[0]])
    assert fixed.shape == (2, 2, 3)
    with pytest.raises(ValueError, match="num_fields"):
        clouds_from_column(np.array([np.zeros(7, np.float32), np.zeros(3, np.float32)], dtype=object))
