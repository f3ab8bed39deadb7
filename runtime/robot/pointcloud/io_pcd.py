"""PCD (PCL's Point Cloud Data, v0.7): ascii, binary and binary_compressed (LZF), read and write.

binary_compressed stores the fields column-major and LZF-compresses the block; we decompress in
Python (fine for per-frame files) and write valid LZF made of literal runs only (no compression,
about 3% larger, readable by PCL).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from runtime.robot.pointcloud.io_common import (
    DEFAULT_CHUNK_POINTS,
    StreamReader,
    check_points,
    records_to_points,
)

_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4", ("I", 8): "<i8"}
_TYPES.update({("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"})
ENCODINGS = ("ascii", "binary", "binary_compressed")


def _header(reader: StreamReader) -> dict[str, list[str]]:
    header: dict[str, list[str]] = {}
    while True:
        line = reader.readline()
        if line is None:
            raise reader.error("truncated PCD header: no DATA line")
        text = line.decode("ascii", errors="replace").strip()
        if not text or text.startswith("#"):
            continue
        key, *values = text.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            return header


def _dtype(reader: StreamReader, header: dict[str, list[str]]) -> tuple[np.dtype, list[str], int]:
    for key in ("FIELDS", "SIZE", "TYPE", "POINTS"):
        if key not in header:
            raise reader.error(f"PCD header has no {key} line")
    fields, sizes, types = header["FIELDS"], header["SIZE"], header["TYPE"]
    counts = header.get("COUNT", ["1"] * len(fields))
    if not len(fields) == len(sizes) == len(types) == len(counts):
        raise reader.error("PCD header FIELDS/SIZE/TYPE/COUNT lengths differ")
    columns = []
    for field, size, kind, count in zip(fields, sizes, types, counts):
        numpy_type = _TYPES.get((kind.upper(), int(size)))
        if numpy_type is None:
            raise reader.error(f"PCD field {field!r} has unsupported TYPE {kind} SIZE {size}")
        if int(count) != 1:
            columns.append((field, numpy_type, (int(count),)))
        else:
            columns.append((field, numpy_type))
    dtype = np.dtype(columns)
    scalar_fields = [column[0] for column in columns if len(column) == 2 and column[0] != "_"]
    if scalar_fields[:3] != ["x", "y", "z"]:
        raise reader.error(f"PCD fields must start with x y z, got {fields}")
    return dtype, scalar_fields, int(header["POINTS"][0])


def lzf_decompress(data: bytes, expected_size: int) -> bytes:
    out = bytearray()
    position, end = 0, len(data)
    while position < end:
        control = data[position]
        position += 1
        if control < 32:
            out += data[position : position + control + 1]
            position += control + 1
            continue
        length = control >> 5
        if length == 7:
            length += data[position]
            position += 1
        start = len(out) - ((control & 0x1F) << 8) - data[position] - 1
        position += 1
        if start < 0:
            raise ValueError("LZF back-reference before the start of the output")
        for index in range(start, start + length + 2):  # byte-wise: references may overlap the output
            out.append(out[index])
    if len(out) != expected_size:
        raise ValueError(f"LZF data decompressed to {len(out)} bytes, header says {expected_size}")
    return bytes(out)


def lzf_literal(data: bytes) -> bytes:
    """Valid LZF with literal runs only (<= 32 bytes each)."""
    out = bytearray()
    for start in range(0, len(data), 32):
        run = data[start : start + 32]
        out.append(len(run) - 1)
        out += run
    return bytes(out)


def iter_pcd(
    stream: BinaryIO, name: str, chunk_points: int = DEFAULT_CHUNK_POINTS
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Yield (points (n, C) float32, fields) chunks of a PCD file."""
    reader = StreamReader(stream, name)
    header = _header(reader)
    dtype, fields, num_points = _dtype(reader, header)
    encoding = header["DATA"][0].lower() if header["DATA"] else ""
    if encoding == "binary":
        for records in reader.read_records(dtype, num_points, "PCD binary body", chunk_points):
            yield records_to_points(records, fields), fields
    elif encoding == "ascii":
        yield from _iter_ascii(reader, dtype, fields, num_points, chunk_points)
    elif encoding == "binary_compressed":
        compressed_size, raw_size = struct.unpack("<II", reader.read_exact(8, "PCD compressed-block sizes"))
        if raw_size != dtype.itemsize * num_points:
            raise reader.error(
                f"PCD compressed block holds {raw_size} bytes, {num_points} points need "
                f"{dtype.itemsize * num_points}"
            )
        try:
            raw = lzf_decompress(reader.read_exact(compressed_size, "PCD compressed body"), raw_size)
        except (ValueError, IndexError) as error:
            raise reader.error(f"corrupt PCD compressed body: {error}") from None
        points = np.empty((num_points, len(fields)), dtype=np.float32)
        offset = 0
        for name_, (field_type, _) in dtype.fields.items():
            column = np.frombuffer(raw, dtype=field_type, count=num_points, offset=offset)
            offset += field_type.itemsize * num_points
            if name_ in fields:
                points[:, fields.index(name_)] = column if column.ndim == 1 else column[:, 0]
        yield points, fields
    else:
        raise reader.error(f"unknown PCD DATA encoding {encoding!r}")


def _iter_ascii(reader, dtype, fields, num_points, chunk_points):
    widths = [int(np.prod(dtype[name].shape)) if dtype[name].shape else 1 for name in dtype.names]
    columns = [int(np.sum(widths[: dtype.names.index(field)])) for field in fields]
    rows: list[list[float]] = []
    read = 0
    while read < num_points:
        line = reader.readline()
        if line is None:
            raise reader.error(
                f"truncated PCD ascii body: header says {num_points} points, file holds {read}"
            )
        values = line.split()
        if not values:
            continue
        if len(values) < sum(widths):
            raise reader.error(f"PCD ascii point {read} has {len(values)} values, expected {sum(widths)}")
        rows.append([float(values[column]) for column in columns])
        read += 1
        if len(rows) == chunk_points:
            yield np.array(rows, dtype=np.float32), fields
            rows = []
    if rows or num_points == 0:
        yield np.array(rows, dtype=np.float32).reshape(-1, len(fields)), fields


def write_pcd(stream: BinaryIO, points: np.ndarray, fields: list[str], encoding: str = "binary") -> None:
    points = check_points(points, fields).astype(np.float32, copy=False)
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    num = len(points)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(fields)}\nSIZE {' '.join(['4'] * len(fields))}\n"
        f"TYPE {' '.join(['F'] * len(fields))}\nCOUNT {' '.join(['1'] * len(fields))}\n"
        f"WIDTH {num}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {num}\nDATA {encoding}\n"
    )
    stream.write(header.encode("ascii"))
    if encoding == "ascii":
        np.savetxt(stream, points, fmt="%.9g")
    elif encoding == "binary":
        stream.write(np.ascontiguousarray(points, dtype="<f4").tobytes())
    else:
        raw = np.ascontiguousarray(points.T, dtype="<f4").tobytes()
        compressed = lzf_literal(raw)
        stream.write(struct.pack("<II", len(compressed), len(raw)) + compressed)
