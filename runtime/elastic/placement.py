"""Where workers may go: cordoned nodes, quarantined GPUs, spares, and the label selector that says so.

What Ray lacked: a node can be drained but not cordoned for one job, Ray Train's elastic capacity
count (the AutoscalingCoordinator) ignores drains and label selectors and refreshes every 20 s, and
a single bad GPU cannot be taken out of a node's resources. Here:
- cordon = a GCS drain (cluster-wide: no new leases on the node) + exclusion by `ray.io/node-id`
  in the label selector handed to every worker-group start;
- quarantine a GPU = a placeholder actor holding one unit of the GPU resource on that node, so
  Ray cannot schedule a worker onto it (Ray cannot pin a GPU index, so on a real multi-GPU node
  the held unit is the next free one; CUDA_VISIBLE_DEVICES pinning is left to the operator);
- spares = nodes whose role label is a spare value; they are only selected when the train nodes
  cannot hold the worker group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import ray
from ray.core.generated import autoscaler_pb2
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

logger = logging.getLogger(__name__)

NODE_ID_LABEL = "ray.io/node-id"


@dataclass(kw_only=True, slots=True)
class PlacementConfig:
    resources_per_worker: dict
    role_label: str | None = "strata.io/role"  # None: every node may take workers
    train_roles: tuple[str, ...] = ("train",)
    spare_roles: tuple[str, ...] = ("spare",)
    gpu_resource: str = "GPU"
    drain_on_cordon: bool = True


@ray.remote(num_cpus=0)
class _GpuQuarantine:
    """Holds one GPU unit on a node so no worker is scheduled onto it."""

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@dataclass(kw_only=True, slots=True)
class Placement:
    config: PlacementConfig
    cordoned: dict[str, str] = field(default_factory=dict)  # node_id -> reason
    quarantined: dict[str, list] = field(default_factory=dict)  # node_id -> [actor handles]

    def _role(self, node: dict) -> str | None:
        if self.config.role_label is None:
            return None
        return (node.get("Labels") or {}).get(self.config.role_label)

    def _roles_in_use(self, nodes: list[dict]) -> bool:
        """Roles apply only on a cluster that labels its nodes; an unlabelled cluster is all train nodes."""
        return self.config.role_label is not None and any(self._role(node) for node in nodes)

    def _slots(self, node: dict) -> int:
        resources = dict(node.get("Resources") or {})
        held = len(self.quarantined.get(node["NodeID"], []))
        if held:
            resources[self.config.gpu_resource] = resources.get(self.config.gpu_resource, 0) - held
        counts = [int(resources.get(name, 0) // amount) for name, amount in self.config.resources_per_worker.items() if amount > 0]
        return max(0, min(counts)) if counts else 0

    def usable_nodes(self) -> tuple[list[dict], list[dict]]:
        """(train nodes, spare nodes) that are alive and not cordoned."""
        train, spare = [], []
        draining = ray._private.state.state.get_draining_nodes()  # drained by an operator or autoscaler
        nodes = [node for node in ray.nodes() if node["Alive"]]
        use_roles = self._roles_in_use(nodes)
        for node in nodes:
            if node["NodeID"] in self.cordoned or node["NodeID"] in draining:
                continue
            role = self._role(node)
            if not use_roles or role in self.config.train_roles:
                train.append(node)
            elif role in self.config.spare_roles:
                spare.append(node)
        return train, spare

    def capacity(self, spread: bool = True) -> tuple[int, int]:
        """Worker slots on (train nodes, spare nodes); with `spread`, one worker per node."""
        train, spare = self.usable_nodes()
        count = (lambda node: min(1, self._slots(node))) if spread else self._slots
        return sum(map(count, train)), sum(map(count, spare))

    def label_selector(self, num_workers: int, spread: bool = True) -> dict:
        train_slots, _ = self.capacity(spread)
        selector: dict[str, str] = {}
        if self._roles_in_use([node for node in ray.nodes() if node["Alive"]]):
            roles = self.config.train_roles if num_workers <= train_slots else self.config.train_roles + self.config.spare_roles
            selector[self.config.role_label] = f"in({','.join(roles)})"
        excluded = set(self.cordoned) | set(ray._private.state.state.get_draining_nodes())
        if excluded:
            selector[NODE_ID_LABEL] = f"!in({','.join(sorted(excluded))})"
        return selector

    def cordon(self, node_id: str, reason: str) -> None:
        if node_id in self.cordoned:
            return
        self.cordoned[node_id] = reason
        if not self.config.drain_on_cordon:
            return
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        if node_id not in alive:
            return
        deadline_ms = 0  # no deadline: the node stays up (an operator or autoscaler replaces it)
        accepted, message = _gcs_client().drain_node(
            node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
            f"strata cordon: {reason}", deadline_ms)
        if not accepted:
            logger.warning("drain of node %s rejected: %s (still excluded by label selector)", node_id, message)

    def quarantine_gpu(self, node_id: str) -> None:
        holder = _GpuQuarantine.options(
            resources={self.config.gpu_resource: 1},
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote()
        self.quarantined.setdefault(node_id, []).append(holder)

    def wait_quarantined(self, timeout_s: float = 5.0) -> None:
        refs = [holder.node_id.remote() for holders in self.quarantined.values() for holder in holders]
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)

    def release(self) -> None:
        for holders in self.quarantined.values():
            for holder in holders:
                ray.kill(holder)
        self.quarantined.clear()


def _gcs_client():
    return ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)


