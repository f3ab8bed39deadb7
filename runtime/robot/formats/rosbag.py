"""ROS 1 (.bag) and ROS 2 (bag directory, sqlite3 or mcap storage) logs as episodes via `rosbags`.

One bag is one episode; `rosbags.highlevel.AnyReader` streams its messages in time order and
`ros_messages.FrameAssembler` builds the frame rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_typestore

from runtime.robot.formats.errors import CorruptRecordingError
from runtime.robot.formats.ros_messages import FrameAssembler, TopicMapping


def _reader(path: str | Path) -> AnyReader:
    # ROS 1 bags carry their message definitions; ROS 2 bags may not, so fall back to a known distro.
    return AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_HUMBLE))


def topic_types(path: str | Path) -> dict[str, str]:
    with _reader(path) as reader:
        return {connection.topic: connection.msgtype for connection in reader.connections}


def read_episodes(
    source: str, skip: frozenset[str] = frozenset(), mapping: TopicMapping | None = None
) -> Iterator[pa.Table]:
    """`EpisodeDatasource` reader: the bag's one episode, unless already committed."""
    if source in skip:
        return
    try:
        with _reader(source) as reader:
            types = {connection.topic: connection.msgtype for connection in reader.connections}
            mapping = mapping or TopicMapping.detect(types)
            wanted = set(mapping.topics())
            connections = [connection for connection in reader.connections if connection.topic in wanted]
            assembler = FrameAssembler(mapping, source)
            for connection, timestamp_ns, raw in reader.messages(connections=connections):
                decoded = reader.deserialize(raw, connection.msgtype)
                assembler.add(connection.topic, timestamp_ns, decoded, connection.msgtype)
    except AnyReaderError as error:
        raise CorruptRecordingError(source, "ROS bag", error) from error
    yield assembler.table()


def read_rosbag(paths: list[str], mapping: TopicMapping | None = None, *, skip_sources=(), quarantine_dir=None,
                **read_kwargs):
    """A streaming `ray.data.Dataset` of frame rows from ROS 1/2 bags, one block per episode."""
    import functools

    import ray.data

    from runtime.robot.formats.datasource import EpisodeDatasource

    source = EpisodeDatasource(paths, functools.partial(read_episodes, mapping=mapping), skip_sources=skip_sources,
                               quarantine_dir=quarantine_dir, name="ROSBag")
    read_kwargs.setdefault("override_num_blocks", source.num_read_tasks())
    return ray.data.read_datasource(source, **read_kwargs)
