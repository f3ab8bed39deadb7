"""Point-cloud ops (vectorized numpy/torch) and their Ray Data `map_batches` stages.

Functions work on one (N, C) float32 cloud (xyz first, then optional intensity / rgb channels);
`*_batch` variants work on concatenated clouds + counts. Names resolve lazily, so importing this
package costs nothing until an op is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CameraIntrinsics": "projection",
    "depth_to_points": "projection",
    "depth_to_points_batch": "projection",
    "transform_points": "projection",
    "crop_box": "transforms",
    "crop_box_mask": "transforms",
    "crop_box_batch": "transforms",
    "normalize_points": "transforms",
    "voxel_downsample": "voxel",
    "voxel_downsample_batch": "voxel",
    "statistical_outlier_mask": "outliers",
    "remove_statistical_outliers": "outliers",
    "PlaneFit": "ground",
    "segment_plane": "ground",
    "remove_ground_plane": "ground",
    "farthest_point_sample": "sampling",
    "farthest_point_sample_batch": "sampling",
    "DepthToPoints": "stages",
    "CropBox": "stages",
    "VoxelDownsample": "stages",
    "RemoveStatisticalOutliers": "stages",
    "RemoveGroundPlane": "stages",
    "FarthestPointSample": "stages",
    "NormalizePoints": "stages",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
