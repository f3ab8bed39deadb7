"""Point-cloud files: PCD (ascii/binary/binary_compressed), PLY (ascii/binary), KITTI .bin, LAS/LAZ.

    points, fields = read_pointcloud("scan.pcd")            # (N, C) float32, ["x", "y", "z", ...]
    write_pointcloud("scan.laz", points, fields)
    ds = read_pointclouds("scans/")                         # Ray Data, one row per file (or chunk)
    write_pointclouds(ds, "out/", file_format="ply")

Rows follow the episode schema's point-cloud columns (`observation.pointcloud` flat list<float32>,
`.num_points`, `.fields`) plus `path` and `chunk_index`. Files stream: headers line by line, bodies
in chunks of `max_points_per_row` points, so a large LAS tile becomes several rows instead of one
whole-file load. Malformed or truncated files raise PointCloudFileError naming the file and the problem.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
from ray.data.datasource import FileBasedDatasource, RowBasedFileDatasink

from runtime.robot import schema
from runtime.robot.pointcloud import io_las, io_pcd, io_ply
from runtime.robot.pointcloud.io_common import DEFAULT_CHUNK_POINTS, PointCloudFileError

__all__ = [
    "FILE_FORMATS",
    "PointCloudDatasink",
    "PointCloudDatasource",
    "PointCloudFileError",
    "iter_pointcloud",
    "read_pointcloud",
    "read_pointclouds",
    "write_pointcloud",
    "write_pointclouds",
]

FILE_FORMATS = {"pcd": "pcd", "ply": "ply", "bin": "kitti", "las": "las", "laz": "laz"}
_READERS = {"pcd": io_pcd.iter_pcd, "ply": io_ply.iter_ply, "kitti": io_las.iter_kitti}
_READERS.update({"las": io_las.iter_las, "laz": io_las.iter_las})
_EXTENSIONS = {"pcd": "pcd", "ply": "ply", "kitti": "bin", "las": "las", "laz": "laz"}


def detect_format(path: str) -> str:
    extension = os.path.splitext(str(path))[1].lower().lstrip(".")
    if extension not in FILE_FORMATS:
        raise ValueError(
            f"{path}: unknown point-cloud file extension {extension!r}; known: {sorted(FILE_FORMATS)}"
        )
    return FILE_FORMATS[extension]


def _check_format(file_format: str) -> str:
    if file_format not in _READERS:
        raise ValueError(f"file_format must be one of {sorted(_READERS)}, got {file_format!r}")
    return file_format


def iter_pointcloud(
    source: str | BinaryIO,
    *,
    file_format: str | None = None,
    name: str | None = None,
    chunk_points: int = DEFAULT_CHUNK_POINTS,
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Yield (points (n, C) float32, fields) chunks of one file (a path or an open binary stream)."""
    if chunk_points < 1:
        raise ValueError(f"chunk_points must be >= 1, got {chunk_points}")
    if isinstance(source, (str, os.PathLike)):
        file_format = _check_format(file_format or detect_format(str(source)))
        with open(source, "rb") as stream:
            yield from _READERS[file_format](stream, name or str(source), chunk_points)
        return
    if file_format is None:
        raise ValueError("file_format is required when reading from a stream")
    yield from _READERS[_check_format(file_format)](source, name or "<stream>", chunk_points)


def read_pointcloud(
    source: str | BinaryIO, *, file_format: str | None = None
) -> tuple[np.ndarray, list[str]]:
    """One whole cloud: ((N, C) float32 points, field names)."""
    chunks = list(iter_pointcloud(source, file_format=file_format))
    fields = chunks[0][1]
    return (chunks[0][0] if len(chunks) == 1 else np.concatenate([c for c, _ in chunks])), fields


def _write(stream: BinaryIO, points, fields: list[str], file_format: str, encoding: str | None) -> None:
    if file_format == "pcd":
        io_pcd.write_pcd(stream, points, fields, encoding or "binary")
    elif file_format == "ply":
        io_ply.write_ply(stream, points, fields, encoding or "binary_little_endian")
    elif file_format == "kitti":
        io_las.write_kitti(stream, points, fields)
    else:  # laspy seeks back to patch its header, so build the file in memory first
        buffer = io.BytesIO()
        io_las.write_las(buffer, points, fields, compress=file_format == "laz")
        stream.write(buffer.getvalue())


