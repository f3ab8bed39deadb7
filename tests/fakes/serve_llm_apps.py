"""Helpers for Model API tests: start Serve apps on a free port, poll replicas, wait for conditions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from runtime.cluster import free_port

SMALL_REPLICA = {"ray_actor_options": {"num_cpus": 0.25}}


def ensure_ray() -> None:
    """Module-scoped fixtures cannot use the function-scoped `ray_local`; start the same cluster."""
    if not ray.is_initialized():
        from helpers.ray_clusters import start_local_ray

        start_local_ray()


def start_serve() -> int:
    """Start Serve's HTTP proxy on a free port (never 8000: others test on this machine too)."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def run_apps(apps: dict[str, tuple[Any, str]]) -> None:
    """Deploy several apps at once ({name: (application, route_prefix)}) and wait until running."""
    targets = [serve.RunTarget(target=app, name=name, route_prefix=prefix) for name, (app, prefix) in apps.items()]
    serve.run_many(targets)


def wait_until(predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s; last value {value!r}")
        time.sleep(interval_s)


def replica_stats(app_name: str, deployment: str, num_replicas: int = 1, tries: int = 20) -> dict[str, dict]:
    """`engine_stats` of every replica of a deployment (random routing: ask until all have answered)."""
    handle = serve.get_deployment_handle(deployment, app_name=app_name)
    seen: dict[str, dict] = {}
    for _ in range(tries):
        stats = handle.engine_stats.remote().result()
        seen[stats["replica"]] = stats
        if len(seen) >= num_replicas:
            break
    return seen


def stop_apps(names: list[str]) -> None:
    for name in names:
        serve.delete(name)
