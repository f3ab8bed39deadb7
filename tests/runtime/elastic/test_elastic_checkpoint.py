"""CheckpointManager on storage: round trip, async, atomic under crashes, checksums, full disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from fakes.train_disk import CrashAfterFiles, FullDiskOpen, SimulatedCrash

from runtime.elastic import checkpoint_format as fmt
from runtime.elastic.checkpoint import CheckpointManager

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def make_state(step: int, size: int = 64) -> dict:
    generator = torch.Generator().manual_seed(step)
    return {
        "model": {"w": torch.randn(size, size, generator=generator), "b": torch.zeros(size)},
        "optimizer": {"exp_avg": {"w": torch.full((size, size), float(step))}, "step": step},
        "data": {"samples_consumed": step * 16, "order": np.arange(5, dtype=np.int64)},
        "step": step,
        "history": [1.5, 2.5],
    }


def test_round_trip_restores_tensors_arrays_and_json(tmp_path):
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    state = make_state(7)
    ckpt.save_async(7, state, metadata={"loss": 3.25, "world_size": 2})
    assert ckpt.wait(timeout_s=30)
    step, restored, metadata = ckpt.latest()
    assert step == 7 and metadata == {"loss": 3.25, "world_size": 2}
    assert torch.equal(restored["model"]["w"], state["model"]["w"])
    assert torch.equal(restored["optimizer"]["exp_avg"]["w"], state["optimizer"]["exp_avg"]["w"])
    assert isinstance(restored["data"]["order"], np.ndarray)
    np.testing.assert_array_equal(restored["data"]["order"], np.arange(5))
    assert restored["step"] == 7 and restored["history"] == [1.5, 2.5]
    files = sorted(os.listdir(tmp_path / fmt.step_dir_name(7)))
    assert files == sorted([fmt.TENSORS_FILE, fmt.STATE_FILE, fmt.METADATA_FILE, fmt.MANIFEST_FILE])


def test_save_async_snapshots_state_so_training_may_mutate_it(tmp_path):
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    weights = torch.zeros(256, 256)
    ckpt.save_async(1, {"w": weights})
    weights.add_(1.0)  # the loop keeps training while the save runs
    ckpt.wait()
    assert float(ckpt.latest()[1]["w"].sum()) == 0.0


def test_keeps_only_the_newest_checkpoints(tmp_path):
    ckpt = CheckpointManager(str(tmp_path), keep=2, replicate=False)
    for step in (10, 20, 30, 40):
        assert ckpt.save(step, make_state(step))
    assert fmt.list_steps(str(tmp_path)) == [40, 30]
    assert ckpt.latest()[0] == 40


def test_no_checkpoint_returns_none(tmp_path):
    assert CheckpointManager(str(tmp_path / "missing"), replicate=False).latest() is None


def test_crash_mid_save_leaves_previous_checkpoint(tmp_path):
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    assert ckpt.save(10, make_state(10))
    ckpt.open_file = CrashAfterFiles(num_files=2)  # tensors + state written, then the "process dies"
    with pytest.raises(SimulatedCrash):
        fmt.write_atomic(str(tmp_path), fmt.encode_state(20, make_state(20), None), open_file=ckpt.open_file)
    assert fmt.list_steps(str(tmp_path)) == [10]
    step, state, _ = CheckpointManager(str(tmp_path), replicate=False).latest()
    assert step == 10 and torch.equal(state["model"]["w"], make_state(10)["model"]["w"])


def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path):
    """A real process killed while its writer thread is inside a save: no partial step dir survives."""
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        sys.path.insert(0, {REPO_ROOT!r})
        from runtime.elastic.checkpoint import CheckpointManager
        ckpt = CheckpointManager({str(tmp_path)!r}, replicate=False)
        ckpt.save(10, {{"w": torch.ones(8)}})

        def slow_open(path, mode):
            print("WRITING", path, flush=True)
            time.sleep(60)
            return open(path, mode)

        ckpt.open_file = slow_open
        ckpt.save_async(20, {{"w": torch.zeros(1024, 1024)}})
        ckpt.wait()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("WRITING"), line
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert fmt.list_steps(str(tmp_path)) == [10]
    step, state, _ = CheckpointManager(str(tmp_path), replicate=False).latest()
    assert step == 10 and torch.equal(state["w"], torch.ones(8))


def test_corrupt_newest_checkpoint_is_skipped(tmp_path, caplog):
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    assert ckpt.save(10, make_state(10))
    assert ckpt.save(20, make_state(20))
    tensors = tmp_path / fmt.step_dir_name(20) / fmt.TENSORS_FILE
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: a bad sector, a torn write
    tensors.write_bytes(bytes(data))
    step, state, _ = ckpt.latest()
    assert step == 10 and state["step"] == 10
    assert "skipping corrupt checkpoint" in caplog.text and "sha256" in caplog.text


def test_checkpoint_without_manifest_is_not_a_checkpoint(tmp_path):
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    assert ckpt.save(10, make_state(10))
    assert ckpt.save(20, make_state(20))
    os.remove(tmp_path / fmt.step_dir_name(20) / fmt.MANIFEST_FILE)
    assert ckpt.latest()[0] == 10


def test_full_disk_keeps_previous_checkpoint_and_reports(tmp_path, caplog):
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    assert ckpt.save(10, make_state(10))
    ckpt.open_file = FullDiskOpen(capacity_bytes=4096)
    assert not ckpt.save(20, make_state(20))
    assert [failure.step for failure in ckpt.failures] == [20]
    assert "No space left on device" in ckpt.failures[0].error
    assert "stays step 10" in ckpt.failures[0].error
    assert "NOT saved" in caplog.text
    assert fmt.list_steps(str(tmp_path)) == [10]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp_")]
    assert ckpt.latest()[0] == 10
    ckpt.open_file = open  # space freed: saving works again
    assert ckpt.save(30, make_state(30))
    assert ckpt.latest()[0] == 30


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_full_disk_on_a_real_tiny_filesystem(tiny_tmpfs):
    ckpt = CheckpointManager(str(tiny_tmpfs), replicate=False)
    assert ckpt.save(1, {"w": torch.zeros(8, 8)})
    assert not ckpt.save(2, {"w": torch.zeros(256, 256)})  # 256 KiB of tensors > what is left
    assert "No space left on device" in ckpt.failures[0].error
    assert ckpt.latest()[0] == 1


def test_slow_storage_supersedes_queued_saves_without_blocking(tmp_path):
    ckpt = CheckpointManager(str(tmp_path), replicate=False)

    def slow_open(path, mode):
        time.sleep(0.2)
        return open(path, mode)

    ckpt.open_file = slow_open
    for step in range(1, 6):
        ckpt.save_async(step, {"w": torch.full((4,), float(step))})
    ckpt.wait()
    assert ckpt.latest()[0] == 5
    assert len(ckpt.saved_steps) < 5  # queued saves were superseded, the newest one always lands


def test_invalid_arguments_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="checkpoint.keep"):
        CheckpointManager(str(tmp_path), keep=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        CheckpointManager("")


def test_disk_full_quota_marker_fails_saves_like_enospc(tmp_path):
    """`runtime.chaos.inject.fill_disk` declares the path full with a marker; saves fail as on ENOSPC."""
    from runtime.chaos.inject import fill_disk

    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    assert ckpt.save(10, make_state(10))
    fill_disk(str(tmp_path))
    assert not ckpt.save(20, make_state(20))
    assert "No space left on device" in ckpt.failures[0].error
    assert ckpt.latest()[0] == 10
