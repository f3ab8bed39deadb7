"""Node loss on a cluster with no spare: the supervisor shrinks to the node that is left, then grows back
to two workers once a replacement node joins.

The layout is this module's own (a head and two train nodes, no spare), so the outcome does not depend
on which tests ran before: the shared `multinode_cluster` has a spare (a lost node would be replaced,
not shrunk) and keeps the drains that earlier tests' cordons left behind.
"""

import pytest
import ray
from helpers.ray_clusters import (
    MULTINODE_OBJECT_STORE_BYTES,
    MULTINODE_WORKERS,
    start_multinode_cluster,
    stop_multinode_cluster,
)

from runtime import chaos
from runtime.chaos.drill import Injection, run_schedule, wait_for_status
from runtime.chaos.toy_train import toy_train_loop
from runtime.elastic import ElasticConfig, start_supervisor
from runtime.elastic.tiers import T3

pytestmark = [pytest.mark.multinode, pytest.mark.slow]
TRAIN_NODE = MULTINODE_WORKERS[0]
assert TRAIN_NODE["labels"]["strata.io/role"] == "train"


@pytest.fixture(scope="module")
def two_train_nodes():
    cluster = start_multinode_cluster([TRAIN_NODE, TRAIN_NODE])
    yield cluster
    stop_multinode_cluster(cluster)


def test_node_loss_shrinks_then_grows_back(two_train_nodes, tmp_path):
    config = ElasticConfig(min_workers=1, max_workers=2, resources_per_worker={"CPU": 1, "fake_gpu": 1},
                           checkpoint_dir=str(tmp_path), gpu_resource="fake_gpu", nvml_backend="fake",
                           hang_timeout_min_s=2.0, max_restarts=8, spread=True)
    loop_config = {"checkpoint_dir": str(tmp_path / "toy"), "checkpoint_every": 5, "step_sleep_s": 0.1,
                   "max_steps": 70}
    supervisor = start_supervisor(toy_train_loop, loop_config, config)
    run = supervisor.run.remote()
    shrunk: dict = {}

    def lose_node_then_replace() -> float:
        injected_s = chaos.remove_worker_node(two_train_nodes, supervisor, 0)
        # The event, not a sleep: the one-worker group is running again (a step past the fault) before the
        # capacity comes back, so the run is seen shrunk and then grown.
        before = ray.get(supervisor.status.remote())
        shrunk.update(wait_for_status(
            supervisor, lambda s: s["group_size"] == 1 and s["recovering"] == 0 and s["step"] > before["step"],
            "a running one-worker group", timeout_s=120))
        two_train_nodes.add_node(**TRAIN_NODE, object_store_memory=MULTINODE_OBJECT_STORE_BYTES)
        return injected_s

    run_schedule(supervisor, [Injection(at_step=10, name="node_loss", inject=lose_node_then_replace)], timeout_s=240)
    grown = wait_for_status(supervisor, lambda s: s["group_size"] == 2 and s["recovering"] == 0,
                            "a two-worker group after the node joined", timeout_s=120)
    result = ray.get(run, timeout=300)
    ray.kill(supervisor)

    assert not shrunk["stopped"] and not grown["stopped"], (shrunk, grown)
    assert result.finished and not result.stopped and result.final_step == 70, result.report
    assert [(record.fault_class, record.tier) for record in result.faults] == [("node_loss", T3)], result.faults
    sizes = [len(nodes) for nodes in result.worker_nodes_history]
    assert sizes == [2, 1, 2], result.worker_nodes_history
    lost = result.worker_nodes_history[0][0]
    assert all(lost not in nodes for nodes in result.worker_nodes_history[1:])
