"""LeRobot v3.0 reader: `LeRobotDataset` in process, `read_lerobot` as a streaming Ray Dataset.

An episode is found through meta/episodes: its data file and [dataset_from_index, dataset_to_index)
rows, and per camera its video file and [from_timestamp, to_timestamp) range. Only that episode's
row groups and video segment are read. meta/info.json comes from the input, so its feature keys must
be safe names and every path its templates make must stay inside the dataset (episode_checks).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from runtime.robot import schema as S
from runtime.robot.formats.episode_checks import check_safe_key, resolve_inside
from runtime.robot.formats.lerobot_layout import (
    CODEBASE_VERSION,
    EPISODES_DIR,
    INFO_PATH,
    TASKS_PATH,
    from_data_table,
)
from runtime.robot.formats.video import decode_range


class LeRobotDataset:
    """Random access to a local LeRobot v3.0 dataset's episodes and frames."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / INFO_PATH
        if not info_path.exists():
            raise FileNotFoundError(f"{self.root} is not a LeRobot dataset: {INFO_PATH} is missing")
        self.info = json.loads(info_path.read_text())
        if self.info.get("codebase_version") != CODEBASE_VERSION:
            raise ValueError(
                f"{self.root}: codebase_version must be {CODEBASE_VERSION!r}, got {self.info.get('codebase_version')!r}"
            )
        self.features: dict = self.info["features"]
        for key in self.features:
            check_safe_key(key, f"{info_path}")
        self.fps: int = self.info["fps"]
        self._path("data_path", chunk_index=0, file_index=0)  # a template that leaves root fails here, at once
        if self.video_keys:
            self._path("video_path", video_key=self.video_keys[0], chunk_index=0, file_index=0)
        self.tasks = _read_tasks(self.root / TASKS_PATH)
        files = sorted((self.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
        tables = [pq.read_table(path) for path in files]
        episodes = pa.concat_tables(tables, promote_options="permissive")
        keep = [name for name in episodes.column_names if not name.startswith("stats/")]
        episodes = episodes.select(keep)
        self.episodes = episodes.take(pc.sort_indices(episodes, [("episode_index", "ascending")]))
        self._rows = {int(index): row for row, index in enumerate(self.episodes.column("episode_index").to_pylist())}

    @property
    def num_episodes(self) -> int:
        return self.episodes.num_rows

    @property
    def num_frames(self) -> int:
        return int(self.info["total_frames"])

    @property
    def video_keys(self) -> list[str]:
        return [key for key, ft in self.features.items() if ft["dtype"] == "video"]

    @property
    def episode_indices(self) -> list[int]:
        """The dataset's episode indices, ascending (they need not be contiguous)."""
        return sorted(self._rows)

    def _path(self, template: str, **fields) -> Path:
        return resolve_inside(self.root, self.info[template].format(**fields), f"{INFO_PATH} {template}")

    def episode_meta(self, episode_index: int) -> dict:
        if episode_index not in self._rows:
            raise IndexError(f"episode_index {episode_index} not in {self.root}")
        return self.episodes.slice(self._rows[episode_index], 1).to_pylist()[0]

    def episode_data(self, episode_index: int) -> pa.Table:
        """The episode's raw LeRobot data rows (no video), selected by global index range."""
        meta = self.episode_meta(episode_index)
        path = self._path("data_path", chunk_index=meta["data/chunk_index"], file_index=meta["data/file_index"])
        start, stop = meta["dataset_from_index"], meta["dataset_to_index"]
        table = pq.read_table(path, filters=[("index", ">=", start), ("index", "<", stop)])
        return table.take(pc.sort_indices(table, [("index", "ascending")]))

    def video_frames(self, key: str, episode_index: int) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of one camera for one episode."""
        meta = self.episode_meta(episode_index)
        path = self._path("video_path", video_key=key, chunk_index=meta[f"videos/{key}/chunk_index"],
                          file_index=meta[f"videos/{key}/file_index"])
        height, width = self.features[key]["shape"][:2]
        return decode_range(
            path, meta[f"videos/{key}/from_timestamp"], meta[f"videos/{key}/to_timestamp"], height=height, width=width
        )

    def episode_table(self, episode_index: int, decode_videos: bool = True) -> pa.Table:
        """One episode as frame rows in runtime.robot.schema (video frames re-encoded as PNG)."""
        data = self.episode_data(episode_index)
        table = from_data_table(data, self.features, self.tasks)
        if decode_videos:
            for key in self.video_keys:
                frames = self.video_frames(key, episode_index)
                if len(frames) != table.num_rows:
                    raise ValueError(
                        f"{key}: episode {episode_index} has {len(frames)} video frames for {table.num_rows} rows"
                    )
                table = table.append_column(key, pa.array([S.encode_image(f) for f in frames], pa.binary()))
        return table

    def iter_episodes(self, episode_indices: Iterable[int] | None = None, decode_videos: bool = True):
        for episode_index in episode_indices if episode_indices is not None else self.episode_indices:
            yield self.episode_table(episode_index, decode_videos=decode_videos)


def _read_tasks(path: Path) -> list[str]:
    table = pq.read_table(path)
    names = table.column_names
    text_column = "task" if "task" in names else next(n for n in names if n != "task_index")
    pairs = sorted(zip(table.column("task_index").to_pylist(), table.column(text_column).to_pylist()))
    if [index for index, _ in pairs] != list(range(len(pairs))):
        raise ValueError(f"{path}: task_index must be 0..{len(pairs) - 1}")
    return [task for _, task in pairs]


def episode_sources(root: str | Path, episode_indices: Iterable[int] | None = None) -> list[str]:
    """Datasource sources for a LeRobot dataset: "<root>#<episode_index>"."""
    indices = episode_indices if episode_indices is not None else open_dataset(root).episode_indices
    return [f"{Path(root).resolve()}#{int(i):06d}" for i in indices]


def open_dataset(root: str | Path) -> LeRobotDataset:
    """The dataset at `root`, opened once per process for as long as its meta/info.json is the same
    file (a read task walks many episodes of one dataset; each would otherwise read all episode metadata)."""
    stat = (Path(root) / INFO_PATH).stat()
    return _open_dataset(str(root), stat.st_ino, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open_dataset(root: str, info_inode: int, info_mtime_ns: int) -> LeRobotDataset:
    return LeRobotDataset(root)


def read_episodes(source: str, skip: frozenset[str] = frozenset()) -> Iterator[pa.Table]:
    """`EpisodeDatasource` reader for "<root>#<episode_index>" sources."""
    if source in skip:
        return
    root, _, index = source.rpartition("#")
    table = open_dataset(root).episode_table(int(index))
    if S.EPISODE_SOURCE in table.column_names:
        table = table.drop_columns([S.EPISODE_SOURCE])
    yield table.append_column(S.EPISODE_SOURCE, pa.array([source] * table.num_rows, pa.string()))


def read_lerobot(root: str | Path, *, episode_indices: Iterable[int] | None = None, **read_kwargs):
    """A streaming `ray.data.Dataset` of frame rows, one block per episode."""
    import ray.data

    from runtime.robot.formats.datasource import EpisodeDatasource

    sources = episode_sources(root, episode_indices)
    datasource = EpisodeDatasource(sources, read_episodes, name="LeRobot")
    read_kwargs.setdefault("override_num_blocks", datasource.num_read_tasks())
    return ray.data.read_datasource(datasource, **read_kwargs)
