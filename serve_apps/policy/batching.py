"""How one Serve batch of checked observations becomes forward passes, without one item failing the rest.

Observations are re-checked against the checkpoint that will answer them (it may have been swapped
in since they were checked); those that no longer fit get their own error. The rest are grouped by
point-cloud size, one stacked forward pass per group, so clouds of different sizes share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_apps.policy.observation import Observation, PolicyInputSpec, PolicyRequestError, spec_mismatch


@dataclass(kw_only=True, slots=True)
class ForwardGroup:
    indices: list[int]  # positions in the batch, in order
    states: np.ndarray  # float32 (B, state_dim)
    points: np.ndarray | None  # float32 (B, N, 3)


def group_batch(observations: list[Observation], spec: PolicyInputSpec
                ) -> tuple[list[ForwardGroup], dict[int, PolicyRequestError]]:
    """-> (forward groups, {batch position: error}) covering every position exactly once."""
    errors: dict[int, PolicyRequestError] = {}
    by_num_points: dict[int | None, list[int]] = {}
    for index, observation in enumerate(observations):
        mismatch = spec_mismatch(observation, spec)
        if mismatch is not None:
            errors[index] = mismatch
            continue
        num_points = None if observation.points is None else observation.points.shape[0]
        by_num_points.setdefault(num_points, []).append(index)
    groups = []
    for num_points, indices in by_num_points.items():
        states = np.stack([observations[i].state for i in indices])
        points = None if num_points is None else np.stack([observations[i].points for i in indices])
        groups.append(ForwardGroup(indices=indices, states=states, points=points))
    return groups, errors
