"""Checking one policy observation, alone, before it joins a batch: its fields, shapes, dtypes and size.

An observation is `{"state": [state_dim numbers], "pointcloud": [xyz numbers]?}`; the point cloud is
flat (3*N numbers) or nested (N lists of 3) and is required by, and only accepted by, point-cloud
policies. A problem becomes a `PolicyRequestError` naming the field, so it fails only its own request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

OBSERVATION_FIELDS = ("state", "pointcloud")
# A replica with no checkpoint tells clients to come back after this long (HTTP Retry-After).
NOT_READY_RETRY_AFTER_S = 5
_DTYPE_WORDS = {"b": "true/false values", "U": "strings", "S": "strings", "O": "a mix of numbers and other values"}


class PolicyRequestError(Exception):
    """A request the policy cannot answer; `status_code` is its HTTP status, `param` the field at fault."""

    def __init__(self, message: str, *, status_code: int = 400, param: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.message, self.status_code, self.param, self.retry_after_s = message, status_code, param, retry_after_s

    def __reduce__(self):
        # Crosses Ray (handle callers) intact: rebuilt with its keyword fields, not only its message.
        return _rebuild_error, (self.message, self.status_code, self.param, self.retry_after_s)

    def body(self) -> dict:
        return {"error": self.message, **({"param": self.param} if self.param else {})}


def _rebuild_error(message: str, status_code: int, param: str | None, retry_after_s: int | None):
    return PolicyRequestError(message, status_code=status_code, param=param, retry_after_s=retry_after_s)


def not_ready_error() -> PolicyRequestError:
    return PolicyRequestError("no checkpoint loaded yet: the policy app was deployed without one; retry once a "
                              "checkpoint is deployed", status_code=503, retry_after_s=NOT_READY_RETRY_AFTER_S)


@dataclass(kw_only=True, slots=True, frozen=True)
class ObservationLimits:
    max_points: int  # points per point cloud
    max_body_bytes: int  # HTTP body


@dataclass(kw_only=True, slots=True, frozen=True)
class PolicyInputSpec:
    """What the loaded checkpoint takes: a state of `state_dim` numbers, and a point cloud or not."""

    kind: str
    state_dim: int
    needs_pointcloud: bool


@dataclass(kw_only=True, slots=True)
class Observation:
    state: np.ndarray  # float32 (state_dim,)
    points: np.ndarray | None  # float32 (N, 3)


def parse_observation(raw: Any, *, spec: PolicyInputSpec, limits: ObservationLimits) -> Observation:
    """`raw` (a decoded JSON object or a handle caller's dict) -> an Observation the spec accepts."""
    if not isinstance(raw, dict):
        raise PolicyRequestError(f"observation must be a JSON object with 'state' (and 'pointcloud' for point-cloud "
                                 f"policies), got {type(raw).__name__}", param="observation")
    unknown = sorted(set(raw) - set(OBSERVATION_FIELDS))
    if unknown:
        raise PolicyRequestError(f"unknown observation field {unknown[0]!r}; an observation holds "
                                 f"{' and '.join(OBSERVATION_FIELDS)}", param=f"observation.{unknown[0]}")
    if raw.get("state") is None:
        raise PolicyRequestError(f"observation.state is required: a list of {spec.state_dim} numbers",
                                 param="observation.state")
    state = _float32_array(raw["state"], "observation.state", f"a flat list of {spec.state_dim} numbers")
    if state.shape != (spec.state_dim,):
        raise PolicyRequestError(f"observation.state must hold {spec.state_dim} numbers (a flat list), got shape "
                                 f"{list(state.shape)}", param="observation.state")
    points = None if raw.get("pointcloud") is None else _parse_points(raw["pointcloud"], limits.max_points)
    observation = Observation(state=state, points=points)
    mismatch = spec_mismatch(observation, spec)
    if mismatch is not None:
        raise mismatch
    return observation


def spec_mismatch(observation: Observation, spec: PolicyInputSpec) -> PolicyRequestError | None:
    """Why a checked observation does not fit `spec` (a checkpoint swapped in since it was checked), or None."""
    if observation.state.shape != (spec.state_dim,):
        return PolicyRequestError(f"observation.state must hold {spec.state_dim} numbers for the policy now loaded, "
                                  f"got {observation.state.shape[0]}", param="observation.state")
    if spec.needs_pointcloud and observation.points is None:
        return PolicyRequestError(f"this policy ({spec.kind}) needs observation.pointcloud: xyz numbers, flat "
                                  f"(3*N) or as N lists of 3", param="observation.pointcloud")
    if not spec.needs_pointcloud and observation.points is not None:
        return PolicyRequestError(f"this policy ({spec.kind}) takes no observation.pointcloud; send only "
                                  f"observation.state", param="observation.pointcloud")
    return None


def _parse_points(value: Any, max_points: int) -> np.ndarray:
    param = "observation.pointcloud"
    expected = "xyz numbers, flat (3*N) or as N lists of 3"
    # Count before converting: an oversize cloud is refused without building its array.
    if isinstance(value, list | tuple) and len(value) > 3 * max_points:
        raise PolicyRequestError(f"{param} holds more than the limit of {max_points} points (max_points)",
                                 status_code=413, param=param)
    points = _float32_array(value, param, expected)
    if points.ndim == 1 and points.size % 3 == 0:
        points = points.reshape(-1, 3)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        raise PolicyRequestError(f"{param} must be {expected} with N >= 1, got shape {list(points.shape)}",
                                 param=param)
    if points.shape[0] > max_points:
        raise PolicyRequestError(f"{param} holds {points.shape[0]} points, over the limit of {max_points} "
                                 f"(max_points)", status_code=413, param=param)
    return points


def _float32_array(value: Any, param: str, expected: str) -> np.ndarray:
    if not isinstance(value, list | tuple | np.ndarray):
        raise PolicyRequestError(f"{param} must be {expected}, got {type(value).__name__}", param=param)
    try:
        array = np.asarray(value)
    except ValueError:
        raise PolicyRequestError(f"{param} must be {expected}; its nested lists differ in length",
                                 param=param) from None
    if array.dtype.kind not in "iuf":
        found = _DTYPE_WORDS.get(array.dtype.kind, str(array.dtype))
        raise PolicyRequestError(f"{param} must be {expected}: only numbers (float32), got {found}", param=param)
    with np.errstate(over="ignore"):
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise PolicyRequestError(f"{param} must hold finite float32 numbers (no NaN, no Infinity, |x| < 3.4e38)",
                                 param=param)
    return array
