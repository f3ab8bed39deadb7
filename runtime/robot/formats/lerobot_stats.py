"""Feature statistics in LeRobot's shape: per-episode stats and their exact count-weighted merge."""

from __future__ import annotations

import numpy as np

STAT_NAMES = ("min", "max", "mean", "std", "count")
_MAX_IMAGE_FRAMES_FOR_STATS = 64


def array_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over axis 0 of (N, ...) values; `count` is [N]."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    return {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
        "count": np.array([len(values)]),
    }


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (T, H, W, 3) uint8 frames in [0, 1], shaped (3, 1, 1) as LeRobot keeps them."""
    step = max(1, len(frames) // _MAX_IMAGE_FRAMES_FOR_STATS)
    sample = frames[::step].astype(np.float64) / 255.0
    per_channel = sample.reshape(-1, sample.shape[-1])
    stats = array_stats(per_channel)
    out = {name: value.reshape(-1, 1, 1) for name, value in stats.items() if name != "count"}
    out["count"] = np.array([len(frames)])
    return out


def merge_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode stats into dataset stats (parallel-variance formula, exact)."""
    counts = np.array([float(part["count"][0]) for part in parts])
    total = counts.sum()
    weights = counts / total
    means = np.stack([part["mean"] for part in parts])
    weights_b = weights.reshape((-1,) + (1,) * (means.ndim - 1))
    mean = (means * weights_b).sum(axis=0)
    second_moment = ((np.stack([part["std"] for part in parts]) ** 2 + means**2) * weights_b).sum(axis=0)
    return {
        "min": np.stack([part["min"] for part in parts]).min(axis=0),
        "max": np.stack([part["max"] for part in parts]).max(axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(second_moment - mean**2, 0.0)),
        "count": np.array([int(total)]),
    }


def to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict:
    return {key: {name: np.asarray(value).tolist() for name, value in part.items()} for key, part in stats.items()}
