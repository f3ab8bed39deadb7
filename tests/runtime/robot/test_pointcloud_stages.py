"""The point-cloud ops as Ray Data map_batches stages: every layout in, the same layout out, same results."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tolerances import dtype_steps_rtol, rounding_tolerance

from runtime.robot import schema
from runtime.robot.pointcloud.ground import remove_ground_plane
from runtime.robot.pointcloud.pipeline import (
    PointCloudPipelineConfig,
    SyntheticDepth,
    build_pointcloud_pipeline,
)
from runtime.robot.pointcloud.projection import CameraIntrinsics, depth_to_points
from runtime.robot.pointcloud.sampling import farthest_point_sample
from runtime.robot.pointcloud.stages import (
    CropBox,
    DepthToPoints,
    FarthestPointSample,
    NormalizePoints,
    RemoveGroundPlane,
    RemoveStatisticalOutliers,
    VoxelDownsample,
)
from runtime.robot.pointcloud.transforms import crop_box
from runtime.robot.pointcloud.voxel import voxel_downsample

PC = schema.POINTCLOUD


def ragged_batch(rng, sizes, num_fields=3):
    column = np.empty(len(sizes), dtype=object)
    for row, size in enumerate(sizes):
        column[row] = rng.uniform(-1, 1, (size, num_fields)).astype(np.float32)
    return {PC: column}


def test_stages_on_ragged_batch_match_the_functions():
    rng = np.random.default_rng(0)
    batch = ragged_batch(rng, [400, 0, 900])
    clouds = list(batch[PC])
    out = CropBox(min_bound=(-0.5,) * 3, max_bound=(0.5,) * 3)(dict(batch))
    for cloud, got in zip(clouds, out[PC]):
        np.testing.assert_array_equal(got, crop_box(cloud, (-0.5,) * 3, (0.5,) * 3))
    out = VoxelDownsample(voxel_size=0.2)(dict(batch))
    for cloud, got in zip(clouds, out[PC]):
        np.testing.assert_array_equal(got, voxel_downsample(cloud, 0.2))  # same sums in the same order
    assert out[f"{PC}.num_points"].tolist() == [len(c) for c in out[PC]]
    out = FarthestPointSample(num_samples=64)(dict(batch))
    assert out[f"{PC}.num_points"].tolist() == [64, 0, 64]
    np.testing.assert_array_equal(out[PC][2], clouds[2][farthest_point_sample(clouds[2], 64)])


def test_flat_schema_rows_stay_flat_and_use_the_fields_column():
    rng = np.random.default_rng(1)
    clouds = [rng.uniform(0, 1, (n, 4)).astype(np.float32) for n in (100, 30)]
    column = np.empty(2, dtype=object)
    column[:] = [cloud.reshape(-1) for cloud in clouds]
    batch = {PC: column, f"{PC}.fields": np.array(["x,y,z,intensity"] * 2)}
    out = FarthestPointSample(num_samples=16)(batch)
    assert out[PC].shape == (2, 64)  # fixed size now: a (B, 16 * 4) tensor of flat rows
    np.testing.assert_array_equal(out[PC][1].reshape(16, 4), clouds[1][farthest_point_sample(clouds[1], 16)])


def test_normalize_ground_and_outlier_stages():
    rng = np.random.default_rng(2)
    plane = np.c_[rng.uniform(-1, 1, (2000, 2)), rng.normal(0, 0.002, 2000)]
    blob = rng.normal([0, 0, 0.5], 0.05, (300, 3))
    cloud = np.r_[plane, blob, [[5, 5, 5]]].astype(np.float32)
    batch = {PC: np.array([cloud])}  # a (1, N, 3) tensor column
    out = RemoveGroundPlane(distance_threshold=0.01, axis=(0, 0, 1))(dict(batch))
    np.testing.assert_array_equal(
        out[PC][0], remove_ground_plane(cloud, distance_threshold=0.01, axis=(0, 0, 1))
    )
    assert 290 <= len(out[PC][0]) <= 302
    out = RemoveStatisticalOutliers(num_neighbors=8)(dict(out))
    assert not np.any(np.all(out[PC][0] == 5, axis=1))  # the lone far point is gone
    out = NormalizePoints()(out)
    # as test_normalize_points_into_unit_sphere: ~12 float32 roundings at 1.0
    assert abs(np.linalg.norm(out[PC][0], axis=1).max() - 1.0) <= rounding_tolerance(np.float32, 1.0, 12)
    assert out[f"{PC}.center"].shape == (1, 3) and out[f"{PC}.scale"].shape == (1,)


def test_depth_stage_reads_arrays_and_png_bytes():
    intrinsics = CameraIntrinsics.from_fov(width=32, height=24, fov_y_deg=60)
    depth = SyntheticDepth(height=24, width=32, seed=3).render(0)
    png = np.empty(1, dtype=object)
    png[0] = schema.encode_depth(depth)
    from_array = DepthToPoints(intrinsics=intrinsics, depth_scale=0.001)({"depth": depth[None]})
    from_png = DepthToPoints(intrinsics=intrinsics)({"depth": png})
    want = depth_to_points(depth, intrinsics, depth_scale=0.001)
    assert "depth" not in from_array
    np.testing.assert_array_equal(np.asarray(from_array[PC][0]), want)
    # z = mm / 1000 (PNG: one rounding) vs mm * float32(0.001) (array: 0.001's rounding and the
    # product's), half a float32 step each; x and y round once more each side: 5 half steps, relative
    np.testing.assert_allclose(np.asarray(from_png[PC][0]), want, rtol=dtype_steps_rtol(np.float32, 2.5), atol=0)


def test_stage_config_errors_name_the_field():
    with pytest.raises(ValueError, match="voxel_size"):
        VoxelDownsample(voxel_size=0)
    with pytest.raises(ValueError, match="num_samples"):
        FarthestPointSample(num_samples=0)
    with pytest.raises(ValueError, match="no point-cloud column"):
        CropBox(min_bound=(0,) * 3, max_bound=(1,) * 3)({"other": np.zeros(1)})
    with pytest.raises(ValueError, match="voxel_size"):
        PointCloudPipelineConfig(voxel_size=-1)


def test_pipeline_runs_on_ray_data(ray_local):
    import ray.data

    config = PointCloudPipelineConfig(height=48, width=64, num_samples=128, batch_size=8, voxel_size=0.02)
    render = SyntheticDepth(height=48, width=64)
    frames = ray.data.range(20).map_batches(render, batch_size=8)
    rows = build_pointcloud_pipeline(frames, config).take_all()
    assert len(rows) == 20
    row = rows[0]
    assert np.asarray(row[PC]).shape == (128, 3)
    assert row[f"{PC}.num_points"] == 128 and row["num_points.depth"] > 2000
    # The same frame through the functions, in process.
    depth = render.render(int(row[schema.FRAME_INDEX]))
    points = depth_to_points(depth, config.intrinsics(), depth_scale=0.001, max_depth=config.max_depth)
    points = voxel_downsample(crop_box(points, config.crop_min, config.crop_max), config.voxel_size)
    # the batched stages sum and sample exactly what the per-frame functions do
    np.testing.assert_array_equal(np.asarray(row[PC]), points[farthest_point_sample(points, 128)])
