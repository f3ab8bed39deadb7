"""Shared fixtures: one single-node Ray cluster per test session, and a multi-node cluster.

`ray_local` hands out ONE session-wide local cluster (started lazily, fixed num_cpus) so the suite
pays Ray's start-up once. `multinode_cluster` builds a real `ray.cluster_utils.Cluster` (a head and 3
worker raylets on this machine) for node loss, cordoning and spares; while it is up, the local
cluster is shut down (a driver connects to one cluster at a time) and `ray_local` restarts it later.
"""

from __future__ import annotations

import os

import pytest
import ray
from helpers.ray_clusters import MULTINODE_HEAD, MULTINODE_WORKERS, forget_serve_client, start_local_ray


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def ray_local():
    """The session's single-node Ray cluster (started on first use); yields ray's runtime context."""
    start_local_ray()
    yield ray.get_runtime_context()


@pytest.fixture(scope="module")
def multinode_cluster():
    """A head node and 3 worker nodes (2 train, 1 spare) as separate raylets; the driver is connected.

    Module-scoped: share it across a test module's multi-node tests. Tests may add or remove nodes
    (`cluster.add_node(**MULTINODE_WORKERS[0])`, `cluster.remove_node(node)`).
    """
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    forget_serve_client()
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={**MULTINODE_HEAD, "include_dashboard": False, "object_store_memory": 256 * 1024**2},
    )
    for spec in MULTINODE_WORKERS:
        cluster.add_node(**spec, object_store_memory=256 * 1024**2)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    forget_serve_client()
    cluster.shutdown()


def pytest_sessionfinish(session, exitstatus):
    if ray.is_initialized():
        ray.shutdown()

