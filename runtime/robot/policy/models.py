"""Behaviour-cloning policies: a state MLP and a PointNet-style point-cloud encoder, both in torch.

Each model carries its own input normalization (buffers fitted on the training set), so a
checkpoint alone turns a raw observation into an action; actions are tanh-bounded to [-1, 1].
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

POLICY_KINDS = ("state_mlp", "pointnet")
# Fetch state entries a Markov pick-and-place controller needs: gripper, block, block - gripper,
# finger openings and goal. Velocities are left out: BC latches onto them as spurious cues.
STATE_MLP_INDICES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 25, 26, 27)
# The point-cloud policy must find the block in the cloud: proprioception and goal only.
POINTNET_STATE_INDICES = (0, 1, 2, 9, 10, 25, 26, 27)


@dataclass(kw_only=True, slots=True)
class PolicyConfig:
    kind: str = "state_mlp"
    state_dim: int = 28
    action_dim: int = 4
    state_indices: tuple[int, ...] | None = None  # None: the kind's default
    hidden_sizes: tuple[int, ...] = (256, 256)
    num_points: int = 128  # pointnet: points per cloud (xyz)
    point_feature_sizes: tuple[int, ...] = (64, 128)

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy.kind must be one of {POLICY_KINDS}, got {self.kind!r}")
        if self.state_indices is None:
            self.state_indices = STATE_MLP_INDICES if self.kind == "state_mlp" else POINTNET_STATE_INDICES
        self.state_indices = tuple(int(i) for i in self.state_indices)
        self.hidden_sizes = tuple(self.hidden_sizes)
        self.point_feature_sizes = tuple(self.point_feature_sizes)
        if any(not 0 <= i < self.state_dim for i in self.state_indices):
            raise ValueError(f"policy.state_indices must lie in [0, {self.state_dim}), got {self.state_indices}")
        if self.num_points < 1:
            raise ValueError(f"policy.num_points must be >= 1, got {self.num_points}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PolicyConfig:
        return cls(**json.loads(text))


def _mlp(sizes: list[int], final_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(size_in, size_out))
        if index < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Normalizer(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

    def fit(self, values: torch.Tensor) -> None:
        flat = values.reshape(-1, values.shape[-1]).float()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-3))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std


class StateMLPPolicy(nn.Module):
    """state (B, state_dim) -> action (B, action_dim)."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.register_buffer("state_indices", torch.tensor(config.state_indices, dtype=torch.long))
        self.state_norm = Normalizer(len(config.state_indices))
        self.head = _mlp([len(config.state_indices), *config.hidden_sizes, config.action_dim])

    def select(self, state: torch.Tensor) -> torch.Tensor:
        return state.index_select(-1, self.state_indices)

    def fit_normalization(self, state: torch.Tensor, points: torch.Tensor | None = None) -> None:
        self.state_norm.fit(self.select(state))

    def forward(self, state: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.head(self.state_norm(self.select(state))))


class PointNetPolicy(nn.Module):
    """PointNet encoder (shared per-point MLP, max-pool) over (B, N, 3) + proprioception -> action."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.register_buffer("state_indices", torch.tensor(config.state_indices, dtype=torch.long))
        self.state_norm = Normalizer(len(config.state_indices))
        self.point_norm = Normalizer(3)
        self.encoder = _mlp([3, *config.point_feature_sizes], final_activation=True)
        feature_size = config.point_feature_sizes[-1] + len(config.state_indices)
        self.head = _mlp([feature_size, *config.hidden_sizes, config.action_dim])

    def select(self, state: torch.Tensor) -> torch.Tensor:
        return state.index_select(-1, self.state_indices)

    def fit_normalization(self, state: torch.Tensor, points: torch.Tensor | None = None) -> None:
        self.state_norm.fit(self.select(state))
        if points is not None:
            self.point_norm.fit(points)

    def forward(self, state: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        if points is None:
            raise ValueError("PointNetPolicy needs observation.pointcloud (B, N, 3)")
        features = self.encoder(self.point_norm(points)).amax(dim=1)
        return torch.tanh(self.head(torch.cat([features, self.state_norm(self.select(state))], dim=-1)))


def build_policy(config: PolicyConfig) -> nn.Module:
    return StateMLPPolicy(config) if config.kind == "state_mlp" else PointNetPolicy(config)


@dataclass(kw_only=True, slots=True)
class PolicyInfo:
    """What a checkpoint says about itself besides its weights."""

    config: PolicyConfig
    version: str
    metadata: dict = field(default_factory=dict)
