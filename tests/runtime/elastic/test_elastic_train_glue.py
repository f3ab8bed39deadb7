"""The controller-side seam: a failed poll becomes a whole-group restart only when an in-place supervisor
asks for one (T2/T3 on a live node); other runs (vanilla drill, whole-group mode) are left to Ray Train."""

import ray
from ray.train.v2._internal.execution.worker_group.poll import WorkerGroupPollStatus, WorkerStatus

from runtime.elastic.train_glue import SupervisorCallback


class _Answer:
    def __init__(self, value: bool):
        self.value, self.calls = value, 0

    def remote(self, attempt):
        self.calls += 1
        return ray.put(self.value)


class _Supervisor:
    def __init__(self, value: bool):
        self.wants_whole_group_restart = _Answer(value)


def _failed_poll() -> WorkerGroupPollStatus:
    return WorkerGroupPollStatus(
        worker_statuses={0: WorkerStatus(running=False, error=RuntimeError("rank 0 died")), 1: WorkerStatus(running=True)},
        worker_rank_to_replica_group_rank={0: 0, 1: 1})


def test_whole_group_restart_only_when_the_in_place_supervisor_wants_it(ray_local):
    for in_place, wants, replaced_alone in ((True, True, False), (True, False, True), (False, True, True)):
        supervisor = _Supervisor(wants)
        status = _failed_poll()
        SupervisorCallback(supervisor, attempt=1, in_place=in_place).after_worker_group_poll_status(status)
        assert (status.failing_replica_group_indices == {0}) is replaced_alone, (in_place, wants)
        assert supervisor.wants_whole_group_restart.calls == int(in_place)


def test_a_healthy_poll_asks_nothing(ray_local):
    supervisor = _Supervisor(True)
    status = WorkerGroupPollStatus(worker_statuses={0: WorkerStatus(running=True)}, worker_rank_to_replica_group_rank={0: 0})
    SupervisorCallback(supervisor, attempt=1, in_place=True).after_worker_group_poll_status(status)
    assert supervisor.wants_whole_group_restart.calls == 0
