"""On-disk and in-memory checkpoint format: a state dict as named blobs plus a manifest of checksums.

A checkpoint is a directory `step_00000120/` holding `tensors.safetensors` (every torch/numpy leaf of
the state), `state.json` (the rest of the state tree, with tensor leaves as references),
`metadata.json`, and last `manifest.json` (step, sha256 and size of every other file). It is
written into a hidden temp directory, fsynced, and renamed into place, so a crash mid-save never
leaves a half checkpoint under a `step_*` name; a re-save of a step sets the old copy aside until the
new one is in place. The in-memory replica holds the same blobs, so one
verifier serves both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from runtime.elastic.checkpoint_manifest import (
    MANIFEST_FILE,
    METADATA_FILE,
    STATE_FILE,
    TENSORS_FILE,
    CheckpointCorruptError,
    parse_manifest,
    validate_manifest,
)

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp_"
# A committed step directory renamed aside while a re-save of its step takes its name: the old copy
# stays whole until the new one is complete, then goes. After a crash in between it is the step's copy.
ASIDE_PREFIX = ".aside_"
_ASIDE_DIR = re.compile(rf"^{re.escape(ASIDE_PREFIX)}step_(\d{{8,}})_[0-9a-f]{{8}}$")

# The writer opens files through this hook; tests swap it to simulate a full disk or a crash.
OpenFile = Callable[[str, str], BinaryIO]


@dataclass(kw_only=True, slots=True)
class CheckpointBlobs:
    """A serialized checkpoint: file name -> bytes, and the manifest describing them."""

    step: int
    files: dict[str, bytes]
    manifest: dict

    @property
    def num_bytes(self) -> int:
        return sum(len(data) for data in self.files.values())


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_state(step: int, state: dict, metadata: dict | None) -> CheckpointBlobs:
    """Serialize a (nested) state dict: tensors and arrays into safetensors, everything else into JSON."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(value))
            return {"__ndarray__": path}
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise TypeError(f"checkpoint state keys must be str, got {key!r} at {path or '<root>'}")
            return {key: walk(item, f"{path}/{key}" if path else key) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(item, f"{path}/{index}") for index, item in enumerate(value)]
        if isinstance(value, np.generic):
            return value.item()
        return value

    tree = walk(state, "")
    files = {
        TENSORS_FILE: safetensors_save(tensors) if tensors else b"",
        STATE_FILE: json.dumps(tree).encode(),
        METADATA_FILE: json.dumps(metadata or {}).encode(),
    }
    manifest = {
        "step": step,
        "created_s": time.time(),
        "files": {name: {"sha256": _sha256(data), "num_bytes": len(data)} for name, data in files.items()},
    }
    return CheckpointBlobs(step=step, files=files, manifest=manifest)


def verify(blobs: CheckpointBlobs) -> None:
    """Raise CheckpointCorruptError unless the manifest is well formed, names blobs.step, and every
    file matches its size and sha256."""
    validate_manifest(blobs.manifest, source=f"step {blobs.step}: {MANIFEST_FILE}", expected_step=blobs.step)
    expected = blobs.manifest["files"]
    if set(expected) != set(blobs.files):
        raise CheckpointCorruptError(
            f"step {blobs.step}: files {sorted(blobs.files)} do not match manifest {sorted(expected)}"
        )
    for name, data in blobs.files.items():
        if len(data) != expected[name]["num_bytes"] or _sha256(data) != expected[name]["sha256"]:
            raise CheckpointCorruptError(f"step {blobs.step}: {name} fails its sha256 check")


def decode_state(blobs: CheckpointBlobs) -> tuple[dict, dict]:
    """(state, metadata) from verified blobs; tensors come back as torch, arrays as numpy."""
    tensor_bytes = blobs.files[TENSORS_FILE]
    tensors = safetensors_load(tensor_bytes) if tensor_bytes else {}

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__tensor__"}:
                return tensors[value["__tensor__"]]
            if set(value) == {"__ndarray__"}:
                return tensors[value["__ndarray__"]].numpy()
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    state = walk(json.loads(blobs.files[STATE_FILE]))
    return state, json.loads(blobs.files[METADATA_FILE])


