"""RANSAC ground removal and statistical outlier removal: property checks against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tolerances import assert_within, rounding_tolerance, sqrt_tolerance, ulp

from runtime.robot.pointcloud.ground import remove_ground_plane, segment_plane
from runtime.robot.pointcloud.outliers import mean_neighbor_distances, statistical_outlier_mask


def tabletop(rng, num_ground=3000, num_objects=600, noise=0.003):
    """A tilted ground plane with noise, plus two boxes standing on it, in a z-up frame."""
    ground = np.c_[rng.uniform(-1, 1, (num_ground, 2)), rng.normal(0, noise, num_ground)]
    tilt = np.deg2rad(5)
    rotation = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    boxes = np.r_[
        rng.uniform([0.1, 0.1, 0.05], [0.3, 0.3, 0.3], (num_objects // 2, 3)),
        rng.uniform([-0.5, -0.4, 0.05], [-0.3, -0.2, 0.2], (num_objects // 2, 3)),
    ]
    points = np.r_[ground, boxes] @ rotation.T
    return points.astype(np.float32), rotation @ np.array([0, 0, 1.0]), num_ground


def test_segment_plane_recovers_the_ground():
    rng = np.random.default_rng(0)
    points, normal, num_ground = tabletop(rng)
    fit = segment_plane(points, distance_threshold=0.01, num_iterations=200, seed=1)
    # Tilted by angle t, the fitted plane leaves the true one by sin(t) * 1.41 m at the corners of the
    # 2 x 2 m patch: that must stay inside the inlier threshold (measured: ~0.003 m at worst over 30 seeds).
    sin_tilt = np.linalg.norm(np.cross(fit.normal, normal))
    assert sin_tilt * np.sqrt(2) < 0.01
    # Unit length to float64 rounding: the 3x3 SVD applies a few dozen rotations (sqrt(30) ~ 5.5 steps).
    assert abs(np.linalg.norm(fit.normal) - 1) <= rounding_tolerance(np.float64, 1.0, 30)
    assert fit.inlier_mask[:num_ground].mean() > 0.99  # the ground is found ...
    assert not fit.inlier_mask[num_ground:].any()  # ... and no object point is called ground
    # Inliers are exactly the points within the threshold of the returned plane.
    distances = np.abs(points.astype(np.float64) @ fit.coefficients[:3] + fit.coefficients[3])
    np.testing.assert_array_equal(fit.inlier_mask, distances <= 0.01)


def test_remove_ground_plane_keeps_objects_and_honours_axis():
    rng = np.random.default_rng(1)
    points, _, num_ground = tabletop(rng)
    wall = np.c_[rng.uniform(-1, 1, 5000), np.full(5000, 1.5), rng.uniform(0, 2, 5000)].astype(np.float32)
    scene = np.r_[points, wall]  # the wall is the biggest plane, but it is not ground
    kept = remove_ground_plane(scene, distance_threshold=0.01, axis=(0, 0, 1), max_angle_deg=15, seed=2)
    assert (
        len(kept)
        == len(scene)
        - segment_plane(scene, distance_threshold=0.01, axis=(0, 0, 1), max_angle_deg=15, seed=2).num_inliers
    )
    assert len(kept) < len(wall) + 700  # the ground went ...
    assert len(kept) >= len(wall) + 550  # ... the wall and (almost all of) the objects stayed
    unconstrained = segment_plane(scene, distance_threshold=0.01, seed=2)
    assert abs(unconstrained.normal[1]) > 0.99  # without the axis, the wall wins


def test_segment_plane_is_reproducible_and_validates():
    points, _, _ = tabletop(np.random.default_rng(2))
    first = segment_plane(points, seed=5)
    np.testing.assert_array_equal(first.coefficients, segment_plane(points, seed=5).coefficients)
    with pytest.raises(ValueError, match="distance_threshold"):
        segment_plane(points, distance_threshold=0)


def knn_mean_tolerance(points: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """Per point, how far the float32 mean kNN distance can be from the float64 one (`nearest`: the
    exact sorted distances to the k nearest). Squared distances come from |a|^2 - 2 a.b + |b|^2 in
    float32: ~11 roundings at (|a| + |b|)^2 <= (2|a| + d_k)^2 (the cancellation is why it is not
    relative to d); the square root turns that into sqrt_tolerance at the nearest distance; the mean
    of k adds k + 1 float32 additions at k * d_k."""
    k = nearest.shape[1]
    norms = np.linalg.norm(points.astype(np.float64), axis=1)
    squared = rounding_tolerance(np.float32, (2 * norms + nearest[:, -1]) ** 2, 11)
    mean = rounding_tolerance(np.float32, k * nearest[:, -1], k + 2) / k
    return sqrt_tolerance(nearest[:, 0] ** 2, squared) + mean + ulp(np.float32, nearest[:, -1])


def test_mean_neighbor_distances_match_brute_force():
    points = np.random.default_rng(3).normal(size=(700, 3)).astype(np.float32)
    got = mean_neighbor_distances(points, 8, chunk_size=128)
    dist = np.sqrt(((points[:, None].astype(np.float64) - points[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    nearest = np.sort(dist, axis=1)[:, :8]
    assert_within(got, nearest.mean(axis=1), knn_mean_tolerance(points, nearest))


def test_grid_pruned_neighbors_match_brute_force(monkeypatch):
    """Above the brute-force size, grid groups + exactness check + retries give the same answer."""
    from runtime.robot.pointcloud import outliers

    rng = np.random.default_rng(5)
    dense = rng.normal(0, 0.05, (1200, 3))
    flat = np.c_[rng.uniform(-1, 1, (600, 2)), np.zeros(600)]
    sparse = rng.uniform(-3, 3, (40, 3))  # low density: these fail the exactness test and are retried
    points = np.r_[dense, flat, sparse].astype(np.float32)
    monkeypatch.setattr(outliers, "_BRUTE_FORCE_MAX_POINTS", 100)
    retried = []
    brute_force = outliers._brute_force
    monkeypatch.setattr(
        outliers,
        "_brute_force",
        lambda xyz, rows, *a: retried.append(len(rows)) or brute_force(xyz, rows, *a),
    )
    got = mean_neighbor_distances(points, 10)
    assert retried and 0 < retried[-1] < len(points) // 2  # the pruned path ran, with some retries
    dist = np.sqrt(((points[:, None].astype(np.float64) - points[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    nearest = np.sort(dist, axis=1)[:, :10]
    assert_within(got, nearest.mean(axis=1), knn_mean_tolerance(points, nearest))


def test_statistical_outlier_mask_drops_isolated_points():
    rng = np.random.default_rng(4)
    cluster = rng.normal(0, 0.05, size=(2000, 3))
    outliers = rng.uniform(1, 3, size=(30, 3)) * rng.choice([-1, 1], size=(30, 3))
    points = np.r_[cluster, outliers].astype(np.float32)
    keep = statistical_outlier_mask(points, num_neighbors=16, std_ratio=2.0)
    assert not keep[2000:].any()
    assert keep[:2000].mean() > 0.97
    # The rule, restated: keep iff mean kNN distance <= mean + ratio * std.
    distances = mean_neighbor_distances(points, 16).astype(np.float64)
    np.testing.assert_array_equal(keep, distances <= distances.mean() + 2.0 * distances.std())
    with pytest.raises(ValueError, match="num_neighbors"):
        statistical_outlier_mask(points[:5], num_neighbors=5)
