"""Fault drill: the same training under the same fault schedule, vanilla Ray Train vs the ElasticSupervisor.

    python -m benchmarks.fault_drill [--interval-s 120] [--quick] [--out benchmarks/results/fault_drill]
    ray job submit --working-dir . -- python -m benchmarks.fault_drill --quick

Starts a local multi-node cluster (head + 2 train nodes + 1 spare, as raylets on this machine), then
runs the toy data-parallel loop (runtime.chaos.toy_train) twice: once as a plain TorchTrainer with
FailureConfig(max_failures=...) and once under the supervisor. Every `--interval-s` one fault of the
schedule is injected into whichever run is live (SIGKILL, XID 13/48/79 with their effect on the
process, thermal throttle, corrupt checkpoint, straggler, node loss, SIGSTOP hang). Per fault it
reports detection latency, tier, MTTR (injection -> next completed step after the outage), downtime (all
seconds without a step until the next fault: a shrunk in-place resume can be followed by a restart)
and steps lost; overall,
ETTR = net steps x fault-free step time / wall time. Writes JSON and a PNG of loss vs wall time with
fault markers for both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict

import ray
from ray.cluster_utils import Cluster

from runtime import chaos
from runtime.chaos.drill import HeartbeatRecorder, Injected, VanillaRunner, wait_for_step
from runtime.chaos.toy_train import toy_train_loop
from runtime.elastic import ElasticConfig, start_supervisor
from runtime.elastic.tiers import T0, T1, T2, T3

HEAD = {"num_cpus": 1, "resources": {"role_head": 1}, "labels": {"strata.io/role": "head"}}
TRAIN = {"num_cpus": 2, "resources": {"fake_gpu": 2}, "labels": {"strata.io/role": "train"}}
SPARE = {"num_cpus": 2, "resources": {"fake_gpu": 2}, "labels": {"strata.io/role": "spare"}}
RESOURCES_PER_WORKER = {"CPU": 1, "fake_gpu": 1}
NUM_WORKERS = 2


def fault_schedule(cluster: Cluster, handle, checkpoint_dir: str, add_agent) -> list[tuple[str, str, callable]]:
    """(name, intended tier, inject) in order; hangs last, since vanilla Ray Train never recovers from them."""

    def node_loss() -> float:
        injected_s = chaos.remove_worker_node(cluster, handle, 0)
        node = cluster.add_node(**TRAIN, object_store_memory=128 * 1024**2)  # the replacement arrives
        add_agent(node.node_id)
        return injected_s

    return [
        ("sigkill", T1, lambda: chaos.kill_worker(handle, 1)),
        ("xid13", T1, lambda: chaos.gpu_fault(handle, 0, 13)),
        ("thermal", T0, lambda: chaos.nvml_fault(handle, 1, "thermal_throttle")),
        ("xid48", T2, lambda: chaos.gpu_fault(handle, 1, 48)),
        ("corrupt+sigkill", T1, lambda: (chaos.corrupt_checkpoint(checkpoint_dir), chaos.kill_worker(handle, 0))[1]),
        ("straggler", T3, lambda: chaos.slow_worker(handle, 1, sleep_s=0.4)),
        ("node_loss", T3, node_loss),
        ("sigstop_hang", T1, lambda: chaos.hang_worker(handle, 0)),
        ("xid79", T3, lambda: chaos.gpu_fault(handle, 0, 79)),
    ]


def start_cluster() -> Cluster:
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={**HEAD, "include_dashboard": False, "object_store_memory": 128 * 1024**2})
    for spec in (TRAIN, TRAIN, SPARE):
        cluster.add_node(**spec, object_store_memory=128 * 1024**2)
    cluster.wait_for_nodes()
    return cluster


def run_schedule(handle, schedule, interval_s: float, warmup_steps: int) -> list[Injected]:
    wait_for_step(handle, warmup_steps, timeout_s=300)
    done, next_s = [], time.time()
    for name, tier, inject in schedule:
        while time.time() < next_s:
            time.sleep(0.1)
        status = ray.get(handle.status.remote())
        if status["stopped"]:
            break
        try:
            injected_s = inject()
        except (ValueError, KeyError, ray.exceptions.RayError) as error:  # e.g. vanilla has no live worker
            print(f"  {name}: not injected ({error})")
            next_s = time.time() + interval_s
            continue
        injected_s = injected_s if isinstance(injected_s, float) else time.time()
        done.append(Injected(name=name, at_step=status["step"], injected_s=injected_s, expected_tier=tier))
        print(f"  {time.strftime('%X')} injected {name} at step {status['step']}", flush=True)
        next_s = injected_s + interval_s
    while time.time() < next_s:
        time.sleep(0.1)
    return done


def ettr(history: list[tuple[float, int, float]], end_s: float) -> dict:
    """Effective training time ratio: net steps x fault-free step time / wall time."""
    if len(history) < 3:
        return {"ettr": 0.0, "net_steps": 0, "wall_s": 0.0, "step_time_s": None}
    intervals = [b[0] - a[0] for a, b in zip(history, history[1:]) if b[1] == a[1] + 1]
    step_time_s = statistics.median(intervals)
    wall_s = end_s - history[0][0]
    net_steps = max(step for _, step, _ in history) - history[0][1]
    return {"ettr": net_steps * step_time_s / wall_s, "net_steps": net_steps, "wall_s": wall_s, "step_time_s": step_time_s}


def recovery(history: list, injected_s: float, at_step: int, end_s: float) -> tuple[float | None, int | None]:
    """(MTTR, steps lost) read off rank 0's heartbeats, the same way for both runs: the first step after
    injection that follows an outage (a silence of >= 3 step times, at least 0.3 s); when there was
    no outage at all (in-place recovery can be that fast), the first step after injection."""
    intervals = [b[0] - a[0] for a, b in zip(history, history[1:]) if b[1] == a[1] + 1]
    outage_s = max(0.3, 3 * statistics.median(intervals)) if intervals else 1.0
    previous, first_after = None, None
    for t, step, _ in history:
        if t <= injected_s:
            previous = t
            continue
        if t > end_s:
            break
        first_after = first_after or (t, step)
        if previous is not None and t - previous >= outage_s:
            return t - injected_s, max(0, at_step - step + 1)
        previous = t
    if first_after is None:
        return None, None
    return first_after[0] - injected_s, max(0, at_step - first_after[1] + 1)


def downtime(history: list, injected_s: float, end_s: float) -> float:
    """Seconds without a completed step between a fault and the next one (every outage, not only the
    first: in-place recovery resumes at once shrunk, and a T2/T3 restart may follow moments later)."""
    intervals = [b[0] - a[0] for a, b in zip(history, history[1:]) if b[1] == a[1] + 1]
    step_s = statistics.median(intervals) if intervals else 0.1
    outage_s = max(0.3, 3 * step_s)
    times = [t for t, _, _ in history if injected_s - 60 <= t <= end_s]
    lost = 0.0
    for a, b in zip(times, times[1:]):
        if b > injected_s and b - a >= outage_s:
            lost += b - max(a, injected_s) - step_s
    return max(0.0, lost)


def supervised_faults(result, injected: list[Injected], interval_s: float) -> list[dict]:
    rows, records = [], list(result.faults)
    order = {T0: 0, T1: 1, T2: 2, T3: 3, "T4": 4}
    for item in injected:
        window = [r for r in records if item.injected_s - 0.05 <= r.decided_s < item.injected_s + interval_s]
        record = max(window, key=lambda r: order[r.tier], default=None)
        row = {"fault": item.name, "intended_tier": item.expected_tier, "step": item.at_step}
        if record is None:
            rows.append({**row, "detected": False, "tier": None})
            continue
        mttr_s, steps_lost = recovery(result.loss_history, item.injected_s, item.at_step, item.injected_s + interval_s)
        rows.append({**row, "detected": True, "tier": record.tier, "fault_class": record.fault_class,
                     "detection_s": record.decided_s - item.injected_s,
                     "mttr_s": 0.0 if record.tier == T0 else mttr_s, "steps_lost": 0 if record.tier == T0 else steps_lost,
                     "downtime_s": downtime(result.loss_history, item.injected_s, item.injected_s + interval_s)})
    return rows


def vanilla_faults(history: list, groups: list, injected: list[Injected], interval_s: float) -> list[dict]:
    rows = []
    for item in injected:
        end_s = item.injected_s + interval_s
        restart = next((t for t, _ in groups if item.injected_s < t < end_s), None)
        row = {"fault": item.name, "intended_tier": item.expected_tier, "step": item.at_step, "tier": None}
        if restart is None:
            rows.append({**row, "detected": False, "mttr_s": None, "steps_lost": None})
            continue
        rank0 = [(t, step, loss) for t, rank, step, loss, _ in history if rank == 0]
        mttr_s, steps_lost = recovery(rank0, item.injected_s, item.at_step, end_s)
        rows.append({**row, "detected": True, "detection_s": None, "restart_s": restart - item.injected_s,
                     "mttr_s": mttr_s, "steps_lost": steps_lost, "downtime_s": downtime(rank0, item.injected_s, end_s)})
    return rows


def run_mode(mode: str, args, workdir: str) -> dict:
    cluster = start_cluster()
    checkpoint_dir = os.path.join(workdir, mode)
    loop_config = {"checkpoint_dir": os.path.join(checkpoint_dir, "toy"), "checkpoint_every": args.checkpoint_every,
                   "step_sleep_s": args.step_sleep_s, "max_steps": 10**6}
    print(f"[{mode}] cluster up; training", flush=True)
    if mode == "supervised":
        config = ElasticConfig(min_workers=1, max_workers=NUM_WORKERS, resources_per_worker=RESOURCES_PER_WORKER,
                               checkpoint_dir=checkpoint_dir, gpu_resource="fake_gpu", nvml_backend="fake",
                               max_restarts=len(fault_schedule(cluster, None, "", None)) * 3, hang_timeout_min_s=2.0,
                               spread=True, in_place_recovery=not args.no_in_place)
        handle = start_supervisor(toy_train_loop, loop_config, config)
        run = handle.run.remote()
        add_agent = lambda node_id: None  # noqa: E731 - the supervisor starts agents on new nodes itself
    else:
        on_driver_node = {"label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}
        handle = HeartbeatRecorder.options(**on_driver_node).remote()
        run = VanillaRunner.options(**on_driver_node).remote().run.remote(
            toy_train_loop, loop_config, handle, num_workers=NUM_WORKERS, resources_per_worker=RESOURCES_PER_WORKER,
            max_failures=args.max_failures, storage_path=os.path.join(checkpoint_dir, "ray_train"))
        add_agent = lambda node_id: ray.get(handle.add_agent.remote(node_id))  # noqa: E731
    injected = run_schedule(handle, fault_schedule(cluster, handle, loop_config["checkpoint_dir"], add_agent),
                            args.interval_s, args.warmup_steps)
    end_s = time.time()
    if mode == "supervised":
        handle.request_stop.remote("drill finished")
        result = ray.get(run, timeout=120)
        history = result.loss_history
        faults = supervised_faults(result, injected, args.interval_s)
        outcome = result.report
    else:
        ray.get(handle.abort.remote())
        outcome = ray.get(run, timeout=120)
        raw = ray.get(handle.history.remote())
        history = [(t, step, loss) for t, rank, step, loss, _ in raw if rank == 0]
        faults = vanilla_faults(raw, ray.get(handle.groups.remote()), injected, args.interval_s)
    ray.shutdown()
    cluster.shutdown()
    summary = ettr(history, end_s)
    print(f"[{mode}] ETTR {summary['ettr']:.3f} ({outcome})", flush=True)
    return {"mode": mode, "outcome": outcome, **summary, "faults": faults,
            "injections": [asdict(item) for item in injected], "loss_history": history}


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.4 * len(runs)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for axis, run in zip(axes, runs):
        if not run["loss_history"]:
            continue
        start = run["loss_history"][0][0]
        times, losses, previous = [], [], None
        for t, _, loss in run["loss_history"]:
            if previous is not None and t - previous > 2.0:  # no step for 2 s: show the outage as a gap
                times.append(float("nan"))
                losses.append(float("nan"))
            times.append(t - start)
            losses.append(loss)
            previous = t
        axis.plot(times, losses, lw=1)
        for item in run["injections"]:
            axis.axvline(item["injected_s"] - start, color="red", ls="--", lw=0.8)
            axis.text(item["injected_s"] - start, axis.get_ylim()[1], item["name"], rotation=90, va="top", fontsize=7)
        axis.set_title(f"{run['mode']}: ETTR {run['ettr']:.2f}")
        axis.set_ylabel("loss (rank 0)")
    axes[-1].set_xlabel("wall time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval-s", type=float, default=120.0, help="seconds between faults")
    parser.add_argument("--quick", action="store_true", help="a fault every 30 s (development)")
    parser.add_argument("--modes", default="vanilla,supervised")
    parser.add_argument("--max-failures", type=int, default=10, help="vanilla FailureConfig(max_failures)")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--no-in-place", action="store_true",
                        help="supervised run restarts the whole group on T1 (no in-place recovery)")
    parser.add_argument("--step-sleep-s", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/fault_drill")
    args = parser.parse_args(argv)
    if args.quick:
        args.interval_s = 30.0
    if args.interval_s <= 0:
        raise ValueError(f"--interval-s must be > 0, got {args.interval_s}")
    os.environ.pop("RAY_ADDRESS", None)  # the drill owns its multi-node cluster
    workdir = tempfile.mkdtemp(prefix="fault_drill_")
    load_before = os.getloadavg()
    runs = [run_mode(mode, args, workdir) for mode in args.modes.split(",")]
    shutil.rmtree(workdir, ignore_errors=True)
    by_mode = {run["mode"]: run for run in runs}
    report = {"interval_s": args.interval_s, "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "runs": runs}
    if "vanilla" in by_mode and "supervised" in by_mode:
        report["ettr_ratio_supervised_over_vanilla"] = by_mode["supervised"]["ettr"] / max(by_mode["vanilla"]["ettr"], 1e-9)
        sup = by_mode["supervised"]["faults"]
        report["tier_accuracy"] = sum(f["tier"] == f["intended_tier"] for f in sup) / max(len(sup), 1)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as file:
        json.dump(report, file, indent=1)
    plot(runs, args.out + ".png")
    for run in runs:
        print(f"\n{run['mode']}: ETTR {run['ettr']:.3f}  outcome: {run['outcome']}")
        for fault in run["faults"]:
            print("  ", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in fault.items()})
    print(f"\nwrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
