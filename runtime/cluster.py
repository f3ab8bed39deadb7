"""Join the cluster: RAY_ADDRESS when set, else an embedded local cluster; helpers every app uses."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass

import ray

from runtime import constants
from runtime.placement_fit import ClusterCpus, Fit, PlacementError, ReplicaGroup, fit_replicas

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class ClusterInfo:
    address: str
    embedded: bool
    num_nodes: int
    num_cpus: float
    num_gpus: float
    dashboard_url: str | None


def connect(
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    include_dashboard: bool | None = None,
    namespace: str | None = None,
    runtime_env: dict | None = None,
    **init_kwargs,
) -> ClusterInfo:
    """Connect this process to Ray and describe the cluster.

    With RAY_ADDRESS set (as `ray job submit` does) it joins that cluster; otherwise it starts an
    embedded local one sized by the arguments or STRATA_* knobs. Calling it again is a no-op, so
    apps and libraries may both call it.
    """
    if not ray.is_initialized():
        address = os.environ.get(constants.RAY_ADDRESS)
        kwargs: dict = {"namespace": namespace, "runtime_env": runtime_env, "log_to_driver": True}
        kwargs.update(init_kwargs)
        if address:
            ray.init(address=address, **kwargs)
        else:
            dashboard = constants.include_dashboard() if include_dashboard is None else include_dashboard
            _start_embedded(
                address="local",  # never join another user's cluster on a shared machine by accident
                num_cpus=num_cpus or constants.local_num_cpus(),
                object_store_memory=object_store_memory or constants.local_object_store_bytes(),
                include_dashboard=dashboard and _dashboard_available(),
                dashboard_host="127.0.0.1",
                **kwargs,
            )
    return cluster_info()


# What `ray.init` raises when a process of the new node missed its start-up window: the raylet's
# registration ("timed out during startup"), or the dashboard's (Ray raises the tail of its log).
_STARTUP_TIMEOUT_MARKERS = ("timed out during startup", "dashboard.log", "dashboard.err", "Failed to start a dashboard")


def _start_embedded(**init_kwargs) -> None:
    """Start the embedded cluster, once more if its node did not come up.

    Ray gives a starting raylet a fixed 30 s to register with the GCS, and its dashboard 60 s to
    publish its address; on a loaded 2-core machine (CI beside a benchmark) either can miss its window
    and `ray.init` raises a plain Exception. A second start of a fresh cluster then succeeds.
    """
    try:
        ray.init(**init_kwargs)
    except Exception as exc:
        if not any(marker in str(exc) for marker in _STARTUP_TIMEOUT_MARKERS):
            raise
        logger.warning("embedded Ray cluster did not start within Ray's start-up windows (machine loaded?): %s; "
                       "starting it again", str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "")
        ray.shutdown()
        ray.init(**init_kwargs)


def cluster_info() -> ClusterInfo:
    context = ray.get_runtime_context()
    resources = ray.cluster_resources()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return ClusterInfo(
        address=context.gcs_address,
        embedded=not os.environ.get(constants.RAY_ADDRESS),
        num_nodes=len(nodes),
        num_cpus=resources.get("CPU", 0.0),
        num_gpus=resources.get("GPU", 0.0),
        dashboard_url=_dashboard_url(),
    )


def cluster_cpus(embedded_flag: str | None = None) -> ClusterCpus:
    """The connected cluster's CPUs for `placement_fit.fit_replicas`; embedded_flag is what sizes an embedded one."""
    embedded = not os.environ.get(constants.RAY_ADDRESS)
    return ClusterCpus(num_cpus=ray.cluster_resources().get("CPU", 0.0), embedded=embedded,
                       max_num_cpus=autoscaling_max_cpus(),
                       flag=(embedded_flag or f"{constants.LOCAL_NUM_CPUS_ENV}=N") if embedded else None)


def place(groups: list[ReplicaGroup], *, prog: str, embedded_flag: str | None = None) -> Fit:
    """An app CLI's check before it deploys: fit `groups` into the connected cluster and print what was
    fitted (on stderr), or exit with one line naming the CPUs needed and available and the flag to change."""
    try:
        fit = fit_replicas(groups, cluster_cpus(embedded_flag))
    except PlacementError as error:
        sys.exit(f"{prog}: {error}")
    print(fit.message, file=sys.stderr, flush=True)  # stdout stays the app's (some print JSON there)
    return fit


def autoscaling_max_cpus() -> float | None:
    """CPUs an autoscaler may grow the cluster to (inf: no stated limit), or None when none can add nodes.

    Two places say so in Ray 2.60: node groups reported to the GCS (KubeRay, hosted Ray; Ray Train v2
    checks its worker group against the same numbers), and the status a v1 autoscaler started from a
    cluster YAML (`ray up`) writes, whose node types carry the YAML's names. `ray start` and ray.init
    run a read-only autoscaler instead: one type per existing node, named `node_<id>`, nothing to launch.
    """
    from ray._private import ray_constants
    from ray._private.state import state
    from ray.experimental.internal_kv import _internal_kv_get

    max_resources = state.get_max_resources_from_cluster_config()
    if max_resources and max_resources.get("CPU"):
        cpus = max_resources["CPU"]
        return math.inf if cpus >= sys.maxsize else float(cpus)
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = json.loads(status).get("autoscaler_report") if status else None
    node_types = (report or {}).get("node_type_mapping") or {}
    if any(not node_type.startswith("node_") for node_type in node_types.values()):
        return math.inf
    return None


def _dashboard_url() -> str | None:
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"


def _dashboard_available() -> bool:
    """The dashboard needs ray[default]'s extra packages; without them ray.init would fail."""
    try:
        import aiohttp  # noqa: F401
        import aiohttp_cors  # noqa: F401
    except ImportError:
        logger.warning("ray dashboard dependencies missing; starting without the dashboard")
        return False
    return True


def is_loopback_host(host: str) -> bool:
    """Whether an app bound to `host` is reachable only from this machine (the apps' no-key default)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on host (for HTTP servers and head nodes in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def nodes_with_resource(resource: str) -> list[dict]:
    """Alive nodes that declare a custom resource (node roles such as 'role_train')."""
    return [node for node in alive_nodes() if node.get("Resources", {}).get(resource, 0) > 0]


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
