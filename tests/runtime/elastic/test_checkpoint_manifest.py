"""A damaged manifest (flipped byte, wrong shape, step that disagrees with its directory) never
crash-loops a restore: that checkpoint is skipped with one log line naming the file and the reason,
and the newest good one is used."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from runtime.elastic import checkpoint_format as fmt
from runtime.elastic.checkpoint import CheckpointManager
from runtime.elastic.checkpoint_manifest import validate_manifest


def _flip_a_byte(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x80  # an ASCII byte becomes a lone UTF-8 continuation byte
    return bytes(damaged)


def _drop_the_step(data: bytes) -> bytes:
    manifest = json.loads(data)
    del manifest["step"]  # a manifest written by another tool, or a truncated-and-fixed-up one
    return json.dumps(manifest).encode()


def _claim_another_step(data: bytes) -> bytes:
    manifest = json.loads(data)
    manifest["step"] = 30  # a directory copied or renamed by hand: step_00000020 holding step 30
    return json.dumps(manifest).encode()


PAYLOAD_FILES = (fmt.TENSORS_FILE, fmt.STATE_FILE, fmt.METADATA_FILE)
DAMAGES = {"flipped_byte": _flip_a_byte, "wrong_shape": _drop_the_step, "step_mismatch": _claim_another_step}


def _save(ckpt: CheckpointManager, step: int) -> None:
    assert ckpt.save(step, {"w": torch.full((4, 4), float(step)), "step": step}, metadata={"loss": 1.0 / step})


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_manifest_resumes_from_the_older_checkpoint(tmp_path, caplog, damage):
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    _save(ckpt, 10)
    _save(ckpt, 20)
    manifest = tmp_path / fmt.step_dir_name(20) / fmt.MANIFEST_FILE
    manifest.write_bytes(DAMAGES[damage](manifest.read_bytes()))

    with caplog.at_level(logging.ERROR, logger="runtime.elastic"):
        step, state, metadata = CheckpointManager(str(tmp_path), replicate=False).latest()

    assert (step, state["step"], metadata) == (10, 10, {"loss": 0.1})
    assert torch.equal(state["w"], torch.full((4, 4), 10.0))
    skipped = [record.getMessage() for record in caplog.records if "skipping corrupt checkpoint" in record.getMessage()]
    assert len(skipped) == 1, skipped  # one line per damaged checkpoint
    assert str(manifest) in skipped[0]  # naming the file


def test_every_manifest_damaged_means_no_checkpoint_to_restore(tmp_path, caplog):
    """The contract of `latest()`: None when there is no good checkpoint (the loop then starts at step 0),
    after one error line per damaged checkpoint and one saying that none is left."""
    ckpt = CheckpointManager(str(tmp_path), replicate=False)
    for step, damage in zip((10, 20, 30), sorted(DAMAGES), strict=True):
        _save(ckpt, step)
        manifest = tmp_path / fmt.step_dir_name(step) / fmt.MANIFEST_FILE
        manifest.write_bytes(DAMAGES[damage](manifest.read_bytes()))

    with caplog.at_level(logging.ERROR, logger="runtime.elastic"):
        assert CheckpointManager(str(tmp_path), replicate=False).latest() is None

    messages = [record.getMessage() for record in caplog.records]
    assert sum("skipping corrupt checkpoint" in message for message in messages) == 3
    assert any("no good checkpoint" in message for message in messages)


@pytest.mark.parametrize(("manifest", "reason"), [
    ([1, 2], "not a JSON object"),
    ({"files": {}}, "'step'"),
    ({"step": "20", "files": {}}, "step must be an int"),
    ({"step": True, "files": {}}, "step must be an int"),
    ({"step": -1, "files": {}}, ">= 0"),
    ({"step": 20, "files": []}, "'files' must be an object"),
    ({"step": 20, "files": {"state.json": {"sha256": "0" * 64, "num_bytes": 1}}}, "must list exactly"),
    ({"step": 20, "files": {name: {"sha256": "x", "num_bytes": 1} for name in PAYLOAD_FILES}}, "sha256"),
    ({"step": 20, "files": {name: {"sha256": "0" * 64, "num_bytes": "1"} for name in PAYLOAD_FILES}},
     "num_bytes"),
    ({"step": 20, "files": {name: ["0" * 64, 1] for name in PAYLOAD_FILES}}, "must be an object"),
    ({"step": 20, "created_s": "yesterday", "files": {}}, "created_s"),
])
def test_manifest_validation_names_the_problem(manifest, reason):
    with pytest.raises(fmt.CheckpointCorruptError, match=reason) as raised:
        validate_manifest(manifest, source="ckpt/step_00000020/manifest.json", expected_step=20)
    assert str(raised.value).startswith("ckpt/step_00000020/manifest.json: ")


def test_manifest_validation_accepts_what_the_writer_writes():
    blobs = fmt.encode_state(20, {"w": torch.ones(2)}, {"loss": 1.0})
    validate_manifest(blobs.manifest, source="memory", expected_step=20)
    with pytest.raises(fmt.CheckpointCorruptError, match="says step 20 but"):
        validate_manifest(blobs.manifest, source="memory", expected_step=30)


def test_a_replica_with_a_damaged_manifest_fails_verification():
    """The in-memory replica goes through the same check as a disk copy."""
    blobs = fmt.encode_state(20, {"w": torch.ones(2)}, None)
    del blobs.manifest["step"]
    with pytest.raises(fmt.CheckpointCorruptError, match="'step'"):
        fmt.verify(blobs)
