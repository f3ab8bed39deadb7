"""Robot policies for behaviour cloning (state MLP, PointNet-style encoder) and their safetensors checkpoints.

    from runtime.robot.policy import PolicyConfig, build_policy, save_policy, load_policy
"""

from __future__ import annotations

from runtime.robot.policy.checkpoint import CHECKPOINT_NAME, load_policy, read_policy_info, save_policy
from runtime.robot.policy.models import (
    POLICY_KINDS,
    PointNetPolicy,
    PolicyConfig,
    PolicyInfo,
    StateMLPPolicy,
    build_policy,
)

__all__ = [
    "CHECKPOINT_NAME",
    "POLICY_KINDS",
    "PointNetPolicy",
    "PolicyConfig",
    "PolicyInfo",
    "StateMLPPolicy",
    "build_policy",
    "load_policy",
    "read_policy_info",
    "save_policy",
]
