"""ROS messages -> frame columns, shared by the MCAP and bag readers.

Converters work on decoded messages from either `mcap_ros2` or `rosbags` (both give attribute
access) and on ROS 1 and ROS 2 type names. `TopicMapping` says which topic feeds which column;
`FrameAssembler` turns a time-ordered message stream into frame rows: each message on the clock
topic makes a frame holding the latest value of every other mapped topic (zero-order hold).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from runtime.robot import schema as S

JOINT_STATE = "sensor_msgs/JointState"
IMAGE = "sensor_msgs/Image"
COMPRESSED_IMAGE = "sensor_msgs/CompressedImage"
POINTCLOUD2 = "sensor_msgs/PointCloud2"
_DEPTH_ENCODINGS = {"16UC1", "mono16", "32FC1"}
# sensor_msgs/PointField datatype codes -> numpy
_POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def normalize_type(msgtype: str) -> str:
    """'sensor_msgs/msg/Image' (ROS 2) and 'sensor_msgs/Image' (ROS 1) -> 'sensor_msgs/Image'."""
    return msgtype.replace("/msg/", "/")


def topic_name(topic: str) -> str:
    return topic.strip("/").replace("/", "_") or "root"


@dataclass(kw_only=True, slots=True)
class TopicMapping:
    """Which topic feeds which frame column. `fields` picks a value out of custom messages by a
    dotted attribute path (e.g. {"/gripper_cmd": "data"}); `clock` is the topic that makes frames
    (default: the state topic)."""

    state: str | None = None
    action: str | None = None
    images: dict[str, str] = field(default_factory=dict)
    depth: dict[str, str] = field(default_factory=dict)
    pointcloud: str | None = None
    clock: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    task: str = ""

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = self.state
        if self.clock is None:
            raise ValueError("topic mapping needs a clock topic (or a state topic to use as clock)")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TopicMapping:
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"topic mapping has unknown keys {sorted(unknown)}")
        return cls(**config)

    @classmethod
    def from_file(cls, path: str | Path) -> TopicMapping:
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            return cls.from_dict(yaml.safe_load(text))
        return cls.from_dict(json.loads(text))

    @classmethod
    def detect(cls, topic_types: dict[str, str], task: str = "") -> TopicMapping:
        """A mapping from the standard message types found in a log (custom ones need `fields`)."""
        mapping: dict[str, Any] = {"images": {}, "depth": {}, "task": task}
        for topic, msgtype in sorted(topic_types.items()):
            kind = normalize_type(msgtype)
            if kind == JOINT_STATE and "state" not in mapping:
                mapping["state"] = topic
            elif kind == IMAGE and "depth" in topic.lower():
                mapping["depth"][topic_name(topic)] = topic
            elif kind in (IMAGE, COMPRESSED_IMAGE):
                mapping["images"][topic_name(topic)] = topic
            elif kind == POINTCLOUD2 and "pointcloud" not in mapping:
                mapping["pointcloud"] = topic
        if "state" not in mapping:
            raise ValueError(f"no sensor_msgs/JointState topic to use as state among {sorted(topic_types)}")
        return cls(**mapping)

    def columns(self) -> dict[str, str]:
        """topic -> column name, for every mapped topic."""
        out = {}
        if self.state:
            out[self.state] = S.STATE
        if self.action:
            out[self.action] = S.ACTION
        out.update({topic: S.image_key(camera) for camera, topic in self.images.items()})
        out.update({topic: S.depth_key(camera) for camera, topic in self.depth.items()})
        if self.pointcloud:
            out[self.pointcloud] = S.POINTCLOUD
        return out

    def topics(self) -> list[str]:
        return sorted(set(self.columns()) | {self.clock})


def _uint8(data: Any) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def image_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8, or (H, W) uint16 mm / float32 m for depth encodings."""
    height, width, step, encoding = msg.height, msg.width, msg.step, msg.encoding
    raw = _uint8(msg.data)
    dtypes = {"rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
              "16UC1": ("u2", 1), "mono16": ("u2", 1), "32FC1": ("f4", 1)}
    if encoding not in dtypes:
        raise ValueError(f"unsupported image encoding {encoding!r}")
    kind, channels = dtypes[encoding]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    rows = raw[: height * step].reshape(height, step)[:, : width * channels * dtype.itemsize]
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    if encoding.startswith("bgr"):
        pixels = pixels[..., [2, 1, 0]]
    if encoding in _DEPTH_ENCODINGS:
        return pixels[..., 0].astype(np.float32 if kind == "f4" else np.uint16)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


