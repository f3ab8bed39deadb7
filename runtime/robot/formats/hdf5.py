"""robomimic-style HDF5 episode files: data/demo_N/{obs/<key>, actions, rewards, dones}.

Each demo is one episode, read on its own (h5py reads only that demo's datasets), keyed
"<file>#demo_N". Observation keys are split into state (concatenated low-dimensional arrays),
cameras (uint8 (T, H, W, 3)) and depth (keys containing "depth").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import h5py
import numpy as np
import pyarrow as pa

from runtime.robot import schema as S


@dataclass(kw_only=True, slots=True)
class HDF5Mapping:
    """Which obs keys become state / cameras / depth (None: detect), the fps and the task text
    (None: the env name from data.attrs["env_args"])."""

    state_keys: list[str] | None = None
    image_keys: dict[str, str] | None = None
    depth_keys: dict[str, str] | None = None
    fps: float = 20.0
    task: str | None = None
    camera_suffixes: tuple[str, ...] = field(default=("_image", "_rgb"))

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


def _demo_number(name: str) -> int:
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else -1


def demo_names(handle: h5py.File) -> list[str]:
    if "data" not in handle:
        raise ValueError(f"{handle.filename}: no 'data' group (not a robomimic-style file)")
    return sorted(handle["data"].keys(), key=lambda name: (_demo_number(name), name))


def _split_obs(obs: h5py.Group, mapping: HDF5Mapping) -> tuple[list[str], dict[str, str], dict[str, str]]:
    depth = mapping.depth_keys
    if depth is None:
        depth = {key.removesuffix("_depth"): key for key in obs if "depth" in key}
    images = mapping.image_keys
    if images is None:
        images = {}
        for key in obs:
            if key in depth.values() or obs[key].ndim != 4 or obs[key].dtype != np.uint8:
                continue
            camera = next((key.removesuffix(s) for s in mapping.camera_suffixes if key.endswith(s)), key)
            images[camera] = key
    state = mapping.state_keys
    if state is None:
        state = sorted(key for key in obs if obs[key].ndim <= 2 and key not in depth.values())
    return state, images, depth


def _task(handle: h5py.File, mapping: HDF5Mapping) -> str:
    if mapping.task is not None:
        return mapping.task
    env_args = handle["data"].attrs.get("env_args")
    return json.loads(env_args).get("env_name", "") if env_args else ""


def read_episodes(
    source: str, skip: frozenset[str] = frozenset(), mapping: HDF5Mapping | None = None
) -> Iterator[pa.Table]:
    """`EpisodeDatasource` reader: one table per demo not yet committed."""
    mapping = mapping or HDF5Mapping()
    with h5py.File(source, "r") as handle:
        names = demo_names(handle)
        task = _task(handle, mapping)
        for name in names:
            key = f"{source}#{name}"
            if key in skip:
                continue
            yield _episode(handle["data"][name], key, task, mapping)


def _episode(demo: h5py.Group, key: str, task: str, mapping: HDF5Mapping) -> pa.Table:
    obs = demo["obs"]
    state_keys, image_keys, depth_keys = _split_obs(obs, mapping)
    actions = np.asarray(demo["actions"], dtype=np.float32)
    num_frames = len(actions)
    state = np.concatenate([np.asarray(obs[k], np.float32).reshape(num_frames, -1) for k in state_keys], axis=1)
    rewards = np.asarray(demo["rewards"], np.float32) if "rewards" in demo else None
    dones = np.asarray(demo["dones"]).astype(bool) if "dones" in demo else np.arange(num_frames) == num_frames - 1
    columns: dict[str, pa.Array] = {
        S.EPISODE_INDEX: pa.array(np.zeros(num_frames, np.int64)),
        S.FRAME_INDEX: pa.array(np.arange(num_frames, dtype=np.int64)),
        S.TIMESTAMP: pa.array(np.arange(num_frames) / mapping.fps),
        S.TASK: pa.array([task] * num_frames, pa.string()),
        S.STATE: _list_column(state),
        S.ACTION: _list_column(actions),
        S.DONE: pa.array(dones),
    }
    if rewards is not None:
        columns[S.REWARD] = pa.array(rewards)
        columns[S.SUCCESS] = pa.array(rewards > 0)
    for camera, obs_key in image_keys.items():
        columns[S.image_key(camera)] = pa.array([S.encode_image(frame) for frame in obs[obs_key]], pa.binary())
    for camera, obs_key in depth_keys.items():
        frames = np.asarray(obs[obs_key])
        columns[S.depth_key(camera)] = pa.array([S.encode_depth(f.reshape(f.shape[:2])) for f in frames], pa.binary())
    columns[S.EPISODE_SOURCE] = pa.array([key] * num_frames, pa.string())
    return pa.table(columns)


def _list_column(values: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(values, dtype=np.float32)
    offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.ravel()))


def read_hdf5(paths: list[str], mapping: HDF5Mapping | None = None, *, skip_sources=(), quarantine_dir=None,
              **read_kwargs):
    """A streaming `ray.data.Dataset` of frame rows from robomimic-style HDF5 files."""
    import functools

    import ray.data

    from runtime.robot.formats.datasource import EpisodeDatasource

    source = EpisodeDatasource(paths, functools.partial(read_episodes, mapping=mapping), skip_sources=skip_sources,
                               quarantine_dir=quarantine_dir, name="HDF5")
    read_kwargs.setdefault("override_num_blocks", source.num_read_tasks())
    return ray.data.read_datasource(source, **read_kwargs)
