"""The test suite's Ray clusters: the shared local one and the multi-node layout (used by conftest).

Import from here (`from helpers.ray_clusters import ...`), never from `conftest`: pytest has one
conftest module per test folder, and a bare `import conftest` picks whichever is first on sys.path.
"""

from __future__ import annotations

import os
import warnings

import ray

LOCAL_NUM_CPUS = 4
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2

# Multi-node layout. Custom resources stand in for GPUs ("fake_gpu") and node roles ("role_*");
# labels carry the same roles for label selectors.
MULTINODE_HEAD = {"num_cpus": 1, "resources": {"role_head": 1}, "labels": {"strata.io/role": "head"}}
MULTINODE_WORKERS = [
    {"num_cpus": 2, "resources": {"fake_gpu": 2, "role_train": 1}, "labels": {"strata.io/role": "train"}},
    {"num_cpus": 2, "resources": {"fake_gpu": 2, "role_train": 1}, "labels": {"strata.io/role": "train"}},
    {"num_cpus": 2, "resources": {"fake_gpu": 2, "role_spare": 1}, "labels": {"strata.io/role": "spare"}},
]
MULTINODE_OBJECT_STORE_BYTES = 256 * 1024**2


def forget_serve_client() -> None:
    """Serve caches its controller client per process; after switching clusters that handle is stale."""
    from ray.serve import context

    context._set_global_client(None)


def start_local_ray() -> None:
    """Start the session's single-node cluster in this process (no-op when Ray is already up).

    One retry: on a loaded 2-core machine a raylet can die at start-up waiting for its dashboard
    agent (Ray raises a plain Exception for a node that did not come up); a second start succeeds.
    """
    if ray.is_initialized():
        return
    forget_serve_client()
    os.environ.pop("RAY_ADDRESS", None)
    for attempt in (1, 2):
        try:
            ray.init(
                address="local",  # never join a cluster someone else left running on this machine
                num_cpus=LOCAL_NUM_CPUS,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                include_dashboard=False,
                log_to_driver=True,
                namespace="strata-tests",
            )
            return
        except Exception as error:
            ray.shutdown()
            if attempt == 2:
                raise
            warnings.warn(f"the test cluster did not start ({error}); starting it once more", stacklevel=2)


def start_multinode_cluster(workers: list[dict]):
    """A `ray.cluster_utils.Cluster`: the head plus one raylet per spec in `workers`; the driver is
    connected (the session's local cluster is shut down first: a driver joins one cluster at a time)."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    forget_serve_client()
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={**MULTINODE_HEAD, "include_dashboard": False, "object_store_memory": MULTINODE_OBJECT_STORE_BYTES},
    )
    for spec in workers:
        cluster.add_node(**spec, object_store_memory=MULTINODE_OBJECT_STORE_BYTES)
    cluster.wait_for_nodes()
    return cluster


def stop_multinode_cluster(cluster) -> None:
    ray.shutdown()
    forget_serve_client()
    cluster.shutdown()
