"""Tiny policy checkpoints for robot-loop tests: random weights, or a policy that always outputs one action."""

from __future__ import annotations

from pathlib import Path

import torch

from runtime.robot.policy import PolicyConfig, build_policy, save_policy


def constant_policy(path: str | Path, value: float, *, kind: str = "state_mlp", version: str | None = None) -> Path:
    """A policy whose output is tanh(value) in every action dimension, whatever the input."""
    torch.manual_seed(0)
    model = build_policy(PolicyConfig(kind=kind, hidden_sizes=(16,), num_points=32, point_feature_sizes=(8,)))
    with torch.no_grad():
        last = model.head[-1]
        last.weight.zero_()
        last.bias.fill_(value)
    return save_policy(model, path, version=version or f"const-{value}")