def write_pointcloud(
    path: str,
    points: np.ndarray,
    fields: Sequence[str] = ("x", "y", "z"),
    *,
    file_format: str | None = None,
    encoding: str | None = None,
) -> None:
    """Write one cloud; the format comes from the extension unless given. encoding: PCD 'ascii' |
    'binary' | 'binary_compressed', PLY 'ascii' | 'binary_little_endian'."""
    file_format = _check_format(file_format or detect_format(path))
    with open(path, "wb") as stream:
        _write(stream, points, list(fields), file_format, encoding)


def _rows_table(path: str, chunks: list[tuple[int, np.ndarray, list[str]]]) -> pa.Table:
    counts = np.array([len(points) for _, points, _ in chunks], dtype=np.int64)
    values = np.concatenate([points.reshape(-1) for _, points, _ in chunks]).astype(np.float32, copy=False)
    widths = np.array([points.shape[1] for _, points, _ in chunks], dtype=np.int64)
    offsets = np.r_[0, np.cumsum(counts * widths)].astype(np.int32)
    return pa.table(
        {
            "path": pa.array([path] * len(chunks)),
            "chunk_index": pa.array([index for index, _, _ in chunks], pa.int64()),
            schema.POINTCLOUD: pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32())),
            schema.POINTCLOUD_NUM_POINTS: pa.array(counts.astype(np.int32)),
            schema.POINTCLOUD_FIELDS: pa.array([",".join(fields) for _, _, fields in chunks]),
        }
    )


class PointCloudDatasource(FileBasedDatasource):
    """Ray Data datasource over point-cloud files: one row per file, or per max_points_per_row chunk."""

    _FILE_EXTENSIONS = sorted(FILE_FORMATS)

    def __init__(
        self, paths, *, max_points_per_row: int = DEFAULT_CHUNK_POINTS, **file_based_args: Any
    ) -> None:
        super().__init__(paths, **file_based_args)
        if max_points_per_row < 1:
            raise ValueError(f"max_points_per_row must be >= 1, got {max_points_per_row}")
        self.max_points_per_row = max_points_per_row

    def _open_input_source(self, filesystem, path: str, **open_args):
        if detect_format(path) in ("las", "laz"):  # laspy needs random access (LAZ chunk table)
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f, path: str):
        chunks = iter_pointcloud(
            f, file_format=detect_format(path), name=path, chunk_points=self.max_points_per_row
        )
        for index, (points, fields) in enumerate(chunks):
            yield _rows_table(path, [(index, points, fields)])


def read_pointclouds(
    paths: str | list[str], *, max_points_per_row: int = DEFAULT_CHUNK_POINTS, **read_args: Any
):
    """ray.data.Dataset of point-cloud rows from files or directories (extensions in FILE_FORMATS)."""
    import ray.data

    return ray.data.read_datasource(
        PointCloudDatasource(paths, max_points_per_row=max_points_per_row), **read_args
    )


class PointCloudDatasink(RowBasedFileDatasink):
    """Writes each row's cloud (`column`, flat or (N, C), split by its `.fields` column) to one file."""

    def __init__(
        self,
        path: str,
        *,
        file_format: str = "pcd",
        encoding: str | None = None,
        column: str = schema.POINTCLOUD,
    ) -> None:
        self.format, self.encoding, self.column = _check_format(file_format), encoding, column
        super().__init__(path, file_format=_EXTENSIONS[self.format])

    def write_row_to_file(self, row: dict[str, Any], file) -> None:
        fields_value = row.get(f"{self.column}.fields") or schema.XYZ_FIELDS
        fields = str(fields_value).split(",")
        points = np.asarray(row[self.column], dtype=np.float32).reshape(-1, len(fields))
        _write(file, points, fields, self.format, self.encoding)


def write_pointclouds(
    ds, path: str, *, file_format: str = "pcd", encoding: str | None = None, **write_args
) -> None:
    """Write every row of a dataset as one point-cloud file under path."""
    ds.write_datasink(PointCloudDatasink(path, file_format=file_format, encoding=encoding), **write_args)
