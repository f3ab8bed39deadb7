"""A checkpoint's manifest, parsed and checked: every field's type, the file list, and its step.

A manifest that fails here makes its checkpoint corrupt (skipped, the next older one used), never
a crash of the restore: a flipped byte, a hand-edited file or a directory renamed to another step.
"""

from __future__ import annotations

import json
import re
from typing import Any

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
PAYLOAD_FILES = frozenset({TENSORS_FILE, STATE_FILE, METADATA_FILE})  # what the manifest lists
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class CheckpointCorruptError(Exception):
    """A checkpoint whose files do not match its manifest (or that has no manifest)."""


def parse_manifest(data: bytes, *, source: str, expected_step: int | None) -> dict:
    """The manifest in `data`, checked by validate_manifest; CheckpointCorruptError names `source`."""
    try:
        manifest = json.loads(data)
    except ValueError as error:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise CheckpointCorruptError(f"{source}: not valid UTF-8 JSON: {error}") from None
    validate_manifest(manifest, source=source, expected_step=expected_step)
    return manifest


def validate_manifest(manifest: Any, *, source: str, expected_step: int | None) -> None:
    """Raise CheckpointCorruptError("<source>: <what is wrong>") unless the manifest has the writer's shape.

    expected_step: the step its directory name (or its in-memory copy) says; None skips that check.
    """
    problem = _problem(manifest, expected_step)
    if problem is not None:
        raise CheckpointCorruptError(f"{source}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problem(manifest: Any, expected_step: int | None) -> str | None:
    if not isinstance(manifest, dict):
        return f"not a JSON object (a {type(manifest).__name__})"
    for key in ("step", "files"):
        if key not in manifest:
            return f"missing key {key!r}"
    step = manifest["step"]
    if not _is_int(step):
        return f"step must be an int, got {step!r}"
    if step < 0:
        return f"step must be >= 0, got {step}"
    if expected_step is not None and step != expected_step:
        return f"says step {step} but its directory is step {expected_step}"
    created_s = manifest.get("created_s")
    if created_s is not None and (isinstance(created_s, bool) or not isinstance(created_s, (int, float))):
        return f"created_s must be a number, got {created_s!r}"
    files = manifest["files"]
    if not isinstance(files, dict):
        return f"'files' must be an object, got {type(files).__name__}"
    if set(files) != PAYLOAD_FILES:
        return f"'files' must list exactly {sorted(PAYLOAD_FILES)}, got {sorted(files)}"
    for name, entry in files.items():
        if not isinstance(entry, dict):
            return f"files[{name!r}] must be an object, got {type(entry).__name__}"
        sha256, num_bytes = entry.get("sha256"), entry.get("num_bytes")
        if not isinstance(sha256, str) or not _SHA256_HEX.match(sha256):
            return f"files[{name!r}].sha256 must be 64 lowercase hex digits, got {sha256!r}"
        if not _is_int(num_bytes) or num_bytes < 0:
            return f"files[{name!r}].num_bytes must be an int >= 0, got {num_bytes!r}"
    return None
