"""The seams between the ElasticSupervisor and Ray Train: a controller callback and a loop wrapper.

What Ray Train lacked, and these seams add without forking it:
- `SupervisorCallback.on_controller_start_worker_group` returns the label selector of the moment, so
  every (re)start of the worker group avoids cordoned nodes and only uses spares when needed
  (ScalingConfig.label_selector is fixed for the whole run).
- `after_worker_group_start` tells the supervisor which pid on which node runs which rank, so
  HealthAgents watch those pids and chaos/recovery can signal them.
- `after_controller_start` hands over the controller, so a T4 stop or an elastic resize can abort it.
- `supervised_loop` installs the heartbeat sink in each worker and reports exceptions (with a
  signature) before Ray Train sees them, so a deterministic bug is recognised as one.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import ray
from ray.train.v2._internal.execution.callback import (
    ControllerCallback,
    ReplicaGroupCallback,
    WorkerGroupCallback,
)

from runtime.elastic import progress
from runtime.health.taxonomy import FaultClass


class SupervisorCallback(ControllerCallback, WorkerGroupCallback, ReplicaGroupCallback):
    """Runs inside Ray Train's controller actor; forwards to the supervisor actor."""

    def __init__(self, supervisor: Any, attempt: int | None = None, in_place: bool = False):
        self._supervisor = supervisor
        self._attempt = attempt
        self._in_place = in_place  # the supervisor runs in-place recovery (replica groups)

    def after_controller_start(self, train_run_context: Any) -> None:
        controller = ray.get_runtime_context().current_actor
        ray.get(self._supervisor.register_controller.remote(controller, self._attempt))

    def on_controller_start_worker_group(self, *, scaling_config: Any, num_workers: int) -> dict | None:
        return ray.get(self._supervisor.placement_label_selector.remote(num_workers)) or None

    def after_worker_group_start(self, worker_group: Any) -> None:
        workers = [
            {"rank": rank, "node_id": worker.metadata.node_id, "pid": worker.metadata.pid}
            for rank, worker in enumerate(worker_group.get_workers())
        ]
        ray.get(self._supervisor.register_workers.remote(workers, self._attempt))

    def after_worker_group_poll_status(self, worker_group_status: Any) -> None:
        """In-place recovery: a failed rank is normally replaced alone. When the supervisor decided on a
        new placement (T2/T3 on a live node), drop the rank -> replica-group map from this poll so the
        controller restarts the whole group instead (with a new label selector, same controller)."""
        if not self._in_place or not worker_group_status.errors:
            return
        if worker_group_status.worker_rank_to_replica_group_rank is None:
            return
        if ray.get(self._supervisor.wants_whole_group_restart.remote(self._attempt), timeout=10):
            object.__setattr__(worker_group_status, "worker_rank_to_replica_group_rank", None)  # frozen dataclass

    def after_replica_group_start(self, replica_group: Any) -> None:
        """In-place recovery: Ray Train replaced only these workers (one rank each)."""
        workers = [
            {"rank": worker.distributed_context.world_rank, "node_id": worker.metadata.node_id,
             "pid": worker.metadata.pid}
            for worker in replica_group.get_workers()
        ]
        ray.get(self._supervisor.replace_workers.remote(workers, self._attempt))


def supervised_loop(
    train_loop_per_worker: Callable[[dict], Any], supervisor: Any, rendezvous: Any = None
) -> Callable[[dict], Any]:
    """Wrap the user's loop: heartbeats to `supervisor`, chaos directives, exceptions with a signature,
    and (in-place recovery) this rank's PeerGroup on `rendezvous`."""
    from runtime.chaos.hook import apply_directives

    def loop(config: dict) -> Any:
        progress.install_heartbeat_sink(supervisor, chaos_hook=apply_directives)
        if rendezvous is not None:
            from runtime.elastic import peer_group

            context = ray.train.get_context()
            peer_group.install(rendezvous, context.get_world_rank(), context.get_world_size())
        try:
            result = train_loop_per_worker(config)
        except Exception as error:
            if rendezvous is not None and isinstance(error, peer_group.RunFinished):
                return None  # a replacement that came too late: the others finished the run
            context = ray.train.get_context()
            frames = traceback.extract_tb(error.__traceback__)
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            signature = f"{type(error).__name__}: {error} @ {where}"
            ray.get(supervisor.worker_event.remote(
                rank=context.get_world_rank(), fault_class=FaultClass.WORKER_ERROR,
                detail="".join(traceback.format_exception(error))[-2000:], step=progress.last_step(),
                signature=signature, pid=None, node_id=None, time_s=None), timeout=10)
            raise
        if rendezvous is not None:
            rendezvous.finish.remote()  # a replacement still on its way must not wait for this rank
        ray.get(supervisor.worker_done.remote(ray.train.get_context().get_world_rank()), timeout=10)
        return result

    return loop
