"""On-disk and in-memory checkpoint format: a state dict as named blobs plus a manifest of checksums.

A checkpoint is a directory `step_00000120/` holding `tensors.safetensors` (every torch/numpy leaf of
the state), `state.json` (the rest of the state tree, with tensor leaves as references),
`metadata.json`, and last `manifest.json` (step, sha256 and size of every other file). It is
written into a hidden temp directory, fsynced, and renamed into place, so a crash mid-save never
leaves a half checkpoint under a `step_*` name. The in-memory replica holds the same blobs, so one
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

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp_"

# The writer opens files through this hook; tests swap it to simulate a full disk or a crash.
OpenFile = Callable[[str, str], BinaryIO]


class CheckpointCorruptError(Exception):
    """A checkpoint whose files do not match its manifest (or that has no manifest)."""


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
    """Raise CheckpointCorruptError unless every file matches the manifest's size and sha256."""
    expected = blobs.manifest.get("files", {})
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

    On any error the temp directory is removed and the error propagates; existing checkpoints are
    never touched.
    """
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, step_dir_name(blobs.step))
    tmp = os.path.join(root, f"{_TMP_PREFIX}{step_dir_name(blobs.step)}_{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
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
            # A re-save of the same step (after a restart): replace it, still never leaving it partial.
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_blobs(path: str) -> CheckpointBlobs:
    """Read a checkpoint directory and verify it; raises CheckpointCorruptError when it does not check out."""
    manifest_path = os.path.join(path, MANIFEST_FILE)
    if not os.path.exists(manifest_path):
        raise CheckpointCorruptError(f"{path}: no {MANIFEST_FILE}")
    try:
        with open(manifest_path, "rb") as handle:
            manifest = json.loads(handle.read())
    except json.JSONDecodeError as error:
        raise CheckpointCorruptError(f"{path}: unreadable {MANIFEST_FILE}: {error}") from None
    files = {}
    for name in manifest.get("files", {}):
        file_path = os.path.join(path, name)
        if not os.path.exists(file_path):
            raise CheckpointCorruptError(f"{path}: {name} is missing")
        with open(file_path, "rb") as handle:
            files[name] = handle.read()
    blobs = CheckpointBlobs(step=int(manifest["step"]), files=files, manifest=manifest)
    verify(blobs)
    return blobs


def list_steps(root: str) -> list[int]:
    """Steps of the committed checkpoint directories under root, newest first (not yet verified)."""
    if not os.path.isdir(root):
        return []
    steps = [int(match.group(1)) for name in os.listdir(root) if (match := _STEP_DIR.match(name))]
    return sorted(steps, reverse=True)


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
