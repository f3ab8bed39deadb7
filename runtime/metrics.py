"""Strata metrics over `ray.util.metrics`: cached Counter/Gauge/Histogram with unit-suffixed names.

Ray exports these to Prometheus from every node (and so to the dashboard's Grafana panels); names get
Ray's `ray_` prefix on export. A metric is created once per process and reused, so call sites can ask
for it on every event without cost.
"""

from __future__ import annotations

import re
import threading

from ray.util import metrics as ray_metrics

_UNIT_SUFFIXES = ("_s", "_ms", "_bytes", "_total", "_tokens", "_ratio", "_count", "_per_s", "_points", "_rows", "_nats")
_NAME_PATTERN = re.compile(r"^strata_[a-z0-9_]+$")
_MAX_TAG_KEYS = 4

_lock = threading.Lock()
_cache: dict[str, object] = {}

# Latency buckets (seconds) shared by request and step timings: 1 ms .. 2 min.
LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


def _check(name: str, tag_keys: tuple[str, ...]) -> None:
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"metric name must match {_NAME_PATTERN.pattern}, got {name!r}")
    if not name.endswith(_UNIT_SUFFIXES):
        raise ValueError(f"metric name {name!r} must end with a unit suffix, one of {_UNIT_SUFFIXES}")
    if len(tag_keys) > _MAX_TAG_KEYS:
        raise ValueError(f"metric {name!r} has {len(tag_keys)} tag keys; keep at most {_MAX_TAG_KEYS}")


def _get_or_create(kind: str, name: str, factory):
    key = f"{kind}:{name}"
    with _lock:
        metric = _cache.get(key)
        if metric is None:
            metric = factory()
            _cache[key] = metric
        return metric


def counter(name: str, description: str, tag_keys: tuple[str, ...] = ()) -> ray_metrics.Counter:
    _check(name, tuple(tag_keys))
    return _get_or_create(
        "counter", name, lambda: ray_metrics.Counter(name, description=description, tag_keys=tuple(tag_keys))
    )


def gauge(name: str, description: str, tag_keys: tuple[str, ...] = ()) -> ray_metrics.Gauge:
    _check(name, tuple(tag_keys))
    return _get_or_create(
        "gauge", name, lambda: ray_metrics.Gauge(name, description=description, tag_keys=tuple(tag_keys))
    )


def histogram(
    name: str,
    description: str,
    boundaries: list[float] | None = None,
    tag_keys: tuple[str, ...] = (),
) -> ray_metrics.Histogram:
    _check(name, tuple(tag_keys))
    bounds = list(boundaries or LATENCY_BOUNDARIES_S)
    return _get_or_create(
        "histogram",
        name,
        lambda: ray_metrics.Histogram(
            name, description=description, boundaries=bounds, tag_keys=tuple(tag_keys)
        ),
    )
