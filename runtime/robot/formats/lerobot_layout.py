"""LeRobot v3.0 layout rules shared by our writer and reader: paths, features, frame-table mapping."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from runtime.robot import schema as S

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"

# What the Hugging Face `datasets.Image` feature stores in Parquet.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
_ARROW_DTYPES = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(), "int32": pa.int32(),
                 "int16": pa.int16(), "uint8": pa.uint8(), "bool": pa.bool_(), "string": pa.string()}
_CODEC_NAMES = {"libx264": "h264", "libsvtav1": "av1", "libx265": "hevc"}
_SKIP_COLUMNS = {S.TASK, S.EPISODE_INDEX, S.FRAME_INDEX, S.TIMESTAMP}


class FileCursor:
    """(chunk_index, file_index) of the file being written; a chunk holds `chunks_size` files."""

    def __init__(self, chunks_size: int, first_chunk_index: int = 0):
        self.chunks_size = chunks_size
        self.chunk_index = first_chunk_index
        self.file_index = 0

    def advance(self) -> None:
        if self.file_index == self.chunks_size - 1:
            self.chunk_index, self.file_index = self.chunk_index + 1, 0
        else:
            self.file_index += 1

    @property
    def indices(self) -> dict[str, int]:
        return {"chunk_index": self.chunk_index, "file_index": self.file_index}


def _dtype_name(arrow_type: pa.DataType) -> str:
    for name, candidate in _ARROW_DTYPES.items():
        if arrow_type == candidate or (name == "string" and pa.types.is_large_string(arrow_type)):
            return name
    raise ValueError(f"no LeRobot dtype for Arrow type {arrow_type}")


def infer_features(table: pa.Table, fps: int, *, use_videos: bool = True, video_codec: str = "libx264") -> dict:
    """LeRobot `features` for a frame table; columns that are all null are left out."""
    features: dict[str, dict] = {}
    for name in table.column_names:
        column = table.column(name)
        if name in _SKIP_COLUMNS or column.null_count == len(column):
            continue
        first = column[0].as_py()
        if name.startswith(S.IMAGE_PREFIX):
            height, width, channels = S.decode_image(first).shape
            feature = {"dtype": "video" if use_videos else "image", "shape": [height, width, channels],
                       "names": ["height", "width", "channels"]}
            if use_videos:
                feature["info"] = {"video.height": height, "video.width": width, "video.channels": channels,
                                   "video.codec": _CODEC_NAMES.get(video_codec, video_codec),
                                   "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                                   "has_audio": False}
            features[name] = feature
        elif name.startswith(S.DEPTH_PREFIX):
            height, width = S.decode_depth(first).shape
            features[name] = {"dtype": "image", "shape": [height, width, 1],
                              "names": ["height", "width", "channels"],
                              "info": {"is_depth_map": True, "depth_unit": "mm", "encoding": "png16"}}
        elif name == S.POINTCLOUD:
            features[name] = {"dtype": "float32", "shape": [-1], "names": None}
        elif pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            features[name] = {"dtype": _dtype_name(column.type.value_type), "shape": [len(first)], "names": None}
        else:
            features[name] = {"dtype": _dtype_name(column.type), "shape": [1], "names": None}
    features.update(DEFAULT_FEATURES)
    return features


def feature_arrow_type(feature: dict) -> pa.DataType:
    if feature["dtype"] == "image":
        return IMAGE_STRUCT
    value_type = _ARROW_DTYPES[feature["dtype"]]
    return value_type if feature["shape"] == [1] else pa.list_(value_type)


def data_schema(features: dict) -> pa.Schema:
    return pa.schema([pa.field(key, feature_arrow_type(ft)) for key, ft in features.items() if ft["dtype"] != "video"])


def to_data_table(
    table: pa.Table, features: dict, episode_index: int, global_start: int, task_indices: list[int]
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Frame table -> (LeRobot data rows, decoded video frames per video key)."""
    num_rows = table.num_rows
    columns: dict[str, pa.Array] = {}
    videos: dict[str, np.ndarray] = {}
    for key, feature in features.items():
        arrow_type = feature_arrow_type(feature) if feature["dtype"] != "video" else None
        if feature["dtype"] == "video":
            images = table.column(key).to_pylist()
            videos[key] = np.stack([S.decode_image(image) for image in images])
            if list(videos[key].shape[1:]) != feature["shape"]:
                raise ValueError(f"{key}: frames have shape {videos[key].shape[1:]}, feature says {feature['shape']}")
            continue
        if key == "index":
            columns[key] = pa.array(np.arange(global_start, global_start + num_rows), pa.int64())
        elif key == "task_index":
            columns[key] = pa.array(task_indices, pa.int64())
        elif key == "episode_index":
            columns[key] = pa.array(np.full(num_rows, episode_index), pa.int64())
        elif key not in table.column_names:
            columns[key] = pa.nulls(num_rows, arrow_type)
        elif feature["dtype"] == "image":
            data = table.column(key).combine_chunks()
            columns[key] = pa.StructArray.from_arrays([data.cast(pa.binary()), pa.nulls(num_rows, pa.string())],
                                                      fields=list(IMAGE_STRUCT))
        else:
            column = table.column(key).cast(arrow_type)
            if feature["shape"] not in ([1], [-1]):
                lengths = pa.compute.list_value_length(column).to_numpy(zero_copy_only=False)
                bad = lengths != feature["shape"][0]
                if np.any(bad):
                    raise ValueError(f"{key}: rows must have {feature['shape'][0]} values, found "
                                     f"{int(lengths[np.argmax(bad)])}")
            columns[key] = column
    schema = data_schema(features)
    return pa.Table.from_pydict({name: columns[name] for name in schema.names}, schema=schema), videos


def from_data_table(data: pa.Table, features: dict, tasks: list[str]) -> pa.Table:
    """LeRobot data rows (without video columns) -> frame rows in runtime.robot.schema."""
    columns: dict[str, pa.Array] = {}
    for key in data.column_names:
        if key in ("index", "task_index"):
            continue
        column = data.column(key)
        if key in features and features[key]["dtype"] == "image":
            column = pa.compute.struct_field(column, "bytes")
        columns[key] = column
    task_index = data.column("task_index").to_numpy()
    columns[S.TASK] = pa.array([tasks[i] for i in task_index], pa.string())
    columns[S.TIMESTAMP] = data.column(S.TIMESTAMP).cast(pa.float64())
    return pa.table(columns)
