"""The Arrow schema of one robot frame row: the one place that says what an episode holds.

A dataset is a table of frame rows; an episode is the rows sharing `episode_index` (ordered by
`frame_index`). Every reader in `runtime.robot.formats` yields tables in this schema, every labeling
stage adds to it and `LeRobotWriter` stores it.

| column                               | Arrow type     | meaning                                           |
|--------------------------------------|----------------|---------------------------------------------------|
| `episode_index`                      | int64          | episode number in the dataset                     |
| `frame_index`                        | int64          | frame number inside the episode, from 0           |
| `timestamp`                          | float64        | seconds since the episode's first frame           |
| `task`                               | string         | task text ("pick the red cube")                   |
| `observation.state`                  | list<float32>  | proprioception (joint positions, gripper, ...)    |
| `action`                             | list<float32>  | commanded action                                  |
| `next.reward`                        | float32, null  | reward after the action                           |
| `next.done`                          | bool           | last frame of the episode                         |
| `next.success`                       | bool, null     | task solved at this frame (when known)            |
| `observation.images.<camera>`        | binary         | encoded image (PNG or JPEG bytes)                 |
| `observation.depth.<camera>`         | binary         | depth as 16-bit PNG in millimetres                |
| `observation.pointcloud`             | list<float32>  | flat points, `num_points x len(fields)` values    |
| `observation.pointcloud.num_points`  | int32          | points in this frame's cloud (variable)           |
| `observation.pointcloud.fields`      | string         | channel names: "x,y,z" [+ ",intensity" / ",r,g,b"]|
| `labels`                             | string (JSON)  | list of labels, each with name, value, source,    |
|                                      |                | version and scope ("episode" or "frame")          |
| `episode_source`                     | string         | where the episode came from ("file.mcap#0")       |

Cameras vary per robot, so `episode_schema(cameras=..., depth_cameras=...)` builds the full schema;
`EPISODE_SCHEMA` is the camera-less core.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

EPISODE_INDEX = "episode_index"
FRAME_INDEX = "frame_index"
TIMESTAMP = "timestamp"
TASK = "task"
STATE = "observation.state"
ACTION = "action"
REWARD = "next.reward"
DONE = "next.done"
SUCCESS = "next.success"
POINTCLOUD = "observation.pointcloud"
POINTCLOUD_NUM_POINTS = "observation.pointcloud.num_points"
POINTCLOUD_FIELDS = "observation.pointcloud.fields"
LABELS = "labels"
EPISODE_SOURCE = "episode_source"
IMAGE_PREFIX = "observation.images."
DEPTH_PREFIX = "observation.depth."

XYZ_FIELDS = "x,y,z"
DEPTH_SCALE_MM = 1000.0

_CORE_FIELDS = [
    pa.field(EPISODE_INDEX, pa.int64(), nullable=False),
    pa.field(FRAME_INDEX, pa.int64(), nullable=False),
    pa.field(TIMESTAMP, pa.float64(), nullable=False),
    pa.field(TASK, pa.string()),
    pa.field(STATE, pa.list_(pa.float32())),
    pa.field(ACTION, pa.list_(pa.float32())),
    pa.field(REWARD, pa.float32()),
    pa.field(DONE, pa.bool_()),
    pa.field(SUCCESS, pa.bool_()),
]
_POINTCLOUD_FIELDS = [
    pa.field(POINTCLOUD, pa.list_(pa.float32())),
    pa.field(POINTCLOUD_NUM_POINTS, pa.int32()),
    pa.field(POINTCLOUD_FIELDS, pa.string()),
]
_TAIL_FIELDS = [pa.field(LABELS, pa.string()), pa.field(EPISODE_SOURCE, pa.string())]


def image_key(camera: str) -> str:
    return IMAGE_PREFIX + camera


def depth_key(camera: str) -> str:
    return DEPTH_PREFIX + camera


def episode_schema(
    cameras: Sequence[str] = (),
    depth_cameras: Sequence[str] = (),
    pointcloud: bool = True,
) -> pa.Schema:
    """The frame-row schema for a robot with these RGB cameras and depth cameras."""
    fields = list(_CORE_FIELDS)
    fields += [pa.field(image_key(camera), pa.binary()) for camera in cameras]
    fields += [pa.field(depth_key(camera), pa.binary()) for camera in depth_cameras]
    if pointcloud:
        fields += _POINTCLOUD_FIELDS
    return pa.schema(fields + _TAIL_FIELDS)


EPISODE_SCHEMA = episode_schema()


def cameras_of(schema: pa.Schema) -> list[str]:
    return [name[len(IMAGE_PREFIX) :] for name in schema.names if name.startswith(IMAGE_PREFIX)]


def depth_cameras_of(schema: pa.Schema) -> list[str]:
    return [name[len(DEPTH_PREFIX) :] for name in schema.names if name.startswith(DEPTH_PREFIX)]


def schema_for(table: pa.Table) -> pa.Schema:
    """The episode schema matching the cameras a table carries."""
    return episode_schema(
        cameras_of(table.schema), depth_cameras_of(table.schema), POINTCLOUD in table.schema.names
    )


def conform(table: pa.Table, schema: pa.Schema | None = None) -> pa.Table:
    """Cast `table` to `schema` (default: the schema its columns imply), adding absent columns as nulls."""
    schema = schema or schema_for(table)
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(table.num_rows, field.type))
        else:
            raise ValueError(f"frame table lacks required column {field.name!r}")
    return pa.Table.from_arrays(columns, schema=schema)


def frames_to_table(frames: Iterable[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    """Build a frame table from dicts holding numpy arrays, bytes and scalars."""
    rows = list(frames)
    if not rows:
        raise ValueError("frames must hold at least one frame")
    if schema is None:
        keys = rows[0].keys()
        schema = episode_schema(
            [k[len(IMAGE_PREFIX) :] for k in keys if k.startswith(IMAGE_PREFIX)],
            [k[len(DEPTH_PREFIX) :] for k in keys if k.startswith(DEPTH_PREFIX)],
            POINTCLOUD in keys,
        )
    columns = [_column([row.get(field.name) for row in rows], field.type) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _column(values: list[Any], arrow_type: pa.DataType) -> pa.Array:
    if pa.types.is_list(arrow_type) and all(isinstance(v, np.ndarray) for v in values):
        flat = [np.asarray(v).ravel() for v in values]
        offsets = np.zeros(len(flat) + 1, np.int32)
        offsets[1:] = np.cumsum([len(f) for f in flat])
        data = np.concatenate(flat).astype(arrow_type.value_type.to_pandas_dtype(), copy=False)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(data, arrow_type.value_type))
    return pa.array([_to_arrow_value(v) for v in values], arrow_type)


def _to_arrow_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.ravel().tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def episode_tables(table: pa.Table) -> list[pa.Table]:
    """Split a table into one table per episode (rows stay in frame order)."""
    if table.num_rows == 0:
        return []
    keys = table.column(EPISODE_SOURCE) if EPISODE_SOURCE in table.column_names else None
    if keys is None or keys.null_count == table.num_rows:
        keys = table.column(EPISODE_INDEX)
    values = keys.to_pylist()
    order: dict[Any, list[int]] = {}
    for row, key in enumerate(values):
        order.setdefault(key, []).append(row)
    out = []
    for rows in order.values():
        episode = table.take(pa.array(rows))
        sort = np.argsort(episode.column(FRAME_INDEX).to_numpy(), kind="stable")
        out.append(episode.take(pa.array(sort)))
    return out


# Encodings -------------------------------------------------------------------------------------


def encode_image(rgb: np.ndarray, image_format: str = "png") -> bytes:
    """HxWx3 (or HxW) uint8 -> PNG/JPEG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format=image_format.upper())
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def encode_depth(depth: np.ndarray) -> bytes:
    """Depth image -> 16-bit PNG in millimetres. Float input is metres; integer input is already mm."""
    from PIL import Image

    if depth.dtype.kind == "f":
        depth = np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0) * DEPTH_SCALE_MM
        depth = np.clip(np.rint(depth), 0, np.iinfo(np.uint16).max)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(depth, dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_depth(data: bytes) -> np.ndarray:
    """16-bit depth PNG -> float32 metres (0 = no return)."""
    from PIL import Image

    millimetres = np.asarray(Image.open(io.BytesIO(data))).astype(np.float32)
    return millimetres / DEPTH_SCALE_MM


def pack_pointcloud(points: np.ndarray, fields: str = XYZ_FIELDS) -> dict[str, Any]:
    """(N, C) float array -> the three point-cloud columns of one frame row."""
    num_channels = len(fields.split(","))
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != num_channels:
        raise ValueError(f"points must have shape (N, {num_channels}) for fields {fields!r}, got {points.shape}")
    return {POINTCLOUD: points.ravel(), POINTCLOUD_NUM_POINTS: len(points), POINTCLOUD_FIELDS: fields}


def unpack_pointcloud(flat: Sequence[float] | np.ndarray, fields: str = XYZ_FIELDS) -> np.ndarray:
    return np.asarray(flat, dtype=np.float32).reshape(-1, len(fields.split(",")))


# Labels ----------------------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Label:
    """One label on a frame or an episode; `source` and `version` say who made it and how."""

    name: str
    value: Any
    source: str
    version: str
    scope: str = "frame"

    def __post_init__(self) -> None:
        if self.scope not in ("frame", "episode"):
            raise ValueError(f"label.scope must be 'frame' or 'episode', got {self.scope!r}")
        if not self.source:
            raise ValueError("label.source must be non-empty")


def labels_to_json(labels: Iterable[Label]) -> str:
    return json.dumps([asdict(label) for label in labels], separators=(",", ":"))


def labels_from_json(text: str | None) -> list[Label]:
    return [Label(**item) for item in json.loads(text)] if text else []


def merge_labels(existing: list[Label], new: Iterable[Label]) -> list[Label]:
    """New labels replace existing ones with the same (name, source); the rest are kept."""
    new = list(new)
    replaced = {(label.name, label.source) for label in new}
    return [label for label in existing if (label.name, label.source) not in replaced] + new


def with_labels(table: pa.Table, labels_per_row: Sequence[Iterable[Label]]) -> pa.Table:
    """Return `table` with each row's labels merged with `labels_per_row[row]`."""
    if len(labels_per_row) != table.num_rows:
        raise ValueError(f"got labels for {len(labels_per_row)} rows, table has {table.num_rows}")
    current = table.column(LABELS).to_pylist() if LABELS in table.column_names else [None] * table.num_rows
    merged = [
        labels_to_json(merge_labels(labels_from_json(text), new))
        for text, new in zip(current, labels_per_row)
    ]
    column = pa.array(merged, pa.string())
    if LABELS in table.column_names:
        return table.set_column(table.column_names.index(LABELS), LABELS, column)
    return table.append_column(pa.field(LABELS, pa.string()), column)
