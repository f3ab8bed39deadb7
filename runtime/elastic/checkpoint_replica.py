"""In-memory checkpoint replica: a named actor on another node holds the newest checkpoint's blobs.

Ray Train's checkpoints go to storage only; restoring a restarted worker group from memory through
the object store is what this adds. The actor is detached (it must outlive the training workers
that feed it, which is the point) and placed on a node other than the writer's, so losing the
writer's node does not lose the replica; losing the replica's node falls back to storage.
"""

from __future__ import annotations

import hashlib
import logging
import os

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from runtime.elastic.checkpoint_format import CheckpointBlobs

logger = logging.getLogger(__name__)

REPLICA_NAMESPACE = "strata_checkpoints"


@ray.remote(num_cpus=0, max_restarts=0)
class CheckpointReplica:
    """Holds the blobs of the newest checkpoint saved under one checkpoint_dir."""

    def __init__(self, checkpoint_dir: str) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.blobs: CheckpointBlobs | None = None

    def put(self, blobs: CheckpointBlobs) -> int:
        # The newest save wins even if its step is lower: after a rollback it is the live lineage.
        self.blobs = blobs
        return blobs.step

    def get(self) -> CheckpointBlobs | None:
        return self.blobs

    def step(self) -> int | None:
        return None if self.blobs is None else self.blobs.step

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def clear(self) -> None:
        self.blobs = None


def replica_name(checkpoint_dir: str) -> str:
    digest = hashlib.sha1(os.path.abspath(checkpoint_dir).encode()).hexdigest()[:12]
    return f"ckpt_replica_{digest}"


def find_replica(checkpoint_dir: str):
    """The replica actor for checkpoint_dir, or None when there is none (or Ray is not running)."""
    if not ray.is_initialized():
        return None
    try:
        return ray.get_actor(replica_name(checkpoint_dir), namespace=REPLICA_NAMESPACE)
    except ValueError:
        return None


def _other_node_id(exclude_node_id: str) -> str | None:
    """An alive node other than the writer's; the head node first (it is the last to be replaced)."""
    candidates = [node for node in ray.nodes() if node.get("Alive") and node["NodeID"] != exclude_node_id]
    if not candidates:
        return None
    head_first = sorted(candidates, key=lambda node: not node.get("Resources", {}).get("node:__internal_head__"))
    return head_first[0]["NodeID"]


def get_or_create_replica(checkpoint_dir: str):
    """The replica actor, created on another node than this process's when it does not exist yet."""
    existing = find_replica(checkpoint_dir)
    if existing is not None:
        return existing
    here = ray.get_runtime_context().get_node_id()
    target = _other_node_id(here)
    if target is None:
        logger.warning("checkpoint replica: no other alive node; holding the replica on this node (%s)", here)
        target = here
    return CheckpointReplica.options(
        name=replica_name(checkpoint_dir),
        namespace=REPLICA_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        # Hard affinity: a soft one may quietly land on the writer's node under load. If the target
        # dies before placement, the put fails, storage still has the checkpoint, the next save retries.
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=target, soft=False),
    ).remote(checkpoint_dir)


def drop_replica(checkpoint_dir: str) -> bool:
    """Kill the replica actor for checkpoint_dir (end of a run); True when one existed."""
    actor = find_replica(checkpoint_dir)
    if actor is None:
        return False
    ray.kill(actor)
    return True
