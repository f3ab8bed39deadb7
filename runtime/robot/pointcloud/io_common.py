"""Shared pieces of the point-cloud file codecs: the error type and a buffered sequential reader.

Codecs read from any binary stream with `read(n)` (a local file, or the pyarrow stream Ray Data
hands a datasource), header line by line and then the body in chunks, so no file is loaded whole.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

DEFAULT_CHUNK_POINTS = 1 << 20


class PointCloudFileError(ValueError):
    """A point-cloud file is malformed or truncated; the message names the file and the problem."""


class StreamReader:
    """Sequential reads with exact-size checks; `name` goes into every error message."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self.stream = stream
        self.name = name
        self._buffer = b""
        self.offset = 0

    def error(self, message: str) -> PointCloudFileError:
        return PointCloudFileError(f"{self.name}: {message}")

    def readline(self, max_bytes: int = 1 << 16) -> bytes | None:
        """One line without its newline; None at end of file."""
        while b"\n" not in self._buffer and len(self._buffer) < max_bytes:
            more = self.stream.read(4096)
            if not more:
                break
            self._buffer += more
        if not self._buffer:
            return None
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) >= max_bytes:
                raise self.error(f"header line longer than {max_bytes} bytes; not a text header")
            line, self._buffer = self._buffer, b""
        else:
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
        self.offset += len(line) + 1
        return line.rstrip(b"\r")

    def read_upto(self, num_bytes: int) -> bytes:
        parts, have = [self._buffer[:num_bytes]], len(self._buffer[:num_bytes])
        self._buffer = self._buffer[num_bytes:]
        while have < num_bytes:
            more = self.stream.read(num_bytes - have)
            if not more:
                break
            parts.append(more)
            have += len(more)
        data = b"".join(parts)
        self.offset += len(data)
        return data

    def read_exact(self, num_bytes: int, what: str) -> bytes:
        data = self.read_upto(num_bytes)
        if len(data) < num_bytes:
            raise self.error(f"truncated {what}: expected {num_bytes} bytes, got {len(data)}")
        return data

    def read_records(self, dtype: np.dtype, num_records: int, what: str, chunk_points: int):
        """Yield structured arrays of at most chunk_points records until num_records are read."""
        if num_records == 0:
            yield np.empty(0, dtype=dtype)
        remaining = num_records
        while remaining > 0:
            count = min(chunk_points, remaining)
            data = self.read_upto(count * dtype.itemsize)
            if len(data) < count * dtype.itemsize:
                got = num_records - remaining + len(data) // dtype.itemsize
                raise self.error(f"truncated {what}: header says {num_records} points, file holds {got}")
            yield np.frombuffer(data, dtype=dtype)
            remaining -= count


def records_to_points(records: np.ndarray, fields: list[str]) -> np.ndarray:
    """Structured records -> (N, len(fields)) float32."""
    points = np.empty((len(records), len(fields)), dtype=np.float32)
    for column, field in enumerate(fields):
        points[:, column] = records[field]
    return points


def check_points(points: np.ndarray, fields: list[str]) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != len(fields):
        raise ValueError(f"points must have shape (N, {len(fields)}) for fields {fields}, got {points.shape}")
    if fields[:3] != ["x", "y", "z"]:
        raise ValueError(f"fields must start with x, y, z, got {fields}")
    return points