def pointcloud_array(msg: Any) -> tuple[np.ndarray, str]:
    """sensor_msgs/PointCloud2 -> ((N, C) float32 without NaN points, fields string)."""
    by_name = {f.name: f for f in msg.fields}
    if not {"x", "y", "z"} <= set(by_name):
        raise ValueError(f"PointCloud2 lacks x/y/z fields: {sorted(by_name)}")
    endian = ">" if msg.is_bigendian else "<"
    names = ["x", "y", "z"] + [n for n in ("intensity", "rgb") if n in by_name]
    dtype = np.dtype({
        "names": names,
        "formats": [endian + _POINTFIELD_DTYPES[by_name[n].datatype] for n in names],
        "offsets": [by_name[n].offset for n in names],
        "itemsize": msg.point_step,
    })
    count = msg.width * msg.height
    records = np.frombuffer(_uint8(msg.data)[: count * msg.point_step].tobytes(), dtype=dtype, count=count)
    columns = [records[n].astype(np.float32) for n in ("x", "y", "z")]
    fields = S.XYZ_FIELDS
    if "intensity" in names:
        columns.append(records["intensity"].astype(np.float32))
        fields += ",intensity"
    elif "rgb" in names:
        packed = np.ascontiguousarray(records["rgb"]).view(np.uint32)
        columns += [((packed >> shift) & 0xFF).astype(np.float32) / 255.0 for shift in (16, 8, 0)]
        fields += ",r,g,b"
    points = np.stack(columns, axis=1)
    return points[np.isfinite(points[:, :3]).all(axis=1)], fields


def attribute(msg: Any, path: str) -> Any:
    for part in path.split("."):
        msg = getattr(msg, part)
    return msg


class FrameAssembler:
    """Accumulates one episode's frame rows from a time-ordered message stream."""

    def __init__(self, mapping: TopicMapping, source: str):
        self.mapping = mapping
        self.source = source
        self.columns = mapping.columns()
        self.latest: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.first_time_ns: int | None = None

    def add(self, topic: str, time_ns: int, msg: Any, msgtype: str) -> None:
        if topic in self.columns:
            self.latest.update(self._convert(topic, msg, normalize_type(msgtype)))
        if topic == self.mapping.clock and all(column in self.latest for column in self.columns.values()):
            if self.first_time_ns is None:
                self.first_time_ns = time_ns
            row = dict(self.latest)
            row[S.FRAME_INDEX] = len(self.rows)
            row[S.TIMESTAMP] = (time_ns - self.first_time_ns) / 1e9
            self.rows.append(row)

    def _convert(self, topic: str, msg: Any, kind: str) -> dict[str, Any]:
        column = self.columns[topic]
        if topic in self.mapping.fields:
            return {column: np.asarray(attribute(msg, self.mapping.fields[topic]), dtype=np.float32).ravel()}
        if kind == JOINT_STATE:
            return {column: np.asarray(msg.position, dtype=np.float32)}
        if kind == COMPRESSED_IMAGE:
            return {column: bytes(_uint8(msg.data))}
        if kind == IMAGE:
            pixels = image_array(msg)
            return {column: S.encode_depth(pixels) if column.startswith(S.DEPTH_PREFIX) else S.encode_image(pixels)}
        if kind == POINTCLOUD2:
            points, fields = pointcloud_array(msg)
            return S.pack_pointcloud(points, fields)
        raise ValueError(f"topic {topic} has type {kind}; map a field of it in TopicMapping.fields")

    def table(self) -> pa.Table:
        if not self.rows:
            raise ValueError(f"{self.source}: no frames (clock topic {self.mapping.clock} never fired "
                             f"with all of {sorted(self.columns)} seen)")
        num_rows = len(self.rows)
        for row in self.rows:
            row[S.EPISODE_INDEX] = 0
            row[S.TASK] = self.mapping.task
            row[S.EPISODE_SOURCE] = self.source
            row[S.DONE] = row[S.FRAME_INDEX] == num_rows - 1
        return S.frames_to_table(self.rows)
