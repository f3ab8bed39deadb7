"""LAS/LAZ (via laspy; LAZ through its lazrs backend) and KITTI velodyne .bin point clouds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from runtime.robot.pointcloud.io_common import (
    DEFAULT_CHUNK_POINTS,
    PointCloudFileError,
    StreamReader,
    check_points,
)

KITTI_FIELDS = ["x", "y", "z", "intensity"]
_KITTI_RECORD = np.dtype("<f4")


def iter_kitti(
    stream: BinaryIO, name: str, chunk_points: int = DEFAULT_CHUNK_POINTS
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """KITTI .bin: bare float32 (x, y, z, intensity) records; a partial record means truncation."""
    reader = StreamReader(stream, name)
    record_bytes = 4 * _KITTI_RECORD.itemsize
    yielded = False
    while True:
        data = reader.read_upto(chunk_points * record_bytes)
        if len(data) % record_bytes:
            raise reader.error(
                f"truncated KITTI .bin: {reader.offset} bytes is not a multiple of the {record_bytes}-byte "
                "(x, y, z, intensity) float32 record"
            )
        if data or not yielded:
            yield np.frombuffer(data, dtype=_KITTI_RECORD).reshape(-1, 4).copy(), KITTI_FIELDS
            yielded = True
        if len(data) < chunk_points * record_bytes:
            return


def write_kitti(stream: BinaryIO, points: np.ndarray, fields: list[str]) -> None:
    if list(fields) != KITTI_FIELDS:
        raise ValueError(f"KITTI .bin holds exactly fields {KITTI_FIELDS}, got {fields}")
    stream.write(np.ascontiguousarray(check_points(points, fields), dtype="<f4").tobytes())


def _las_fields(point_format) -> list[str]:
    names = set(point_format.dimension_names)
    return ["x", "y", "z", "intensity"] + (["red", "green", "blue"] if "red" in names else [])


def iter_las(
    stream: BinaryIO, name: str, chunk_points: int = DEFAULT_CHUNK_POINTS
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """LAS/LAZ points as scaled float32 x, y, z plus intensity (and red, green, blue when present)."""
    import laspy

    try:
        with laspy.open(stream, closefd=False) as reader:
            fields = _las_fields(reader.header.point_format)
            total, seen = reader.header.point_count, 0
            for chunk in reader.chunk_iterator(chunk_points):
                points = np.empty((len(chunk), len(fields)), dtype=np.float32)
                for column, field in enumerate(fields):
                    points[:, column] = getattr(chunk, field)
                seen += len(chunk)
                yield points, fields
            if seen < total:
                raise PointCloudFileError(
                    f"{name}: truncated LAS: header says {total} points, file holds {seen}"
                )
            if total == 0:
                yield np.empty((0, len(fields)), np.float32), fields
    except (laspy.errors.LaspyException, ValueError, EOFError, RuntimeError) as error:  # lazrs: RuntimeError
        if isinstance(error, PointCloudFileError):
            raise
        raise PointCloudFileError(f"{name}: unreadable LAS/LAZ: {error}") from error


def write_las(stream: BinaryIO, points: np.ndarray, fields: list[str], compress: bool = False) -> None:
    """Point format 3 (with rgb) or 1, millimetre scale; compress=True writes LAZ (needs lazrs)."""
    import laspy

    points = check_points(points, fields)
    extra = [field for field in fields[3:] if field not in ("intensity", "red", "green", "blue")]
    if extra:
        raise ValueError(f"LAS stores x, y, z, intensity, red, green, blue; cannot store {extra}")
    header = laspy.LasHeader(point_format=3 if "red" in fields else 1, version="1.2")
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = points[:, :3].min(axis=0).astype(np.float64) if len(points) else np.zeros(3)
    las = laspy.LasData(header)
    las.x, las.y, las.z = (points[:, axis].astype(np.float64) for axis in range(3))
    for field in fields[3:]:
        setattr(las, field, np.clip(np.rint(points[:, fields.index(field)]), 0, 65535).astype(np.uint16))
    las.write(stream, do_compress=compress)
