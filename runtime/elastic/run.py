"""Entry points: start the ElasticSupervisor actor, or run a training loop under it to the end.

    from runtime.elastic import ElasticConfig, run_elastic
    result = run_elastic(train_loop_per_worker, train_loop_config, ElasticConfig(checkpoint_dir=...))
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable
from typing import Any

import ray

from runtime.elastic.records import ElasticResult
from runtime.elastic.supervisor import ElasticConfig, ElasticSupervisor

SUPERVISOR_NAMESPACE = "strata"
SUPERVISOR_NAME_PREFIX = "supervisor:"


def find_supervisors(run_name: str = "") -> list[Any]:
    """Handles of the running supervisors (of run `run_name` when given), from any driver on the cluster."""
    prefix = f"{SUPERVISOR_NAME_PREFIX}{run_name}:" if run_name else SUPERVISOR_NAME_PREFIX
    return [
        ray.get_actor(entry["name"], namespace=entry["namespace"])
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == SUPERVISOR_NAMESPACE and entry["name"].startswith(prefix)
    ]


def supervisor_env() -> dict[str, str]:
    """Ray Train knobs for supervised runs: fast worker polls; preemption is handled by the supervisor."""
    return {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60"}


def start_supervisor(train_loop_per_worker: Callable[[dict], Any], train_loop_config: dict, config: ElasticConfig) -> Any:
    """Start the supervisor actor on the driver's node (it runs the trainer like a driver would)."""
    # The supervisor and Ray Train resolve paths in their own working directories: make it absolute.
    config = dataclasses.replace(config, checkpoint_dir=os.path.abspath(config.checkpoint_dir))
    env = supervisor_env() | {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(config.train_poll_interval_s)}
    # Named (unique suffix) in the "strata" namespace so an operator or a chaos drill on another driver can
    # find it: ray.util.list_named_actors(all_namespaces=True) -> names starting "supervisor:<run name>:".
    return ElasticSupervisor.options(
        name=f"{SUPERVISOR_NAME_PREFIX}{config.name}:{uuid.uuid4().hex[:8]}",
        namespace=SUPERVISOR_NAMESPACE,
        runtime_env={"env_vars": env},
        label_selector={"ray.io/node-id": ray.get_runtime_context().get_node_id()},
    ).remote(train_loop_per_worker, train_loop_config, config)


def run_elastic(train_loop_per_worker: Callable[[dict], Any], train_loop_config: dict, config: ElasticConfig) -> ElasticResult:
    """Run `train_loop_per_worker` under an ElasticSupervisor until it finishes or a T4 stops it."""
    from runtime.cluster import connect

    connect()
    supervisor = start_supervisor(train_loop_per_worker, train_loop_config, config)
    result = ray.get(supervisor.run.remote())
    ray.kill(supervisor)
    return result
