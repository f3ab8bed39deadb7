"""Device, dtype and CPU-thread choices for the engine."""

from __future__ import annotations

import math
import os
import warnings

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device is {name!r} but CUDA is not available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, hf_config: dict) -> torch.dtype:
    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        saved = hf_config.get("torch_dtype") or hf_config.get("dtype") or "bfloat16"
        dtype = _DTYPES.get(saved, torch.bfloat16)
        return torch.bfloat16 if dtype == torch.float32 else dtype
    dtype = _DTYPES[name]
    if device.type == "cpu" and dtype == torch.float16:
        warnings.warn("float16 on CPU is slow and lossy; prefer bfloat16 or float32", stacklevel=2)
    return dtype


def cpu_allotment() -> int:
    """CPUs this process may use: its affinity mask, bounded by a cgroup CPU quota if one is set."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_cpu_quota() -> int | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "<quota> <period>" or "max <period>"
            quota, period = f.read().split()[:2]
        if quota != "max":
            return math.ceil(int(quota) / int(period))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:  # cgroup v1
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        if quota_us > 0:
            return math.ceil(quota_us / period_us)
    except (OSError, ValueError):
        pass
    return None


def configure_threads(num_threads: int | None) -> int:
    """Use `num_threads` if given; otherwise never more threads than the CPU allotment."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    elif torch.get_num_threads() > cpu_allotment():
        torch.set_num_threads(cpu_allotment())
    return torch.get_num_threads()
