"""LeRobot v3.0 dataset writer (our own implementation; no `lerobot` import).

Layout written (as LeRobot's `CODEBASE_VERSION = "v3.0"` reads it):

    meta/info.json                     codebase_version, fps, features, path templates, totals
    meta/stats.json                    per-feature min/max/mean/std/count
    meta/tasks.parquet                 task text (index) -> task_index
    meta/episodes/chunk-XXX/file-YYY.parquet
                                       one row per episode: length, tasks, dataset_from_index,
                                       dataset_to_index, data/{chunk,file}_index,
                                       videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp},
                                       meta/episodes/{chunk,file}_index, stats/<feature>/<stat>
    data/chunk-XXX/file-YYY.parquet    frame rows of many episodes (index = global frame number)
    videos/<key>/chunk-XXX/file-YYY.mp4
                                       camera frames of many episodes back to back

Episodes stream through: each `add_episode` appends one row group and a video segment, files roll
over at `data_files_size_in_mb` / `video_files_size_in_mb` and chunks at `chunks_size` files.
Depth images are `image` features (HF Image struct of 16-bit PNG bytes); point clouds are a
variable-length float32 feature (shape [-1]), which is our extension of the format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from runtime.robot import schema as S
from runtime.robot.formats import lerobot_stats
from runtime.robot.formats.episode_checks import check_safe_key, resolve_inside
from runtime.robot.formats.lerobot_layout import (
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    FileCursor,
    infer_features,
    to_data_table,
)
from runtime.robot.formats.lerobot_read import LeRobotDataset, read_lerobot
from runtime.robot.formats.video import DEFAULT_VIDEO_CODEC, VideoFileWriter

__all__ = ["LeRobotWriter", "LeRobotWriterConfig", "read_lerobot", "write_lerobot", "LeRobotDataset"]

_MB = 1024 * 1024


@dataclass(kw_only=True, slots=True)
class LeRobotWriterConfig:
    fps: int
    robot_type: str = "unknown"
    chunks_size: int = 1000
    data_files_size_in_mb: float = 100.0
    video_files_size_in_mb: float = 500.0
    video_codec: str = DEFAULT_VIDEO_CODEC
    use_videos: bool = True
    first_chunk_index: int = 0  # above every chunk of a dataset being replaced (runtime.robot.formats.lerobot_publish)

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.chunks_size <= 0:
            raise ValueError(f"chunks_size must be > 0, got {self.chunks_size}")
        if self.data_files_size_in_mb <= 0 or self.video_files_size_in_mb <= 0:
            raise ValueError("data_files_size_in_mb and video_files_size_in_mb must be > 0")
        if self.first_chunk_index < 0:
            raise ValueError(f"first_chunk_index must be >= 0, got {self.first_chunk_index}")


class LeRobotWriter:
    """Write frame tables (runtime.robot.schema rows) as a LeRobot v3.0 dataset under `root`.

    `features` (LeRobot's feature dict) is inferred from the first episode when not given.
    """

    def __init__(self, root: str | Path, fps: int, features: dict | None = None, **config: Any):
        self.root = Path(root)
        self.config = LeRobotWriterConfig(fps=fps, **config)
        for key in features or {}:
            check_safe_key(key, f"{self.root}")
        self.features = features
        self.num_episodes = 0
        self.num_frames = 0
        self._tasks: dict[str, int] = {}
        self._episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self._data = FileCursor(self.config.chunks_size, self.config.first_chunk_index)
        self._data_writer: pq.ParquetWriter | None = None
        self._data_bytes = 0
        self._episodes_writer: pq.ParquetWriter | None = None
        self._videos: dict[str, VideoFileWriter] = {}
        self._video_cursors: dict[str, FileCursor] = {}
        self._finalized = False
        if (self.root / INFO_PATH).exists():
            raise FileExistsError(f"{self.root} already holds a LeRobot dataset")

    @property
    def video_keys(self) -> list[str]:
        return [key for key, ft in (self.features or {}).items() if ft["dtype"] == "video"]

    def add_episode(self, frames: pa.Table | list[dict], task: str | None = None) -> int:
        """Append one episode (its frames in order); returns its episode_index."""
        if self._finalized:
            raise RuntimeError("LeRobotWriter.add_episode after finalize()")
        table = frames if isinstance(frames, pa.Table) else S.frames_to_table(frames)
        if table.num_rows == 0:
            raise ValueError("an episode needs at least one frame")
        if self.features is None:
            features = infer_features(table, self.config.fps, use_videos=self.config.use_videos,
                                      video_codec=self.config.video_codec)
            for key in features:  # a key becomes a path (videos/<key>/...): never one outside root
                check_safe_key(key, f"{self.root}")
            self.features = features
        episode_index = self.num_episodes
        tasks = [task] * table.num_rows if task is not None else table.column(S.TASK).to_pylist()
        if any(t is None for t in tasks):
            raise ValueError("every frame needs a task: pass task= or fill the 'task' column")
        task_indices = [self._tasks.setdefault(t, len(self._tasks)) for t in tasks]

        data, videos = to_data_table(table, self.features, episode_index, self.num_frames, task_indices)
        stats = _episode_stats(data, self.features, videos)
        row = {
            "episode_index": episode_index,
            "tasks": list(dict.fromkeys(tasks)),
            "length": table.num_rows,
            **self._write_data(data),
            "dataset_from_index": self.num_frames,
            "dataset_to_index": self.num_frames + table.num_rows,
        }
        for key, video in videos.items():
            row.update(self._write_video(key, video))
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        for key, part in stats.items():
            for name, value in part.items():
                row[f"stats/{key}/{name}"] = np.asarray(value).tolist()
        self._write_episode_row(row)
        self._episode_stats.append(stats)
        self.num_episodes += 1
        self.num_frames += table.num_rows
        return episode_index

    def _write_data(self, data: pa.Table) -> dict[str, int]:
        limit = self.config.data_files_size_in_mb * _MB
        if self._data_writer is not None and self._data_bytes >= limit:
            self._data_writer.close()
            self._data_writer = None
            self._data.advance()
        if self._data_writer is None:
            path = resolve_inside(self.root, DATA_PATH.format(**self._data.indices), "data path")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, data.schema)
            self._data_bytes = 0
        self._data_writer.write_table(data)
        self._data_bytes += data.nbytes
        return {"data/chunk_index": self._data.chunk_index, "data/file_index": self._data.file_index}

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        cursor = self._video_cursors.setdefault(key, FileCursor(self.config.chunks_size, self.config.first_chunk_index))
        writer = self._videos.get(key)
        if writer is not None and writer.size_bytes >= self.config.video_files_size_in_mb * _MB:
            writer.close()
            cursor.advance()
            writer = None
        if writer is None:
            path = resolve_inside(self.root, VIDEO_PATH.format(video_key=key, **cursor.indices), "video path")
            height, width = frames.shape[1:3]
            writer = VideoFileWriter(path, fps=self.config.fps, height=height, width=width,
                                     codec=self.config.video_codec)
            self._videos[key] = writer
        start, end = writer.append(frames)
        return {
            f"videos/{key}/chunk_index": cursor.chunk_index,
            f"videos/{key}/file_index": cursor.file_index,
            f"videos/{key}/from_timestamp": start,
            f"videos/{key}/to_timestamp": end,
        }

    def _write_episode_row(self, row: dict[str, Any]) -> None:
        table = pa.Table.from_pylist([row])
        if self._episodes_writer is None:
            path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._episodes_writer = pq.ParquetWriter(path, table.schema)
        self._episodes_writer.write_table(table.cast(self._episodes_writer.schema))

    def finalize(self) -> Path:
        """Close files and write meta/info.json, stats.json and tasks.parquet; returns root."""
        if self._finalized:
            return self.root
        if self.num_episodes == 0:
            raise ValueError(f"no episodes were added to {self.root}")
        for writer in (self._data_writer, self._episodes_writer, *self._videos.values()):
            writer.close()
        self._finalized = True
        tasks = pa.table({"task_index": pa.array(list(self._tasks.values()), pa.int64()),
                          "task": pa.array(list(self._tasks), pa.string())})
        # pandas metadata makes "task" the index, as LeRobot's own tasks.parquet has it.
        pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None}], "pandas_version": "2.0.0"}
        tasks = tasks.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        pq.write_table(tasks, self.root / TASKS_PATH)
        keys = dict.fromkeys(key for stats in self._episode_stats for key in stats)  # some frames may be null
        merged = {key: lerobot_stats.merge_stats([stats[key] for stats in self._episode_stats if key in stats])
                  for key in keys}
        (self.root / STATS_PATH).write_text(json.dumps(lerobot_stats.to_json(merged), indent=2))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.config.robot_type,
            "total_episodes": self.num_episodes,
            "total_frames": self.num_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": self.config.chunks_size,
            "data_files_size_in_mb": self.config.data_files_size_in_mb,
            "video_files_size_in_mb": self.config.video_files_size_in_mb,
            "fps": self.config.fps,
            "splits": {"train": f"0:{self.num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": self.features,
        }
        (self.root / INFO_PATH).write_text(json.dumps(info, indent=4))
        return self.root


def _episode_stats(data: pa.Table, features: dict, videos: dict[str, np.ndarray]) -> dict[str, dict]:
    stats = {}
    for key, feature in features.items():
        if feature["dtype"] in ("video",):
            stats[key] = lerobot_stats.image_stats(videos[key])
        elif feature["dtype"] in ("float32", "float64", "int64", "int32", "bool") and feature["shape"] != [-1]:
            column = data.column(key)
            if column.null_count:
                continue
            values = column.to_numpy() if not pa.types.is_list(column.type) else np.stack(column.to_numpy(
                zero_copy_only=False))
            stats[key] = lerobot_stats.array_stats(values.astype(np.float64))
    return stats


def write_lerobot(dataset, root: str | Path, fps: int, **config: Any) -> Path:
    """Stream a `ray.data.Dataset` of whole-episode blocks into a LeRobot v3.0 dataset at `root`.

    Episodes arrive one block at a time (Ray Data's streaming iterator applies backpressure) and are
    appended by this process, the single writer that multi-episode files need. For resumable runs
    use runtime.robot.manifest (commit per episode, then `finalize_lerobot`).
    """
    writer = LeRobotWriter(root, fps, **config)
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for episode in S.episode_tables(batch):
            writer.add_episode(episode)
    return writer.finalize()
