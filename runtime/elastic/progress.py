"""Per-step progress from inside a training loop: the step heartbeat, the progress line and metrics.

`report_step` is called by every rank once per step. Ray Train has `ray.train.report` for metrics
and checkpoints, but it is a synchronisation point and carries no liveness signal the controller
uses for hangs (Ray Train only notices a hung worker after its 600 s health-check timeout). Here
each call is a fire-and-forget actor message to the supervisor (when one runs), so a missing
heartbeat is a hang signal within seconds, and a slow rank stands out as a straggler.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

# Set in each worker by the supervisor's loop wrapper (`install_heartbeat_sink`); None under a plain
# TorchTrainer, where report_step only prints the progress line.
_SINK: Any = None
_CHAOS_HOOK: Any = None


@dataclass(kw_only=True, slots=True)
class Heartbeat:
    """One step of one rank, as the supervisor's ProgressSource sees it."""

    rank: int
    world_size: int
    step: int
    loss: float
    num_tokens: int
    time_s: float
    step_time_s: float | None
    pid: int
    node_id: str
    metrics: dict = field(default_factory=dict)


@dataclass(kw_only=True, slots=True)
class _ProgressState:
    last_time_s: float | None = None
    last_step: int | None = None
    last_print_s: float = 0.0
    tokens_since_print: int = 0
    steps_since_print: int = 0
    time_since_print_s: float = 0.0


_STATE = _ProgressState()


def install_heartbeat_sink(sink: Any, chaos_hook: Any = None) -> None:
    """Route heartbeats of this worker process to `sink` (an actor handle with `heartbeat.remote`)."""
    global _SINK, _CHAOS_HOOK
    _SINK = sink
    _CHAOS_HOOK = chaos_hook
    _STATE.last_time_s = None
    _STATE.last_step = None


def report_event(fault_class: str, detail: str = "", step: int | None = None) -> None:
    """Tell the supervisor about a fault the training loop itself noticed (e.g. "checkpoint_corrupt")."""
    if _SINK is None:
        return
    rank, _ = _rank_and_world()
    _SINK.worker_event.remote(rank=rank, fault_class=fault_class, detail=detail, step=step,
                              signature=None, pid=os.getpid(), node_id=_node_id(), time_s=time.time())


def _rank_and_world() -> tuple[int, int]:
    try:
        import ray.train

        context = ray.train.get_context()
        return context.get_world_rank(), context.get_world_size()
    except (RuntimeError, AttributeError, ValueError):
        return 0, 1


def _node_id() -> str:
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return ""


def last_step() -> int | None:
    """The last step this process reported (None before the first)."""
    return _STATE.last_step


def format_progress(step: int, loss: float, tokens_per_s: float, step_time_s: float | None) -> str:
    tok = f"{tokens_per_s / 1000:.1f}k tok/s" if tokens_per_s >= 1000 else f"{tokens_per_s:.0f} tok/s"
    per_step = f"{step_time_s:.2f} s/step" if step_time_s is not None else "- s/step"
    return f"step {step} | loss {loss:.2f} | {tok} | {per_step}"


def _record_metrics(loss: float, step_time_s: float, group_tokens: int) -> None:
    from runtime import metrics

    metrics.gauge("strata_train_loss_nats", "training loss (cross-entropy) of the last step").set(float(loss))
    metrics.histogram("strata_train_step_time_s", "wall time of one training step").observe(step_time_s)
    metrics.gauge("strata_train_tokens_per_s", "tokens per second of the whole worker group").set(
        group_tokens / max(step_time_s, 1e-9)
    )


def report_step(step: int, loss: float, num_tokens: int = 0, **metrics: Any) -> None:
    """Record one finished training step of this rank (non-blocking, cheap).

    `num_tokens` is the number of tokens this rank processed in the step; rank 0 prints a progress
    line at most once per second, with tokens/s scaled to the whole worker group.
    """
    now = time.monotonic()
    step_time_s = None if _STATE.last_time_s is None else now - _STATE.last_time_s
    _STATE.last_time_s = now
    _STATE.last_step = int(step)
    rank, world_size = _rank_and_world()
    if _SINK is not None:
        beat = Heartbeat(
            rank=rank,
            world_size=world_size,
            step=int(step),
            loss=float(loss),
            num_tokens=int(num_tokens),
            time_s=time.time(),
            step_time_s=step_time_s,
            pid=os.getpid(),
            node_id=_node_id(),
            metrics={key: float(value) for key, value in metrics.items()},
        )
        _SINK.heartbeat.remote(beat)
    if rank == 0 and step_time_s is not None:
        _record_metrics(loss, step_time_s, num_tokens * world_size)
        _STATE.tokens_since_print += num_tokens * world_size
        _STATE.steps_since_print += 1
        _STATE.time_since_print_s += step_time_s
        if now - _STATE.last_print_s >= 1.0:
            tokens_per_s = _STATE.tokens_since_print / max(_STATE.time_since_print_s, 1e-9)
            mean_step_s = _STATE.time_since_print_s / _STATE.steps_since_print
            print(format_progress(step, loss, tokens_per_s, mean_step_s), flush=True)
            _STATE.last_print_s = now
            _STATE.tokens_since_print = 0
            _STATE.steps_since_print = 0
            _STATE.time_since_print_s = 0.0
    if _CHAOS_HOOK is not None:
        _CHAOS_HOOK(rank=rank, step=step)
