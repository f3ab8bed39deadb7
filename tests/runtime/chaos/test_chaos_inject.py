"""Chaos pieces that need no cluster: corrupt checkpoints are skipped, directives slow or fail a worker."""

import json
import os
import time

import pytest
import torch

from runtime import chaos
from runtime.chaos import hook
from runtime.chaos.toy_train import load_latest_checkpoint, save_checkpoint
from runtime.health.agent import CHAOS_DIR


def _state(value: float) -> dict:
    return {"model": {"weight": torch.full((4,), value)}}


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(str(tmp_path), step, _state(float(step)))
    assert load_latest_checkpoint(str(tmp_path), report=False)[0] == 15
    corrupted = chaos.corrupt_checkpoint(str(tmp_path))
    assert "step_00000015" in corrupted
    step, state = load_latest_checkpoint(str(tmp_path), report=False)
    assert step == 10 and torch.equal(state["model"]["weight"], torch.full((4,), 10.0))


def test_checkpoints_keep_three_and_resave_over_a_corrupt_copy(tmp_path):
    for step in (5, 10, 15, 20):
        save_checkpoint(str(tmp_path), step, _state(float(step)))
    assert sorted(os.listdir(tmp_path)) == ["step_00000010", "step_00000015", "step_00000020"]
    chaos.corrupt_checkpoint(str(tmp_path))
    save_checkpoint(str(tmp_path), 20, _state(20.0))
    assert load_latest_checkpoint(str(tmp_path), report=False)[0] == 20


def _damage_flipped_byte(path: str) -> None:
    with open(path, "rb") as file:
        data = bytearray(file.read())
    data[2] = 0xFF  # not UTF-8
    with open(path, "wb") as file:
        file.write(bytes(data))


def _damage_wrong_shape(path: str) -> None:
    with open(path, "w") as file:
        json.dump({"step": 15}, file)  # no "files"


def _damage_other_step(path: str) -> None:
    with open(path) as file:
        manifest = json.load(file)
    with open(path, "w") as file:
        json.dump({**manifest, "step": 99}, file)


@pytest.mark.parametrize("damage", [_damage_flipped_byte, _damage_wrong_shape, _damage_other_step])
def test_a_damaged_manifest_falls_back_to_the_previous_checkpoint(tmp_path, damage):
    for step in (10, 15):
        save_checkpoint(str(tmp_path), step, _state(float(step)))
    damage(str(tmp_path / "step_00000015" / "manifest.json"))
    step, state = load_latest_checkpoint(str(tmp_path), report=False)
    assert step == 10 and torch.equal(state["model"]["weight"], torch.full((4,), 10.0))


def test_a_resave_killed_before_its_rename_keeps_the_step(tmp_path, monkeypatch):
    save_checkpoint(str(tmp_path), 20, _state(20.0))

    def killed(src, dst):
        raise KeyboardInterrupt("killed before the new copy took its name")

    monkeypatch.setattr("runtime.chaos.toy_train.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(tmp_path), 20, _state(21.0))
    monkeypatch.undo()
    step, state = load_latest_checkpoint(str(tmp_path), report=False)
    assert step == 20 and torch.equal(state["model"]["weight"], torch.full((4,), 20.0))


def test_fill_disk_writes_the_quota_marker(tmp_path):
    injected_s = chaos.fill_disk(str(tmp_path / "ckpt"))
    assert abs(injected_s - time.time()) < 5
    assert (tmp_path / "ckpt" / ".strata_disk_full").exists()


@pytest.fixture
def directive_file():
    os.makedirs(CHAOS_DIR, exist_ok=True)
    path = os.path.join(CHAOS_DIR, f"{os.getpid()}.json")
    yield path
    if os.path.exists(path):
        os.remove(path)
    hook._state.update(mtime=None, directive={})


def test_directives_slow_then_fail_the_worker(directive_file):
    hook.apply_directives(rank=0, step=1)  # no directive: nothing happens
    with open(directive_file, "w") as file:
        json.dump({"sleep_s": 0.2}, file)
    begin = time.perf_counter()
    hook.apply_directives(rank=0, step=2)
    assert time.perf_counter() - begin >= 0.2
    time.sleep(0.01)
    with open(directive_file, "w") as file:
        json.dump({"raise_message": "CUDA error (Xid 13)"}, file)
    os.utime(directive_file, ns=(time.time_ns(), time.time_ns()))
    with pytest.raises(RuntimeError, match="Xid 13"):
        hook.apply_directives(rank=0, step=3)
