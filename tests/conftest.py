"""Shared fixtures: one single-node Ray cluster per test session, and a multi-node cluster.

`ray_local` hands out ONE session-wide local cluster (started lazily, fixed num_cpus) so the suite
pays Ray's start-up once. `multinode_cluster` builds a real `ray.cluster_utils.Cluster` (a head and 3
worker raylets on this machine) for node loss, cordoning and spares; while it is up, the local
cluster is shut down (a driver connects to one cluster at a time) and `ray_local` restarts it later.
"""

from __future__ import annotations

import pytest
import ray
from helpers.ray_clusters import (
    MULTINODE_WORKERS,
    start_local_ray,
    start_multinode_cluster,
    stop_multinode_cluster,
)


def pytest_collection_modifyitems(config, items):
    for item in items:  # `make test-fast` leaves out whatever needs a Ray cluster
        if {"ray_local", "multinode_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray_cluster)
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
    cluster = start_multinode_cluster(MULTINODE_WORKERS)
    yield cluster
    stop_multinode_cluster(cluster)


def pytest_sessionfinish(session, exitstatus):
    if ray.is_initialized():
        ray.shutdown()

