"""Checking one observation alone (serve_apps.policy.observation) and splitting a batch into forward
passes (serve_apps.policy.batching): pure functions, no Ray."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from serve_apps.policy.batching import group_batch
from serve_apps.policy.observation import (
    ObservationLimits,
    PolicyInputSpec,
    PolicyRequestError,
    not_ready_error,
    parse_observation,
)

STATE = PolicyInputSpec(kind="state_mlp", state_dim=4, needs_pointcloud=False)
CLOUD = PolicyInputSpec(kind="pointnet", state_dim=4, needs_pointcloud=True)
LIMITS = ObservationLimits(max_points=10, max_body_bytes=4096)


def _error(raw, spec=STATE) -> PolicyRequestError:
    with pytest.raises(PolicyRequestError) as raised:
        parse_observation(raw, spec=spec, limits=LIMITS)
    return raised.value


def test_a_good_observation_becomes_float32_arrays():
    flat = parse_observation({"state": [1, 2, 3, 4], "pointcloud": [0.0] * 6}, spec=CLOUD, limits=LIMITS)
    nested = parse_observation({"state": [1, 2, 3, 4], "pointcloud": [[0.0] * 3] * 2}, spec=CLOUD, limits=LIMITS)
    assert flat.state.dtype == np.float32 and flat.state.tolist() == [1, 2, 3, 4]
    assert flat.points.shape == nested.points.shape == (2, 3)
    assert parse_observation({"state": [0.0] * 4, "pointcloud": None}, spec=STATE, limits=LIMITS).points is None


@pytest.mark.parametrize("raw, param, words", [
    ([0.0] * 4, "observation", ["JSON object", "list"]),
    ({}, "observation.state", ["required", "4 numbers"]),
    ({"state": "1,2,3,4"}, "observation.state", ["str"]),
    ({"state": [0.0] * 5}, "observation.state", ["4 numbers", "[5]"]),
    ({"state": [[0.0] * 4]}, "observation.state", ["4 numbers", "[1, 4]"]),
    ({"state": [[0.0], [0.0, 1.0]]}, "observation.state", ["differ in length"]),
    ({"state": [0.0, 1.0, 2.0, "3"]}, "observation.state", ["only numbers", "strings"]),
    ({"state": [0.0, 1.0, 2.0, None]}, "observation.state", ["only numbers", "mix"]),
    ({"state": [True] * 4}, "observation.state", ["true/false"]),
    ({"state": [0.0, 1.0, 2.0, float("inf")]}, "observation.state", ["finite"]),
    ({"state": [0.0, 1.0, 2.0, 1e39]}, "observation.state", ["finite", "float32"]),
    ({"state": [0.0] * 4, "image": [1]}, "observation.image", ["unknown", "state and pointcloud"]),
    ({"state": [0.0] * 4, "pointcloud": [0.0] * 3}, "observation.pointcloud", ["state_mlp", "takes no"]),
])
def test_a_malformed_observation_is_a_400_naming_its_field(raw, param, words):
    error = _error(raw)
    assert (error.status_code, error.param) == (400, param), error.message
    assert all(word in error.message for word in words), error.message


@pytest.mark.parametrize("cloud, words", [
    (None, ["needs observation.pointcloud"]),
    ([0.0] * 7, ["xyz", "[7]"]),
    ([[0.0, 0.0]] * 2, ["xyz", "[2, 2]"]),
    ([], ["N >= 1"]),
])
def test_a_point_cloud_policy_checks_its_cloud(cloud, words):
    error = _error({"state": [0.0] * 4, "pointcloud": cloud}, spec=CLOUD)
    assert (error.status_code, error.param) == (400, "observation.pointcloud")
    assert all(word in error.message for word in words), error.message


@pytest.mark.parametrize("cloud", [[0.0] * 33, [[0.0] * 3] * 11, np.zeros((11, 3))])
def test_a_cloud_over_max_points_is_a_413_naming_the_limit(cloud):
    error = _error({"state": [0.0] * 4, "pointcloud": cloud}, spec=CLOUD)
    assert (error.status_code, error.param) == (413, "observation.pointcloud")
    assert "10" in error.message and "max_points" in error.message


def test_the_error_survives_pickling_with_its_fields():
    # Handle callers get it through Ray, which pickles it.
    error = pickle.loads(pickle.dumps(not_ready_error()))
    assert (error.status_code, error.retry_after_s) == (503, 5) and "no checkpoint" in str(error)


def _observation(state_dim: int, num_points: int | None):
    raw = {"state": [0.0] * state_dim}
    if num_points is not None:
        raw["pointcloud"] = [0.5] * (3 * num_points)
    return parse_observation(raw, spec=PolicyInputSpec(kind="pointnet" if num_points else "state_mlp",
                                                       state_dim=state_dim, needs_pointcloud=bool(num_points)),
                             limits=LIMITS)


def test_a_batch_groups_clouds_by_size_and_keeps_every_position():
    batch = [_observation(4, 2), _observation(4, 3), _observation(4, 2), _observation(4, 5)]
    groups, errors = group_batch(batch, CLOUD)
    assert errors == {}
    assert sorted((group.indices, group.points.shape) for group in groups) == [
        ([0, 2], (2, 2, 3)), ([1], (1, 3, 3)), ([3], (1, 5, 3))]
    assert all(group.states.shape == (len(group.indices), 4) for group in groups)


def test_items_that_no_longer_fit_a_swapped_in_checkpoint_fail_alone():
    # Checked against the old checkpoint (4 state values, no cloud); the new one wants 5 and a cloud.
    batch = [_observation(4, None), _observation(5, 2), _observation(5, None)]
    swapped_in = PolicyInputSpec(kind="pointnet", state_dim=5, needs_pointcloud=True)
    groups, errors = group_batch(batch, swapped_in)
    assert [group.indices for group in groups] == [[1]]
    assert sorted(errors) == [0, 2]
    assert errors[0].param == "observation.state" and "5 numbers" in errors[0].message
    assert errors[2].param == "observation.pointcloud" and "needs" in errors[2].message
