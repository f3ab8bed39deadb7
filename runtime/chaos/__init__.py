"""Fault injection for tests, drills and benchmarks: kill, hang, slow, remove nodes, fake NVML, corrupt, fill."""

from runtime.chaos.inject import (
    corrupt_checkpoint,
    fail_worker,
    fill_disk,
    gpu_fault,
    hang_worker,
    kill_worker,
    nvml_fault,
    remove_node,
    remove_worker_node,
    slow_worker,
)

__all__ = [
    "corrupt_checkpoint",
    "fail_worker",
    "fill_disk",
    "gpu_fault",
    "hang_worker",
    "kill_worker",
    "nvml_fault",
    "remove_node",
    "remove_worker_node",
    "slow_worker",
]
