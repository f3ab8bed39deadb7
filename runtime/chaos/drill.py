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
    deadline = time.monotonic() + timeout_s
    while True:
        status = ray.get(supervisor.status.remote())
        if status["step"] >= step and status["recovering"] == 0 or status["stopped"]:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"run did not reach step {step} within {timeout_s} s: {status}")
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
