"""Point clouds from the sim's depth cameras: one frame at a time (online, for a policy) or as Ray Data
stages over recorded episodes (offline, for the dataset); both run the same runtime.robot.pointcloud ops.

depth -> points (camera frame) -> world frame -> crop to the space above the table -> voxel-grid mean
-> farthest point sampling to a fixed `num_points`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from runtime.robot import schema
from runtime.robot.pointcloud.projection import CameraIntrinsics, depth_to_points, transform_points
from runtime.robot.pointcloud.sampling import farthest_point_sample
from runtime.robot.pointcloud.stages import (
    CloudStage,
    CropBox,
    DepthToPoints,
    FarthestPointSample,
    VoxelDownsample,
)
from runtime.robot.pointcloud.transforms import crop_box
from runtime.robot.pointcloud.voxel import voxel_downsample
from runtime.robot.sim.camera import CameraParams


@dataclass(kw_only=True, slots=True)
class CloudConfig:
    """World-frame crop over the Fetch table (top at z = 0.40 m; the crop starts just above it)."""

    crop_min_m: tuple[float, float, float] = (1.0, 0.35, 0.41)
    crop_max_m: tuple[float, float, float] = (1.6, 1.15, 0.95)
    voxel_size_m: float = 0.01
    num_points: int = 128

    def __post_init__(self) -> None:
        if self.voxel_size_m <= 0:
            raise ValueError(f"cloud.voxel_size_m must be > 0, got {self.voxel_size_m}")
        if self.num_points < 1:
            raise ValueError(f"cloud.num_points must be >= 1, got {self.num_points}")
        if any(low >= high for low, high in zip(self.crop_min_m, self.crop_max_m)):
            raise ValueError(f"cloud.crop_min_m must be below crop_max_m, got {self.crop_min_m} / {self.crop_max_m}")


def intrinsics_of(camera: CameraParams) -> CameraIntrinsics:
    return CameraIntrinsics(fx=camera.fx, fy=camera.fy, cx=camera.cx, cy=camera.cy)


def frame_cloud(depth_m: np.ndarray, camera: CameraParams, config: CloudConfig) -> np.ndarray:
    """(num_points, 3) float32 world-frame cloud of one depth image (zeros when nothing is in the crop).

    Depth is first quantized to whole millimetres, as the dataset stores it, so online and offline
    clouds agree.
    """
    depth_m = np.rint(np.asarray(depth_m, dtype=np.float32) * 1000.0) / 1000.0
    points = transform_points(depth_to_points(depth_m, intrinsics_of(camera)), camera.cam_to_world)
    points = crop_box(points, config.crop_min_m, config.crop_max_m)
    points = voxel_downsample(points, config.voxel_size_m)
    return fixed_size(points, config.num_points)


def fixed_size(points: np.ndarray, num_points: int) -> np.ndarray:
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    if len(points) == 0:
        return np.zeros((num_points, 3), np.float32)
    return points[farthest_point_sample(points, num_points)]


class CameraToWorld(CloudStage):
    """Ray Data stage: camera-frame clouds -> world frame, and the schema's `fields` column."""

    def __init__(self, *, cam_to_world, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cam_to_world = np.asarray(cam_to_world, dtype=np.float32)

    def transform(self, clouds, batch):
        batch[f"{self.column}.fields"] = np.array([schema.XYZ_FIELDS] * len(clouds), dtype=object)
        return [transform_points(cloud, self.cam_to_world) for cloud in clouds]


class DepthCloudStage:
    """Ray Data stage (pyarrow blocks of whole episodes): adds the schema's point-cloud columns from
    `observation.depth.<camera>`, running the runtime.robot.pointcloud stages in order."""

    def __init__(self, *, camera: dict, config: CloudConfig):
        params = CameraParams(**{**camera, "cam_to_world": np.asarray(camera["cam_to_world"])})
        self.depth_column = schema.depth_key(params.name)
        self.stages = [
            DepthToPoints(intrinsics=intrinsics_of(params), depth_column=self.depth_column),
            CameraToWorld(cam_to_world=params.cam_to_world),
            CropBox(min_bound=config.crop_min_m, max_bound=config.crop_max_m),
            VoxelDownsample(voxel_size=config.voxel_size_m),
            FarthestPointSample(num_samples=config.num_points),
        ]

    def __call__(self, table: pa.Table) -> pa.Table:
        depths = np.empty(table.num_rows, dtype=object)
        depths[:] = table.column(self.depth_column).to_pylist()
        batch = {self.depth_column: depths}
        for stage in self.stages:
            batch = stage(batch)
        clouds = [np.asarray(cloud, np.float32).reshape(-1) for cloud in batch[schema.POINTCLOUD]]
        columns = {
            schema.POINTCLOUD: pa.array(clouds, pa.list_(pa.float32())),
            schema.POINTCLOUD_NUM_POINTS: pa.array(batch[f"{schema.POINTCLOUD}.num_points"], pa.int32()),
            schema.POINTCLOUD_FIELDS: pa.array([schema.XYZ_FIELDS] * table.num_rows, pa.string()),
        }
        for name, column in columns.items():
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, column)
        return table


def add_cloud_stage(dataset, camera: CameraParams, config: CloudConfig):
    """Append the depth -> cloud stage for `camera` to a Ray Dataset of whole-episode blocks."""
    return dataset.map_batches(
        DepthCloudStage,
        fn_constructor_kwargs={"camera": camera.to_dict(), "config": config},
        batch_size=None,
        batch_format="pyarrow",
        concurrency=1,
    )
