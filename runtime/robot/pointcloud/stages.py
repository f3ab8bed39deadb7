"""Point-cloud ops as Ray Data `map_batches` stages: callable classes over a batch dict of numpy arrays.

    ds = ds.map_batches(DepthToPoints(intrinsics=CameraIntrinsics(fx=..., fy=..., cx=..., cy=...)))
    ds = ds.map_batches(CropBox(min_bound=(-0.5, -0.5, 0.2), max_bound=(0.5, 0.5, 1.5)))
    ds = ds.map_batches(VoxelDownsample(voxel_size=0.01)).map_batches(FarthestPointSample(num_samples=512))

A stage reads the cloud column (default: the episode schema's `observation.pointcloud`) in whatever
layout Ray Data gives it (see `cloud.py`), writes the result back in the same layout (flat rows stay
flat) and keeps `<column>.num_points` current. Flat rows are split into points using the
`<column>.fields` column when the batch has one, else `num_fields`. Stages are stateless and cheap to
build, so they run as tasks; pass them to map_batches as classes with `fn_constructor_kwargs` to run
them in an actor pool instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from runtime.robot import schema
from runtime.robot.pointcloud.cloud import clouds_from_column, column_from_clouds, concat_clouds, split_clouds
from runtime.robot.pointcloud.ground import remove_ground_plane
from runtime.robot.pointcloud.outliers import remove_statistical_outliers
from runtime.robot.pointcloud.projection import CameraIntrinsics, depth_to_points_batch
from runtime.robot.pointcloud.sampling import farthest_point_sample_batch
from runtime.robot.pointcloud.transforms import crop_box_batch, normalize_points
from runtime.robot.pointcloud.voxel import voxel_downsample_batch

Batch = dict[str, np.ndarray]


class CloudStage:
    """Base class: read the clouds of a batch, transform them, write them back in the same layout."""

    def __init__(self, *, column: str = schema.POINTCLOUD, num_fields: int = 3) -> None:
        self.column = column
        self.num_fields = num_fields

    def _num_fields(self, batch: Batch) -> int:
        fields = batch.get(f"{self.column}.fields")
        if fields is not None and len(fields):
            return len(str(fields[0]).split(","))
        return self.num_fields

    def __call__(self, batch: Batch) -> Batch:
        if self.column not in batch:
            raise ValueError(f"batch has no point-cloud column {self.column!r}; columns: {sorted(batch)}")
        column = batch[self.column]
        flat = (column.dtype == object and len(column) and np.ndim(column[0]) == 1) or (
            column.dtype != object and column.ndim == 2
        )
        clouds = self.transform(clouds_from_column(column, self._num_fields(batch)), batch)
        batch[self.column] = column_from_clouds(clouds, flat=bool(flat))
        batch[f"{self.column}.num_points"] = np.array([len(cloud) for cloud in clouds], dtype=np.int32)
        return batch

    def transform(self, clouds: list[np.ndarray], batch: Batch) -> list[np.ndarray]:
        raise NotImplementedError


class DepthToPoints:
    """Depth images -> clouds in the camera frame. Reads `depth_column`: (B, H, W) arrays scaled by
    depth_scale, or 16-bit PNG bytes in millimetres (the episode schema's encoding, decoded to metres)."""

    def __init__(
        self,
        *,
        intrinsics: CameraIntrinsics,
        depth_column: str = "depth",
        column: str = schema.POINTCLOUD,
        depth_scale: float = 1.0,
        min_depth: float = 0.0,
        max_depth: float = math.inf,
        flat: bool = False,
        drop_depth: bool = True,
    ) -> None:
        self.intrinsics = intrinsics
        self.depth_column = depth_column
        self.column = column
        self.depth_scale = depth_scale
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.flat = flat
        self.drop_depth = drop_depth

    def __call__(self, batch: Batch) -> Batch:
        depths = batch[self.depth_column]
        scale = self.depth_scale
        if depths.dtype == object:  # encoded PNG bytes
            depths, scale = np.stack([schema.decode_depth(bytes(data)) for data in depths]), 1.0
        points, counts = depth_to_points_batch(
            np.asarray(depths),
            self.intrinsics,
            depth_scale=scale,
            min_depth=self.min_depth,
            max_depth=self.max_depth,
        )
        if self.drop_depth:
            del batch[self.depth_column]
        batch[self.column] = column_from_clouds(split_clouds(points, counts), flat=self.flat)
        batch[f"{self.column}.num_points"] = counts.astype(np.int32)
        return batch


class CropBox(CloudStage):
    """Keep the points inside an axis-aligned box (inclusive bounds)."""

    def __init__(self, *, min_bound: Sequence[float], max_bound: Sequence[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.min_bound, self.max_bound = tuple(min_bound), tuple(max_bound)

    def transform(self, clouds, batch):
        points, counts = concat_clouds(clouds)
        return split_clouds(*crop_box_batch(points, counts, self.min_bound, self.max_bound))


class VoxelDownsample(CloudStage):
    """Replace each occupied voxel's points by their mean (one bincount pass for the whole batch)."""

    def __init__(self, *, voxel_size: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        self.voxel_size = voxel_size

    def transform(self, clouds, batch):
        points, counts = concat_clouds(clouds)
        return split_clouds(*voxel_downsample_batch(points, counts, self.voxel_size))


class RemoveStatisticalOutliers(CloudStage):
    def __init__(self, *, num_neighbors: int = 20, std_ratio: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_neighbors, self.std_ratio = num_neighbors, std_ratio

    def transform(self, clouds, batch):
        return [
            remove_statistical_outliers(cloud, num_neighbors=self.num_neighbors, std_ratio=self.std_ratio)
            for cloud in clouds
        ]


class RemoveGroundPlane(CloudStage):
    """Drop the dominant plane's inliers (RANSAC); axis limits which planes count as ground."""

    def __init__(
        self,
        *,
        distance_threshold: float = 0.02,
        num_iterations: int = 100,
        axis: Sequence[float] | None = None,
        max_angle_deg: float = 20.0,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.options = dict(
            distance_threshold=distance_threshold,
            num_iterations=num_iterations,
            axis=axis,
            max_angle_deg=max_angle_deg,
            seed=seed,
        )

    def transform(self, clouds, batch):
        return [remove_ground_plane(cloud, **self.options) for cloud in clouds]


class FarthestPointSample(CloudStage):
    """Exactly num_samples points per cloud by FPS (fewer-point clouds repeat picks; empty stay empty)."""

    def __init__(self, *, num_samples: int, start_index: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.start_index = num_samples, start_index

    def transform(self, clouds, batch):
        picks = farthest_point_sample_batch(clouds, self.num_samples, start_index=self.start_index)
        return [cloud[index] for cloud, index in zip(clouds, picks)]


class NormalizePoints(CloudStage):
    """Center each cloud and scale it into the unit sphere; adds `<column>.center` and `<column>.scale`."""

    def __init__(self, *, center: str = "centroid", **kwargs) -> None:
        super().__init__(**kwargs)
        if center not in ("centroid", "bbox"):
            raise ValueError(f"center must be 'centroid' or 'bbox', got {center!r}")
        self.center = center

    def transform(self, clouds, batch):
        results = [normalize_points(cloud, center=self.center) for cloud in clouds]
        batch[f"{self.column}.center"] = np.array(
            [middle for _, middle, _ in results], dtype=np.float32
        ).reshape(-1, 3)
        batch[f"{self.column}.scale"] = np.array([scale for _, _, scale in results], dtype=np.float32)
        return [normalized for normalized, _, _ in results]
