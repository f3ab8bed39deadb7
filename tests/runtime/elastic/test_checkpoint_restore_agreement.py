"""Every rank resumes from the same step: rank 0 chooses the newest step all ranks can load and
broadcasts it, and only rank 0 repairs a disk copy from the in-memory replica."""

from __future__ import annotations

import json
import os
import sys

import pytest
import ray
import torch

from runtime.elastic import checkpoint_format as fmt
from runtime.elastic.checkpoint import CheckpointManager
from runtime.elastic.restore_agreement import NO_CHECKPOINT, RoundDecision, decide_round

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray Train workers cannot import tests/


# ---- the decision, pure ------------------------------------------------------------------------------
def test_equal_proposals_are_agreed():
    assert decide_round([20, 20, 20]) == RoundDecision(step=20, agreed=True)


def test_different_proposals_bound_the_next_round_by_the_lowest():
    assert decide_round([30, 20, 30]) == RoundDecision(step=20, agreed=False)


def test_one_rank_without_a_checkpoint_means_a_fresh_start_everywhere():
    assert decide_round([NO_CHECKPOINT, 20]) == RoundDecision(step=NO_CHECKPOINT, agreed=False)
    assert decide_round([NO_CHECKPOINT, NO_CHECKPOINT]) == RoundDecision(step=NO_CHECKPOINT, agreed=True)


def test_no_proposals_is_a_bug():
    with pytest.raises(ValueError, match="no proposals"):
        decide_round([])


# ---- the collective, on real gloo process groups ------------------------------------------------------
def _agree_in_process(rank: int, world_size: int, init_file: str, loadable: list[list[int]], out_dir: str) -> None:
    import torch.distributed as dist

    from runtime.elastic.restore_agreement import agree_on_restore_step

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    asked: list[int | None] = []

    def propose(at_most: int | None) -> int:
        asked.append(at_most)
        steps = [step for step in loadable[rank] if at_most is None or step <= at_most]
        return max(steps, default=NO_CHECKPOINT)

    agreed = agree_on_restore_step(propose)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"agreed": agreed, "asked": asked}, handle)
    dist.destroy_process_group()


def _run_ranks(tmp_path, loadable: list[list[int]]) -> list[dict]:
    import torch.multiprocessing as mp

    world_size = len(loadable)
    mp.spawn(_agree_in_process, args=(world_size, str(tmp_path / "init"), loadable, str(tmp_path)),
             nprocs=world_size, join=True)
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world_size)]


def test_ranks_agree_on_the_newest_step_every_rank_can_load(tmp_path):
    # rank 0 has the replica's step 40; rank 1's newest disk copies fail their check; rank 2 lacks 30.
    results = _run_ranks(tmp_path, [[40, 30, 20, 10], [20, 10], [40, 20, 10]])
    assert [result["agreed"] for result in results] == [20, 20, 20]
    assert results[0]["asked"] == [None, 20]  # two rounds: propose, then propose again under the bound


def test_no_common_step_starts_every_rank_fresh(tmp_path):
    results = _run_ranks(tmp_path, [[30], [20]])
    assert [result["agreed"] for result in results] == [NO_CHECKPOINT, NO_CHECKPOINT]


# ---- the CheckpointManager's restore, in a real Ray Train run --------------------------------------------
def _restore_on_each_rank(config: dict) -> None:
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    results = {}
    for name, checkpoint_dir in config["checkpoint_dirs"].items():
        # Rank 1 of the "replica_newer" run cannot reach the replica (a read that timed out, a lost node).
        blind = name == "replica_newer" and rank == 1
        ckpt = CheckpointManager(checkpoint_dir, replicate=not blind)
        restored = ckpt.latest_agreed()
        results[name] = {"step": None if restored is None else restored[0],
                         "w": None if restored is None else float(restored[1]["w"][0]),
                         "repaired": ckpt.repaired_steps}
    with open(os.path.join(config["out_dir"], f"rank{rank}.json"), "w") as handle:
        json.dump(results, handle)


def _save_with_replica(checkpoint_dir: str, step: int) -> bool:
    return CheckpointManager(checkpoint_dir, replicate=True).save(step, {"w": torch.full((16,), float(step))})


@pytest.mark.slow
def test_ranks_resume_from_the_same_step_and_one_rank_repairs(ray_local, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from runtime.chaos.inject import corrupt_checkpoint, fill_disk
    from runtime.elastic.checkpoint_replica import drop_replica

    # The disk filled up after step 20: step 30 reached only the in-memory replica.
    replica_newer = str(tmp_path / "replica_newer")
    assert _save_with_replica(replica_newer, 20)
    fill_disk(replica_newer)
    assert not _save_with_replica(replica_newer, 30)
    os.remove(os.path.join(replica_newer, ".strata_disk_full"))
    # Storage corrupted the disk copy of step 40; the replica holds it intact.
    disk_corrupt = str(tmp_path / "disk_corrupt")
    assert _save_with_replica(disk_corrupt, 40)
    corrupt_checkpoint(disk_corrupt)

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    trainer = TorchTrainer(
        _restore_on_each_rank,
        train_loop_config={"checkpoint_dirs": {"replica_newer": replica_newer, "disk_corrupt": disk_corrupt},
                           "out_dir": str(out_dir)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="restore_agreement", storage_path=str(tmp_path / "ray_train")),
    )
    try:
        trainer.fit()
        results = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
    finally:
        drop_replica(replica_newer)
        drop_replica(disk_corrupt)

    # Rank 0 alone would take the replica's step 30; rank 1 sees only step 20 on disk.
    assert [result["replica_newer"]["step"] for result in results] == [20, 20]
    assert [result["replica_newer"]["w"] for result in results] == [20.0, 20.0]
    # Both ranks restore step 40 from the replica; the disk copy is rewritten once, by rank 0.
    assert [result["disk_corrupt"]["step"] for result in results] == [40, 40]
    assert [result["disk_corrupt"]["repaired"] for result in results] == [[40], []]
    assert fmt.read_blobs(os.path.join(disk_corrupt, fmt.step_dir_name(40))).step == 40
