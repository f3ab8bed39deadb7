"""Drive a fault schedule against a running ElasticSupervisor: inject each fault at a training step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray


@dataclass(kw_only=True, slots=True)
class Injection:
    at_step: int
    name: str
    inject: Callable[[], Any]  # returns the injection wall time (float) or anything else
    expected_tier: str | None = None


@dataclass(kw_only=True, slots=True)
class Injected:
    name: str
    at_step: int
    injected_s: float
    expected_tier: str | None


def wait_for_step(supervisor: Any, step: int, timeout_s: float = 300.0) -> dict:
    """Block until the run reports `step` (or stops); returns the supervisor status."""
    return wait_for_status(supervisor, lambda status: status["step"] >= step and status["recovering"] == 0,
                           f"step {step}", timeout_s)


def wait_for_status(supervisor: Any, condition: Callable[[dict], bool], what: str, timeout_s: float = 300.0) -> dict:
    """Block until the supervisor's status satisfies `condition` (or the run stops); returns that status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = ray.get(supervisor.status.remote())
        if condition(status) or status["stopped"]:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"run did not reach {what} within {timeout_s} s: {status}")
        time.sleep(0.1)


def run_schedule(supervisor: Any, schedule: list[Injection], timeout_s: float = 300.0) -> list[Injected]:
    done = []
    for injection in sorted(schedule, key=lambda item: item.at_step):
        status = wait_for_step(supervisor, injection.at_step, timeout_s)
        if status["stopped"]:
            break
        value = injection.inject()
        injected_s = value if isinstance(value, float) else time.time()
        done.append(Injected(name=injection.name, at_step=status["step"], injected_s=injected_s,
                             expected_tier=injection.expected_tier))
    return done


@ray.remote(num_cpus=0, max_concurrency=16)
class HeartbeatRecorder:
    """Stands where the supervisor stands, for a vanilla Ray Train run: it records heartbeats and the
    worker group (through the same callback) and offers HealthAgents as chaos hands, but decides nothing."""

    def __init__(self, agent_config: Any = None):
        from runtime.health.agent import HealthAgentConfig, start_agents

        self._agents = start_agents(agent_config or HealthAgentConfig(nvml_backend="fake"), sink=None)
        self._workers: list[dict] = []
        self._history: list[tuple[float, int, int, float, int]] = []  # (wall s, rank, step, loss, pid)
        self._groups: list[tuple[float, list[dict]]] = []
        self._controller: Any = None
        self._step = -1

    def heartbeat(self, beat: Any) -> None:
        self._history.append((beat.time_s, beat.rank, beat.step, beat.loss, beat.pid))
        if beat.rank == 0:
            self._step = beat.step

    def worker_event(self, **_: Any) -> None:
        pass

    def worker_done(self, rank: int) -> None:
        pass

    def on_signals(self, signals: list) -> None:
        pass

    def register_controller(self, controller: Any, attempt: int | None = None) -> None:
        self._controller = controller

    def placement_label_selector(self, num_workers: int) -> dict:
        return {}

    def register_workers(self, workers: list[dict], attempt: int | None = None) -> None:
        self._workers = workers
        self._groups.append((time.time(), workers))

    def workers(self) -> list[dict]:
        return list(self._workers)

    def agents(self) -> dict:
        return dict(self._agents)

    def status(self) -> dict:
        return {"step": self._step, "recovering": 0, "stopped": None}

    def history(self) -> list:
        return list(self._history)

    def groups(self) -> list:
        return list(self._groups)

    def add_agent(self, node_id: str) -> None:
        from runtime.health.agent import HealthAgentConfig, start_agents

        self._agents.update(start_agents(HealthAgentConfig(nvml_backend="fake"), node_ids=[node_id]))

    def abort(self) -> None:
        if self._controller is not None:
            self._controller.abort.remote()


@ray.remote(num_cpus=0)
class VanillaRunner:
    """Runs a plain Ray Train TorchTrainer (FailureConfig(max_failures=...)) the way a user would."""

    def run(self, train_loop_per_worker: Callable, train_loop_config: dict, recorder: Any, *, num_workers: int,
            resources_per_worker: dict, max_failures: int, storage_path: str) -> str:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from runtime.elastic.train_glue import SupervisorCallback, supervised_loop

        trainer = TorchTrainer(
            supervised_loop(train_loop_per_worker, recorder),
            train_loop_config=train_loop_config,
            scaling_config=ScalingConfig(num_workers=num_workers, resources_per_worker=resources_per_worker,
                                         placement_strategy="SPREAD"),
            run_config=RunConfig(name="vanilla", storage_path=storage_path,
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 callbacks=[SupervisorCallback(recorder)]),  # observes only; no decisions
        )
        try:
            trainer.fit()
        except Exception as error:  # the drill reports how vanilla ended, whatever it was
            return f"failed: {type(error).__name__}: {str(error)[:300]}"
        return "finished"
