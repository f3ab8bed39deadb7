"""The depth -> cloud -> crop -> voxel -> FPS pipeline as Ray Data stages, and a synthetic depth source.

`build_pointcloud_pipeline(ds, config)` turns a dataset of depth frames (a `depth` column of (H, W)
arrays or 16-bit PNG bytes) into fixed-size clouds of `num_samples` points, ready for a PointNet
policy. Consecutive map_batches stages with one batch size fuse into a single Ray Data operator, so
a batch travels depth -> FPS inside one task without touching the object store in between.
`synthetic_depth_frames` renders a tabletop scene (table, floor, moving boxes, sensor noise and
dropouts) for demos, tests and benchmarks, with no data download.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime import metrics
from runtime.robot import schema
from runtime.robot.pointcloud.projection import CameraIntrinsics
from runtime.robot.pointcloud.stages import CropBox, DepthToPoints, FarthestPointSample, VoxelDownsample


@dataclass(kw_only=True, slots=True)
class PointCloudPipelineConfig:
    height: int = 128
    width: int = 128
    fov_y_deg: float = 60.0
    depth_scale: float = 0.001  # raw depth arrays in millimetres
    max_depth: float = 3.0
    crop_min: tuple[float, float, float] = (-0.6, -0.6, 0.3)  # camera frame, metres
    crop_max: tuple[float, float, float] = (0.6, 0.6, 1.2)
    voxel_size: float = 0.01
    num_samples: int = 512
    batch_size: int = 32
    record_metrics: bool = True

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be >= 1, got {self.height}x{self.width}")
        if not self.voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {self.voxel_size}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def intrinsics(self) -> CameraIntrinsics:
        return CameraIntrinsics.from_fov(width=self.width, height=self.height, fov_y_deg=self.fov_y_deg)


class CountPoints:
    """Exports the points and frames seen at one pipeline stage as Ray counters, and records each
    row's count there in a `num_points.<stage>` column (for the run summary)."""

    def __init__(self, *, stage: str, pipeline: str = "pointcloud", column: str = schema.POINTCLOUD) -> None:
        self.stage, self.pipeline, self.column = stage, pipeline, column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = batch[f"{self.column}.num_points"]
        batch[f"num_points.{self.stage}"] = counts.astype(np.int32)
        num_points = int(np.sum(counts))
        tags = {"pipeline": self.pipeline, "stage": self.stage}
        if num_points:
            metrics.counter(
                "strata_data_stage_points_total", "points seen by a point-cloud stage", ("pipeline", "stage")
            ).inc(num_points, tags)
        if len(batch[self.column]):
            metrics.counter(
                "strata_data_stage_rows_total", "frames seen by a point-cloud stage", ("pipeline", "stage")
            ).inc(len(batch[self.column]), tags)
        return batch


def build_pointcloud_pipeline(ds, config: PointCloudPipelineConfig):
    """depth -> points -> crop -> voxel means -> FPS(num_samples); adds `observation.pointcloud` columns."""
    stages = [
        DepthToPoints(
            intrinsics=config.intrinsics(), depth_scale=config.depth_scale, max_depth=config.max_depth
        ),
        CountPoints(stage="depth") if config.record_metrics else None,
        CropBox(min_bound=config.crop_min, max_bound=config.crop_max),
        VoxelDownsample(voxel_size=config.voxel_size),
        FarthestPointSample(num_samples=config.num_samples),
        CountPoints(stage="sampled") if config.record_metrics else None,
    ]
    for stage in stages:
        if stage is not None:
            ds = ds.map_batches(stage, batch_size=config.batch_size, batch_format="numpy")
    return ds


class SyntheticDepth:
    """frame index -> a 16-bit millimetre depth image of a tabletop scene seen from above."""

    def __init__(
        self, *, height: int = 128, width: int = 128, fov_y_deg: float = 60.0, seed: int = 0
    ) -> None:
        self.height, self.width, self.seed = height, width, seed
        intrinsics = CameraIntrinsics.from_fov(width=width, height=height, fov_y_deg=fov_y_deg)
        self.ray_x = ((np.arange(width) - intrinsics.cx) / intrinsics.fx).astype(np.float32)
        self.ray_y = ((np.arange(height) - intrinsics.cy) / intrinsics.fy).astype(np.float32)

    def render(self, frame_index: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, frame_index))
        table = (
            np.float32(0.9) + np.float32(0.1) * self.ray_y[:, None] + np.zeros((1, self.width), np.float32)
        )
        on_table = (np.abs(self.ray_x[None, :] * table) < 0.45) & (np.abs(self.ray_y[:, None] * table) < 0.45)
        depth = np.where(on_table, table, np.float32(1.8))  # floor beyond the table edge
        phase = 2 * math.pi * (frame_index % 200) / 200
        for box in range(3):
            center_x = 0.25 * math.cos(phase + 2.1 * box)
            center_y = 0.25 * math.sin(phase + 2.1 * box)
            size, top = 0.06 + 0.02 * box, 0.9 - 0.05 - 0.04 * box
            inside = (np.abs(self.ray_x[None, :] * top - center_x) < size) & (
                np.abs(self.ray_y[:, None] * top - center_y) < size
            )
            depth = np.where(inside, np.float32(top), depth)
        depth = depth + rng.normal(0, 0.002, depth.shape).astype(np.float32)
        depth[rng.random(depth.shape) < 0.02] = 0.0  # dropouts: no return
        return np.clip(np.rint(depth * 1000), 0, 65535).astype(np.uint16)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = batch["id"]
        return {
            schema.FRAME_INDEX: frames.astype(np.int64),
            "depth": np.stack([self.render(int(frame)) for frame in frames]),
        }


def synthetic_depth_frames(
    num_frames: int,
    *,
    height: int = 128,
    width: int = 128,
    fov_y_deg: float = 60.0,
    batch_size: int = 32,
    seed: int = 0,
):
    """ray.data.Dataset of `num_frames` rows: frame_index and a (height, width) uint16 mm `depth` image."""
    import ray.data

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    render = SyntheticDepth(height=height, width=width, fov_y_deg=fov_y_deg, seed=seed)
    num_blocks = -(-num_frames // batch_size)  # one batch per block: parallel tasks, no re-batching
    return ray.data.range(num_frames, override_num_blocks=num_blocks).map_batches(
        render, batch_size=batch_size, batch_format="numpy"
    )
