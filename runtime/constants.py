"""Environment knobs in one place, read through typed getters (names carry their unit)."""

from __future__ import annotations

import os

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None else value


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {value!r}") from None


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"environment variable {name} must be a boolean (1/0/true/false), got {value!r}")


# Cluster
RAY_ADDRESS = "RAY_ADDRESS"
LOCAL_NUM_CPUS_ENV = "STRATA_LOCAL_NUM_CPUS"


def local_num_cpus() -> int | None:
    """CPUs for an embedded local cluster (STRATA_LOCAL_NUM_CPUS); None lets Ray detect them."""
    value = env_int(LOCAL_NUM_CPUS_ENV, 0)
    return value or None


def local_object_store_bytes() -> int | None:
    """Object store size for an embedded local cluster (STRATA_OBJECT_STORE_BYTES); None = Ray default."""
    value = env_int("STRATA_OBJECT_STORE_BYTES", 0)
    return value or None


def include_dashboard() -> bool:
    """Start the Ray dashboard with an embedded cluster (STRATA_DASHBOARD, default on)."""
    return env_bool("STRATA_DASHBOARD", True)


def dashboard_port() -> int:
    return env_int("STRATA_DASHBOARD_PORT", 8265)


def metrics_export_port() -> int | None:
    value = env_int("STRATA_METRICS_EXPORT_PORT", 0)
    return value or None


def log_level() -> str:
    return env_str("STRATA_LOG_LEVEL", "INFO") or "INFO"
