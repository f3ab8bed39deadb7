"""Fault injection against a supervised run (or any Ray Train run, given worker pids and node agents).

Each function returns the wall-clock time of the injection, so a drill can measure detection
latency and MTTR from the moment the fault really happened.
"""

from __future__ import annotations

import glob
import os
import signal
import time
from typing import Any

import ray


def _worker(supervisor: Any, rank: int) -> tuple[dict, Any]:
    workers = ray.get(supervisor.workers.remote())
    worker = next((w for w in workers if w["rank"] == rank), None)
    if worker is None:
        raise ValueError(f"chaos: no worker with rank {rank} (workers: {workers})")
    agent = ray.get(supervisor.agents.remote())[worker["node_id"]]
    return worker, agent


def kill_worker(supervisor: Any, rank: int) -> float:
    """SIGKILL the training process of `rank`."""
    worker, agent = _worker(supervisor, rank)
    injected_s = time.time()
    ray.get(agent.send_signal.remote(worker["pid"], signal.SIGKILL))
    return injected_s


def hang_worker(supervisor: Any, rank: int) -> float:
    """SIGSTOP the training process of `rank`: it stays alive but makes no progress."""
    worker, agent = _worker(supervisor, rank)
    injected_s = time.time()
    ray.get(agent.send_signal.remote(worker["pid"], signal.SIGSTOP))
    return injected_s


def slow_worker(supervisor: Any, rank: int, sleep_s: float = 0.5) -> float:
    """Make `rank` sleep `sleep_s` every step (a straggler)."""
    worker, agent = _worker(supervisor, rank)
    injected_s = time.time()
    ray.get(agent.set_chaos.remote(worker["pid"], {"sleep_s": sleep_s}))
    return injected_s


def nvml_fault(supervisor: Any, rank: int, kind: str, value: int | None = None, gpu_index: int = 0) -> float:
    """Inject a fake NVML fault on the node of `rank` (kind: xid with value=XID, ecc_dbe, row_remap_failure,
    thermal_throttle, nvlink, recovery_action with value=action, gpu_lost; see HealthAgent.inject_nvml)."""
    worker, agent = _worker(supervisor, rank)
    return ray.get(agent.inject_nvml.remote(kind, gpu_index, value))


# What a GPU fault does to the process using that GPU, so a drill's vanilla run meets the same event:
# most XIDs surface as a CUDA error in the next kernel; a GPU that fell off the bus blocks the process.
_GPU_FAULT_EFFECT = {13: "raise", 31: "raise", 48: "raise", 94: "raise", 95: "raise", 79: "hang", 119: "hang"}


def gpu_fault(supervisor: Any, rank: int, xid: int) -> float:
    """An XID on the GPU of `rank`: the NVML event (fake backend) plus its effect on the training process."""
    worker, agent = _worker(supervisor, rank)
    injected_s = ray.get(agent.inject_nvml.remote("xid", 0, xid))
    effect = _GPU_FAULT_EFFECT.get(xid)
    if effect == "raise":
        agent.set_chaos.remote(worker["pid"], {"raise_message": f"CUDA error: unspecified launch failure (Xid {xid})"})
    elif effect == "hang":
        agent.send_signal.remote(worker["pid"], signal.SIGSTOP)
    return injected_s


def fail_worker(supervisor: Any, rank: int, message: str) -> float:
    """Make `rank` raise RuntimeError(message) at its next step."""
    worker, agent = _worker(supervisor, rank)
    injected_s = time.time()
    ray.get(agent.set_chaos.remote(worker["pid"], {"raise_message": message}))
    return injected_s


def remove_node(cluster: Any, node_id: str) -> float:
    """Remove the raylet of `node_id` from a `ray.cluster_utils.Cluster` (node loss)."""
    node = next((n for n in cluster.worker_nodes if n.node_id == node_id), None)
    if node is None:
        raise ValueError(f"chaos: node {node_id} is not a worker node of this cluster")
    injected_s = time.time()
    cluster.remove_node(node)
    return injected_s


def remove_worker_node(cluster: Any, supervisor: Any, rank: int) -> float:
    worker, _ = _worker(supervisor, rank)
    return remove_node(cluster, worker["node_id"])


def corrupt_checkpoint(checkpoint_dir: str) -> str:
    """Flip bytes in the largest file of the newest checkpoint directory under `checkpoint_dir`."""
    candidates = [path for path in glob.glob(os.path.join(checkpoint_dir, "*")) if os.path.isdir(path)
                  and not path.endswith(".tmp")]
    if not candidates:
        raise ValueError(f"chaos: no checkpoint under {checkpoint_dir}")
    newest = max(candidates, key=os.path.getmtime)
    files = [os.path.join(root, name) for root, _, names in os.walk(newest) for name in names
             if not name.endswith(".json")]
    target = max(files, key=os.path.getsize)
    with open(target, "r+b") as file:
        data = bytearray(file.read())
        middle = len(data) // 2
        for index in range(middle, min(middle + 64, len(data))):
            data[index] ^= 0xFF
        file.seek(0)
        file.write(data)
    return target


def fill_disk(checkpoint_dir: str) -> float:
    """Declare the checkpoint path full. On a shared dev machine we cannot really fill the disk, so
    this writes the quota marker HostSource honours (`.strata_disk_full`), the same way a quota'd
    volume reports no space; a real full disk is seen through shutil.disk_usage by the same check."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    injected_s = time.time()
    with open(os.path.join(checkpoint_dir, ".strata_disk_full"), "w") as file:
        file.write(str(injected_s))
    return injected_s
