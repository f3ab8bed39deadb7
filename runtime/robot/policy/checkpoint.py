"""Policy checkpoints as single safetensors files: weights plus the config and version in the header.

Serving and evaluation load a policy from this one file, without the training code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from runtime.robot.policy.models import PolicyConfig, PolicyInfo, build_policy

CHECKPOINT_NAME = "policy.safetensors"


def save_policy(model: nn.Module, path: str | Path, *, version: str, metadata: dict | None = None) -> Path:
    """Write atomically (temp file + rename) so a server hot-swapping to `path` never reads half a file."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".safetensors":
        path = path / CHECKPOINT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    header = {"config": model.config.to_json(), "version": version, "metadata": json.dumps(metadata or {})}
    temporary = path.with_suffix(f".tmp-{os.getpid()}")
    save_file(tensors, str(temporary), metadata=header)
    os.replace(temporary, path)
    return path


def read_policy_info(path: str | Path) -> PolicyInfo:
    from safetensors import safe_open

    path = resolve_checkpoint(path)
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if "config" not in header:
        raise ValueError(f"{path} is not a Strata policy checkpoint (no 'config' in its metadata)")
    return PolicyInfo(
        config=PolicyConfig.from_json(header["config"]),
        version=header.get("version", ""),
        metadata=json.loads(header.get("metadata", "{}")),
    )


def load_policy(path: str | Path) -> tuple[nn.Module, PolicyInfo]:
    """(model in eval mode on CPU, its info)."""
    path = resolve_checkpoint(path)
    info = read_policy_info(path)
    model = build_policy(info.config)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), info


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"policy checkpoint {path} does not exist")
    return path
