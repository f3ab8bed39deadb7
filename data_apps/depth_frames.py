"""Depth frames from a directory for data_apps.pointcloud: a file that cannot be read as a depth image of
the configured size is quarantined (copied with its reason, as the episode pipelines do) and left out,
so one bad frame never stops the job."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from runtime.robot import schema
from runtime.robot.manifest import Quarantine


def depth_frame_problem(path: str, data: bytes, *, height: int, width: int) -> str | None:
    """Why the file at `path` holding `data` is not a usable (height, width) depth frame, or None."""
    try:
        if path.lower().endswith(".npy"):
            depth = np.load(io.BytesIO(data), allow_pickle=False)
            if depth.dtype.kind not in "uif":
                return f"depth array has dtype {depth.dtype}, expected integers or floats"
        else:
            depth = schema.decode_depth(data)
    except Exception as error:  # numpy and PIL raise several types for bytes that are not their format
        return f"not a readable depth frame: {type(error).__name__}: {error}"
    if depth.shape != (height, width):
        return f"depth frame has shape {list(depth.shape)}, expected [{height}, {width}] (--height/--width)"
    return None


class CheckDepthFrames:
    """Ray Data batch stage: keeps the usable frames as `depth` (PNG bytes, or arrays from .npy) and
    quarantines the rest under `quarantine_root`."""

    def __init__(self, *, height: int, width: int, quarantine_root: str, npy: bool):
        self.height, self.width, self.quarantine_root, self.npy = height, width, quarantine_root, npy

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        kept = []
        for path, data in zip(batch["path"], batch["bytes"]):
            data = bytes(data)
            problem = depth_frame_problem(str(path), data, height=self.height, width=self.width)
            if problem is None:
                kept.append((str(path), data))
            else:
                Quarantine(self.quarantine_root).add(str(path), problem)
        if self.npy:
            depth = np.stack([np.load(io.BytesIO(data), allow_pickle=False) for _, data in kept]) if kept else (
                np.zeros((0, self.height, self.width), np.float32))
        else:
            depth = np.empty(len(kept), dtype=object)
            depth[:] = [data for _, data in kept]
        return {"depth": depth}


def read_depth_frames(src: str, *, height: int, width: int, quarantine_root: str, batch_size: int = 32):
    """A directory of depth frames: 16-bit PNG in millimetres, or .npy arrays in depth_scale units."""
    import ray.data

    files = sorted(Path(src).rglob("*"))
    pngs = [str(path) for path in files if path.suffix.lower() == ".png"]
    npys = [str(path) for path in files if path.suffix.lower() == ".npy"]
    if pngs and npys:
        raise ValueError(f"src {src} mixes .png and .npy depth frames; use one kind")
    if not pngs and not npys:
        raise ValueError(f"src {src} holds no .png or .npy depth frames")
    frames = ray.data.read_binary_files(pngs or npys, include_paths=True)
    check = CheckDepthFrames(height=height, width=width, quarantine_root=quarantine_root, npy=bool(npys))
    return frames.map_batches(check, batch_size=batch_size, batch_format="numpy")