def write_atomic(root: str, blobs: CheckpointBlobs, open_file: OpenFile = open) -> str:
    """Write blobs under root/step_XXXXXXXX via temp dir + fsync + rename; return the final path.

    On any error the temp directory is removed and the error propagates. A re-save of a step already
    on disk renames the old copy aside first and removes it only once the new one is in place, so a
    crash at any point leaves a whole copy of the step (see `list_checkpoint_dirs`).
    """
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, step_dir_name(blobs.step))
    tmp = os.path.join(root, f"{_TMP_PREFIX}{step_dir_name(blobs.step)}_{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    aside = None
    try:
        # Manifest last: a directory is only a checkpoint once its manifest is complete.
        names = [name for name in blobs.files if name != MANIFEST_FILE]
        payloads = [(name, blobs.files[name]) for name in names]
        payloads.append((MANIFEST_FILE, json.dumps(blobs.manifest, indent=1).encode()))
        for name, data in payloads:
            with open_file(os.path.join(tmp, name), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if os.path.exists(final):
            aside = os.path.join(root, f"{ASIDE_PREFIX}{step_dir_name(blobs.step)}_{uuid.uuid4().hex[:8]}")
            os.rename(final, aside)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and not os.path.exists(final):
            os.rename(aside, final)  # the new copy never took the name: the old one takes it back
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_of_dir(path: str) -> int | None:
    """The step a checkpoint directory's name says (`step_*` or a copy set aside), else None."""
    name = os.path.basename(os.path.normpath(path))
    match = _STEP_DIR.match(name) or _ASIDE_DIR.match(name)
    return int(match.group(1)) if match else None


def read_blobs(path: str) -> CheckpointBlobs:
    """Read a checkpoint directory and verify it; raises CheckpointCorruptError when it does not check out.

    The manifest is checked field by field and its step against the directory's name.
    """
    manifest_path = os.path.join(path, MANIFEST_FILE)
    if not os.path.exists(manifest_path):
        raise CheckpointCorruptError(f"{path}: no {MANIFEST_FILE}")
    with open(manifest_path, "rb") as handle:
        manifest = parse_manifest(handle.read(), source=manifest_path, expected_step=step_of_dir(path))
    files = {}
    for name in manifest["files"]:  # only the format's own file names: validated above
        file_path = os.path.join(path, name)
        if not os.path.exists(file_path):
            raise CheckpointCorruptError(f"{path}: {name} is missing")
        with open(file_path, "rb") as handle:
            files[name] = handle.read()
    blobs = CheckpointBlobs(step=manifest["step"], files=files, manifest=manifest)
    verify(blobs)
    return blobs


def list_steps(root: str) -> list[int]:
    """Steps of the committed checkpoint directories under root, newest first (not yet verified)."""
    if not os.path.isdir(root):
        return []
    steps = [int(match.group(1)) for name in os.listdir(root) if (match := _STEP_DIR.match(name))]
    return sorted(steps, reverse=True)


def _aside_dirs(root: str) -> list[tuple[int, str]]:
    """(step, path) of copies set aside, most recently set aside first."""
    found = [(int(match.group(1)), os.path.join(root, name)) for name in os.listdir(root)
             if (match := _ASIDE_DIR.match(name))]
    return sorted(found, key=lambda item: _mtime_or_zero(item[1]), reverse=True)


def _mtime_or_zero(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:  # removed by a writer since the listing
        return 0.0


def list_checkpoint_dirs(root: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint under root, newest step first (not yet verified).

    A step's committed `step_*` directory, or, when a crash mid re-save left none, its copy set aside.
    """
    if not os.path.isdir(root):
        return []
    found = {step: os.path.join(root, step_dir_name(step)) for step in list_steps(root)}
    for step, path in _aside_dirs(root):
        found.setdefault(step, path)
    return sorted(found.items(), reverse=True)


def remove_superseded_aside_dirs(root: str) -> list[str]:
    """Delete copies set aside that are no checkpoint's only copy (a crash after the new copy took the name)."""
    if not os.path.isdir(root):
        return []
    in_use = {path for _, path in list_checkpoint_dirs(root)}
    removed = [path for _, path in _aside_dirs(root) if path not in in_use]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def remove_stale_temp_dirs(root: str, older_than_s: float) -> list[str]:
    """Delete temp dirs left by a crash mid-save (never renamed, so never a checkpoint).

    Only dirs untouched for `older_than_s` go, so a save still running in another process survives.
    """
    if not os.path.isdir(root):
        return []
    removed = []
    now = time.time()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(_TMP_PREFIX) and now - os.path.getmtime(path) > older_than_s:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
