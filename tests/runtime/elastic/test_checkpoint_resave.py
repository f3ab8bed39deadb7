"""Re-saving a step that is already on disk (a restart that reaches it again, a repair from the
replica) sets the old copy aside until the new one is complete: a crash in between never leaves
zero good copies of that step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import torch

from runtime.elastic import checkpoint_format as fmt
from runtime.elastic.checkpoint import CheckpointManager

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_sigkill_between_set_aside_and_new_copy_leaves_the_step_loadable(tmp_path):
    """A real process killed right before the new copy of step 20 takes its name."""
    script = textwrap.dedent(
        f"""
        import os, sys, time, torch
        sys.path.insert(0, {REPO_ROOT!r})
        from runtime.elastic.checkpoint import CheckpointManager
        ckpt = CheckpointManager({str(tmp_path)!r}, replicate=False)
        ckpt.save(10, {{"w": torch.full((8,), 10.0)}})
        ckpt.save(20, {{"w": torch.full((8,), 20.0)}})
        real_rename = os.rename

        def rename_then_hang(source, destination):
            if os.path.basename(destination) == "step_00000020":
                print("RENAMING", source, destination, flush=True)
                time.sleep(60)  # killed here: the new copy is complete but not yet in place
            real_rename(source, destination)

        os.rename = rename_then_hang
        ckpt.save(20, {{"w": torch.full((8,), 21.0)}})
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("RENAMING"), line
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    step, state, _ = CheckpointManager(str(tmp_path), replicate=False).latest()
    assert step == 20 and torch.equal(state["w"], torch.full((8,), 20.0))  # the old copy, whole

    # The next save of step 20 takes its place; the copy set aside goes once the new one is complete.
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    assert ckpt.save(20, {"w": torch.full((8,), 22.0)})
    assert torch.equal(ckpt.latest()[1]["w"], torch.full((8,), 22.0))
    # (The killed save's temp dir is left to remove_stale_temp_dirs, which waits for it to go stale.)
    names = sorted(name for name in os.listdir(tmp_path) if not name.startswith(".tmp_"))
    assert names == [fmt.step_dir_name(10), fmt.step_dir_name(20)]


def test_resave_replaces_the_step_and_leaves_nothing_aside(tmp_path):
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    assert ckpt.save(20, {"w": torch.zeros(4)})
    assert ckpt.save(20, {"w": torch.ones(4)})
    assert torch.equal(ckpt.latest()[1]["w"], torch.ones(4))
    assert os.listdir(tmp_path) == [fmt.step_dir_name(20)]


def test_a_copy_set_aside_counts_toward_keep(tmp_path):
    """Pruning sees a step whose only copy was set aside, and removes it like any old checkpoint."""
    ckpt = CheckpointManager(str(tmp_path), keep=2, replicate=False)
    assert ckpt.save(10, {"w": torch.zeros(4)})
    os.rename(tmp_path / fmt.step_dir_name(10), tmp_path / f"{fmt.ASIDE_PREFIX}{fmt.step_dir_name(10)}_0123abcd")
    assert ckpt.latest()[0] == 10
    assert ckpt.save(20, {"w": torch.zeros(4)})
    assert ckpt.save(30, {"w": torch.zeros(4)})
    assert sorted(os.listdir(tmp_path)) == [fmt.step_dir_name(20), fmt.step_dir_name(30)]
