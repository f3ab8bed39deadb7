"""MCAP (ROS 2, CDR) robot logs as episodes: one file is one episode, read message by message.

Messages are decoded with `mcap-ros2-support` and turned into frame rows by
`ros_messages.FrameAssembler`; nothing but the current episode's rows is held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from runtime.robot.formats.errors import CorruptRecordingError
from runtime.robot.formats.ros_messages import FrameAssembler, TopicMapping


def topic_types(path: str | Path) -> dict[str, str]:
    """topic -> message type name, from the file's summary."""
    with open(path, "rb") as stream:
        summary = make_reader(stream).get_summary()
        if summary is None:
            raise ValueError(f"{path}: MCAP file has no summary section (truncated?)")
        return {channel.topic: summary.schemas[channel.schema_id].name for channel in summary.channels.values()}


def read_episodes(
    source: str, skip: frozenset[str] = frozenset(), mapping: TopicMapping | None = None
) -> Iterator[pa.Table]:
    """`EpisodeDatasource` reader: the file's one episode, unless already committed."""
    if source in skip:
        return
    try:
        mapping = mapping or TopicMapping.detect(topic_types(source))
        assembler = FrameAssembler(mapping, source)
        with open(source, "rb") as stream:
            reader = make_reader(stream, decoder_factories=[DecoderFactory()])
            for schema, channel, message, decoded in reader.iter_decoded_messages(
                topics=mapping.topics(), log_time_order=True
            ):
                assembler.add(channel.topic, message.log_time, decoded, schema.name)
    except McapError as error:
        raise CorruptRecordingError(source, "MCAP", error) from error
    yield assembler.table()


def read_mcap(paths: list[str], mapping: TopicMapping | None = None, *, skip_sources=(), quarantine_dir=None,
              **read_kwargs):
    """A streaming `ray.data.Dataset` of frame rows from MCAP files, one block per episode."""
    import functools

    import ray.data

    from runtime.robot.formats.datasource import EpisodeDatasource

    source = EpisodeDatasource(paths, functools.partial(read_episodes, mapping=mapping), skip_sources=skip_sources,
                               quarantine_dir=quarantine_dir, name="MCAP")
    read_kwargs.setdefault("override_num_blocks", source.num_read_tasks())
    return ray.data.read_datasource(source, **read_kwargs)
