"""The in-memory checkpoint replica on a real multi-node cluster: another node, restores without disk."""

from __future__ import annotations

import shutil

import pytest
import ray
import torch

from runtime.elastic.checkpoint import CheckpointManager
from runtime.elastic.checkpoint_replica import drop_replica, find_replica

pytestmark = pytest.mark.multinode


@ray.remote(num_cpus=0, resources={"role_train": 0.01})
def save_on_train_node(checkpoint_dir: str, step: int) -> str:
    ckpt = CheckpointManager(checkpoint_dir, replicate=True)
    assert ckpt.save(step, {"w": torch.full((128, 128), float(step)), "step": step}, metadata={"loss": 1.0})
    return ray.get_runtime_context().get_node_id()


def test_replica_lives_on_another_node_and_restores_without_disk(multinode_cluster, tmp_path):
    checkpoint_dir = str(tmp_path / "ckpt")
    ray.get(save_on_train_node.remote(checkpoint_dir, 10))
    writer_node = ray.get(save_on_train_node.remote(checkpoint_dir, 20))
    replica = find_replica(checkpoint_dir)
    assert replica is not None
    assert ray.get(replica.node_id.remote()) != writer_node
    assert ray.get(replica.step.remote()) == 20

    shutil.rmtree(checkpoint_dir)  # storage gone (or slow): recovery comes from memory
    step, state, metadata = CheckpointManager(checkpoint_dir).latest()
    assert step == 20 and state["step"] == 20 and metadata == {"loss": 1.0}
    assert torch.equal(state["w"], torch.full((128, 128), 20.0))
    drop_replica(checkpoint_dir)


def test_lost_replica_falls_back_to_storage(multinode_cluster, tmp_path):
    checkpoint_dir = str(tmp_path / "ckpt")
    ray.get(save_on_train_node.remote(checkpoint_dir, 30))
    replica = find_replica(checkpoint_dir)
    ray.kill(replica)  # what losing the replica's node does to it
    step, state, _ = CheckpointManager(checkpoint_dir).latest()
    assert step == 30 and torch.equal(state["w"], torch.full((128, 128), 30.0))
    # The next save recreates the replica.
    ray.get(save_on_train_node.remote(checkpoint_dir, 40))
    assert ray.get(find_replica(checkpoint_dir).step.remote()) == 40
    drop_replica(checkpoint_dir)


def test_corrupt_replica_is_skipped_for_storage(multinode_cluster, tmp_path):
    checkpoint_dir = str(tmp_path / "ckpt")
    ray.get(save_on_train_node.remote(checkpoint_dir, 50))
    replica = find_replica(checkpoint_dir)
    blobs = ray.get(replica.get.remote())
    blobs.files["state.json"] = blobs.files["state.json"].replace(b"50", b"51")
    ray.get(replica.put.remote(blobs))
    step, state, _ = CheckpointManager(checkpoint_dir).latest()
    assert step == 50 and state["step"] == 50
    drop_replica(checkpoint_dir)


def test_corrupt_disk_copy_is_repaired_from_the_replica(multinode_cluster, tmp_path):
    from runtime.chaos.inject import corrupt_checkpoint
    from runtime.elastic import checkpoint_format as fmt

    checkpoint_dir = str(tmp_path / "ckpt")
    ray.get(save_on_train_node.remote(checkpoint_dir, 60))
    corrupt_checkpoint(checkpoint_dir)
    path = str(tmp_path / "ckpt" / fmt.step_dir_name(60))
    with pytest.raises(fmt.CheckpointCorruptError):
        fmt.read_blobs(path)
    step, state, _ = CheckpointManager(checkpoint_dir).latest()
    assert step == 60 and state["step"] == 60
    assert fmt.read_blobs(path).step == 60  # storage healed from memory
    drop_replica(checkpoint_dir)
