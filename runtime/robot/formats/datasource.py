"""A Ray Data datasource over episode sources (files, or episodes of a dataset), one block per episode.

Ray Data's file datasources read a file into blocks, but cannot skip episodes a previous run already
committed, nor set aside a corrupt file and keep going; this one does both. Each read task walks its
share of sources with a format's `read_episodes(source, skip)` generator, so at most one episode per
task is in memory, and the streaming executor's backpressure bounds the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from runtime.robot import schema as S

ReadEpisodes = Callable[[str, frozenset[str]], Iterator[pa.Table]]


class EpisodeDatasource(Datasource):
    """Sources are strings a format's `read_episodes` understands (usually file paths).

    `skip_sources`: episode_source keys to leave out (already committed). `quarantine_dir`: when
    set, a source whose reader raises is recorded there (see runtime.robot.manifest.Quarantine)
    and the read goes on; when None, the error surfaces.
    """

    def __init__(
        self,
        sources: Iterable[str],
        read_episodes: ReadEpisodes,
        *,
        skip_sources: Iterable[str] = (),
        quarantine_dir: str | Path | None = None,
        name: str = "Episodes",
    ):
        self.sources = sorted(str(source) for source in sources)
        self.read_episodes = read_episodes
        self.skip_sources = frozenset(skip_sources)
        self.quarantine_dir = str(quarantine_dir) if quarantine_dir is not None else None
        self._name = name

    def get_name(self) -> str:
        return self._name

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def num_read_tasks(self, max_read_tasks: int = 512) -> int:
        """Pass as `override_num_blocks`: Ray Data otherwise splits read outputs into at least
        `read_op_min_num_blocks` blocks, which would cut episodes apart."""
        return max(1, min(len(self.sources), max_read_tasks))

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        if not self.sources:
            return []
        num_tasks = max(1, min(parallelism, len(self.sources)))
        groups = [self.sources[i::num_tasks] for i in range(num_tasks)]
        return [
            ReadTask(
                lambda group=group: self._read(group),
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=tuple(group)),
                per_task_row_limit=per_task_row_limit,
            )
            for group in groups
        ]

    def _read(self, group: list[str]) -> Iterator[pa.Table]:
        for source in group:
            if self.quarantine_dir is None:
                yield from _conformed(self.read_episodes(source, self.skip_sources))
                continue
            try:
                # Episodes yielded before a failure stay: each is complete and valid on its own;
                # the quarantine entry tells the operator the source was only partly read.
                yield from _conformed(self.read_episodes(source, self.skip_sources))
            except Exception as error:  # any decode failure means this input is corrupt: set it aside
                from runtime.robot.manifest import Quarantine

                Quarantine(self.quarantine_dir).add(source, f"{type(error).__name__}: {error}")


def _conformed(episodes: Iterator[pa.Table]) -> Iterator[pa.Table]:
    for table in episodes:
        yield S.conform(table)
