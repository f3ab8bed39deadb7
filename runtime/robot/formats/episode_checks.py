"""What an episode must pass before it is committed: safe feature keys, the dataset's feature spec
(names, dtypes, shapes) and a frame_index without gaps. Pure functions on Arrow tables.

A feature spec maps each feature key of a frame table to {"dtype", "shape"}: images are "image"
[height, width, 3], depth images "depth" [height, width, 1], the point cloud float32 [-1] (variable),
other list columns [length], scalars [1]. A column that is null in every frame is not a feature (the
LeRobot writer infers its features the same way). Image sizes come from the PNG/JPEG header, so
checking an episode does not decode it.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from runtime.robot import schema as S

# A key becomes one path component (videos/<key>/...) and one column-name part (stats/<key>/mean):
# letters, digits, "_", "." and "-", starting with a letter, digit or "_" (so never "", "." or "..").
SAFE_KEY_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")
_NOT_FEATURES = {S.EPISODE_INDEX, S.FRAME_INDEX, S.TIMESTAMP, S.TASK}
_DTYPES = {pa.float32(): "float32", pa.float64(): "float64", pa.int64(): "int64", pa.int32(): "int32",
           pa.int16(): "int16", pa.uint8(): "uint8", pa.bool_(): "bool", pa.string(): "string",
           pa.large_string(): "string"}


def unsafe_key_reason(key: str) -> str | None:
    """Why `key` may not name a feature (it would become a path), or None when it is safe."""
    if SAFE_KEY_PATTERN.fullmatch(key):
        return None
    return (f"feature key {key!r} is not a safe name: keys are letters, digits, '_', '.' and '-', start with "
            f"a letter, digit or '_' and are at most 255 characters")


def check_safe_key(key: str, where: str) -> None:
    reason = unsafe_key_reason(key)
    if reason is not None:
        raise ValueError(f"{where}: {reason}")


def resolve_inside(root: str | Path, relative: str, what: str) -> Path:
    """`root / relative`, or ValueError naming `what` when it points outside `root`.

    The check is lexical (normpath), not Path.resolve: a dataset in the Hugging Face cache is a tree
    of symlinks into its blob store, which resolve() would take outside the root."""
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, relative))
    if os.path.isabs(relative) or os.path.commonpath([base, path]) != base:
        raise ValueError(f"{what} {relative!r} points outside {root}")
    return Path(path)


def frame_index_problem(table: pa.Table) -> str | None:
    """None when frame_index is 0..num_rows-1 once each, else what is wrong (first gap or repeat)."""
    frame_index = np.sort(table.column(S.FRAME_INDEX).to_numpy())
    if np.array_equal(frame_index, np.arange(table.num_rows)):
        return None
    if frame_index[0] != 0:
        return f"frame_index starts at {int(frame_index[0])}, not 0"
    steps = np.diff(frame_index)
    at = int(np.argmax(steps != 1))
    before, after = int(frame_index[at]), int(frame_index[at + 1])
    if after == before:
        return f"frame_index {before} appears more than once"
    return f"frame_index jumps from {before} to {after} ({after - before - 1} frames missing)"


def _image_shapes(column: pa.ChunkedArray, channels: int) -> set[tuple[int, ...]]:
    from PIL import Image

    shapes = set()
    for value in column.to_pylist():
        if value is not None:
            width, height = Image.open(io.BytesIO(value)).size  # reads the header only
            shapes.add((height, width, channels))
    return shapes


def episode_features(table: pa.Table) -> tuple[dict[str, dict], list[str]]:
    """(feature spec of one episode, problems inside the episode: unsafe keys, frames of one feature
    with different shapes, unreadable images)."""
    spec: dict[str, dict] = {}
    problems: list[str] = []
    for key in table.column_names:
        column = table.column(key)
        if key in _NOT_FEATURES or column.null_count == len(column):
            continue
        reason = unsafe_key_reason(key)
        if reason is not None:
            problems.append(reason)
            continue
        if key.startswith((S.IMAGE_PREFIX, S.DEPTH_PREFIX)):
            is_depth = key.startswith(S.DEPTH_PREFIX)
            try:
                shapes = _image_shapes(column, 1 if is_depth else 3)
            except Exception as error:  # PIL raises several types for bytes that are not an image
                problems.append(f"{key!r} holds a frame that is not a readable image ({type(error).__name__})")
                continue
            dtype = "depth" if is_depth else "image"
        elif key == S.POINTCLOUD:
            dtype, shapes = "float32", {(-1,)}
        elif pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            dtype = _DTYPES.get(column.type.value_type, str(column.type.value_type))
            lengths = pa.compute.list_value_length(column).drop_null().to_numpy(zero_copy_only=False)
            shapes = {(int(length),) for length in np.unique(lengths)}
        else:
            dtype, shapes = _DTYPES.get(column.type, str(column.type)), {(1,)}
        if len(shapes) > 1:
            problems.append(f"frames of {key!r} have different shapes {sorted(map(list, shapes))}")
            continue
        spec[key] = {"dtype": dtype, "shape": list(shapes.pop())}
    return spec, problems


def spec_mismatches(expected: dict[str, dict], found: dict[str, dict]) -> list[str]:
    """Each way `found` (an episode's spec) differs from `expected` (the dataset's), naming the feature."""
    mismatches = []
    for key in sorted(expected.keys() | found.keys()):
        if key not in found:
            mismatches.append(f"feature {key!r} is missing (the dataset has {_describe(expected[key])})")
        elif key not in expected:
            mismatches.append(f"feature {key!r} ({_describe(found[key])}) is not in the dataset's features")
        elif expected[key] != found[key]:
            mismatches.append(f"feature {key!r}: expected {_describe(expected[key])}, found {_describe(found[key])}")
    return mismatches


def _describe(feature: dict) -> str:
    return f"{feature['dtype']} {feature['shape']}"


def episode_problems(table: pa.Table, expected: dict[str, dict] | None) -> tuple[dict[str, dict], list[str]]:
    """(the episode's spec, every reason it may not join a dataset whose spec is `expected`)."""
    spec, problems = episode_features(table)
    frame_problem = frame_index_problem(table)
    if frame_problem is not None:
        problems.append(frame_problem)
    if expected is not None:
        problems += spec_mismatches(expected, spec)
    return spec, problems
