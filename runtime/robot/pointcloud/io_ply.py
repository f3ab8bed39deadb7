"""PLY point clouds: the `vertex` element of ascii, binary_little_endian and binary_big_endian files.

Reads every scalar vertex property (x, y, z first; e.g. intensity, red/green/blue) and stops after
the vertex element, so faces or other trailing elements cost nothing. Writes ascii or
binary_little_endian with float properties.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from runtime.robot.pointcloud.io_common import (
    DEFAULT_CHUNK_POINTS,
    StreamReader,
    check_points,
    records_to_points,
)

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
ENCODINGS = ("ascii", "binary_little_endian")


def _header(reader: StreamReader) -> tuple[str, int, list[tuple[str, str]]]:
    magic = reader.readline()
    if magic is None or magic.strip() != b"ply":
        raise reader.error("not a PLY file (first line is not 'ply')")
    encoding, elements = "", []  # [(name, count, [(property, type)])]
    while True:
        line = reader.readline()
        if line is None:
            raise reader.error("truncated PLY header: no end_header line")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            encoding = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise reader.error("PLY property before any element")
            if words[1] == "list":
                elements[-1][2].append((words[-1], "list"))
            else:
                if words[1] not in _TYPES:
                    raise reader.error(f"PLY property {words[2]!r} has unknown type {words[1]!r}")
                elements[-1][2].append((words[2], words[1]))
    if not elements or elements[0][0] != "vertex":
        raise reader.error("PLY file must start with a vertex element")
    _, num_points, properties = elements[0]
    if any(kind == "list" for _, kind in properties):
        raise reader.error("PLY vertex element has list properties; not a point cloud")
    names = [name for name, _ in properties]
    if names[:3] != ["x", "y", "z"]:
        raise reader.error(f"PLY vertex properties must start with x y z, got {names}")
    return encoding, num_points, properties


def iter_ply(
    stream: BinaryIO, name: str, chunk_points: int = DEFAULT_CHUNK_POINTS
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Yield (points (n, C) float32, fields) chunks of a PLY file's vertices."""
    reader = StreamReader(stream, name)
    encoding, num_points, properties = _header(reader)
    fields = [prop for prop, _ in properties]
    if encoding in ("binary_little_endian", "binary_big_endian"):
        order = "<" if encoding == "binary_little_endian" else ">"
        dtype = np.dtype([(prop, order + _TYPES[kind]) for prop, kind in properties])
        for records in reader.read_records(dtype, num_points, "PLY vertex data", chunk_points):
            yield records_to_points(records, fields), fields
        return
    if encoding != "ascii":
        raise reader.error(f"unknown PLY format {encoding!r}")
    rows: list[list[str]] = []
    for read in range(num_points):
        line = reader.readline()
        if line is None:
            raise reader.error(
                f"truncated PLY vertex data: header says {num_points} points, file holds {read}"
            )
        values = line.split()
        if len(values) != len(fields):
            raise reader.error(f"PLY vertex {read} has {len(values)} values, expected {len(fields)}")
        rows.append(values)
        if len(rows) == chunk_points:
            yield np.array(rows, dtype=np.float64).astype(np.float32), fields
            rows = []
    if rows or num_points == 0:
        yield np.array(rows, dtype=np.float64).astype(np.float32).reshape(-1, len(fields)), fields


def write_ply(
    stream: BinaryIO, points: np.ndarray, fields: list[str], encoding: str = "binary_little_endian"
) -> None:
    points = check_points(points, fields).astype(np.float32, copy=False)
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    properties = "".join(f"property float {field}\n" for field in fields)
    header = f"ply\nformat {encoding} 1.0\ncomment written by strata\nelement vertex {len(points)}\n{properties}end_header\n"
    stream.write(header.encode("ascii"))
    if encoding == "ascii":
        np.savetxt(stream, points, fmt="%.9g")
    else:
        stream.write(np.ascontiguousarray(points, dtype="<f4").tobytes())
