"""The closed robot loop in simulation: collect -> label -> train -> deploy -> evaluate -> DAgger, repeated.

    python -m data_apps.loop --workdir DIR [--rounds 2] [--quick] [--num-episodes 100] [--eval-episodes 50]
        [--train-steps 3000] [--pointnet | --no-pointnet] [--num-cpus 4]
    ray job submit --working-dir . -- python -m data_apps.loop --workdir /mnt/cluster_storage/loop --rounds 2

Round 1 collects expert demonstrations (SimWorker actors -> point clouds -> labelers -> LeRobot v3
dataset under DIR/dataset). Every round then trains a state-MLP policy (and a PointNet one) with
train_apps.policy_train under the elastic supervisor, deploys or hot-swaps it on Serve
(serve_apps.policy), evaluates it on seeds no round has seen, and re-collects each failed start
twice, DAgger-style (the policy drives while the expert labels, and the expert alone), so the next
round trains on the grown dataset. A table per round, DIR/loop_report.json and the failure cases
(DIR/evaluations/round-NN.json: seed and the simulator's final state) record the results.
Only the apps' public entry points are used: collect(), train_policy(), deploy_policy().
Before starting, what the loop holds at its busiest (`replica_groups`) is checked against the
cluster's CPUs (runtime.placement_fit); --num-cpus sizes an embedded cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_apps.collect import CollectConfig, collect
from runtime.cluster import connect, free_port, place
from runtime.placement_fit import ReplicaGroup
from runtime.robot.policy.evaluation import EvalReport, evaluate_policy
from runtime.robot.sim.env import SimConfig
from runtime.robot.sim.label_quality import LabelQuality
from runtime.robot.sim.pool import SimPool, SimPoolConfig
from serve_apps.policy import PolicyAppArgs, deploy_policy
from train_apps.policy_train import PolicyTrainConfig, train_policy

APP_NAME = "policy"
ROUTE_PREFIX = "/policy"
TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 1_000_000  # evaluation starts: disjoint from training seeds, new ones every round


@dataclass(kw_only=True, slots=True)
class LoopConfig:
    workdir: str
    rounds: int = 2
    num_episodes: int = 100  # expert demonstrations in round 1
    new_expert_episodes_per_round: int = 0  # fresh demonstrations added in later rounds
    eval_episodes: int = 50
    train_steps: int = 3000
    pointnet: bool = True
    pointnet_train_steps: int = 1000
    noise_std: float = 0.1
    num_sim_workers: int = 2
    num_envs_per_worker: int = 13  # ~40 MB per env; one GL context (~125 MB) per worker
    num_cpus_per_sim_worker: float = 0.5
    policy_num_cpus: float = 0.5  # the Serve policy endpoint's replica
    image_size: int = 64
    supervised: bool = True

    def __post_init__(self) -> None:
        for name in ("rounds", "num_episodes", "eval_episodes", "train_steps", "num_sim_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"loop.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def quick(cls, workdir: str, rounds: int) -> LoopConfig:
        """`make demo`: the same loop, small enough for a couple of minutes on a laptop."""
        return cls(workdir=workdir, rounds=rounds, num_episodes=30, eval_episodes=20, train_steps=800,
                   pointnet=False, num_envs_per_worker=10)


@dataclass(kw_only=True, slots=True)
class RoundReport:
    round: int
    episodes_added: int
    episodes_total: int
    frames_total: int
    label_success_accuracy: float
    label_phase_f1: float
    label_phase_f1_by_mode: dict = field(default_factory=dict)
    expert_success_rate: float | None
    train_loss: float
    success_rate: float
    failed_seeds: list[int] = field(default_factory=list)
    failure_phases: dict = field(default_factory=dict)
    policy_version: str = ""
    pointnet_train_loss: float | None = None
    pointnet_success_rate: float | None = None
    wall_s: float = 0.0
    stage_s: dict = field(default_factory=dict)


def run_loop(config: LoopConfig, pool: SimPool) -> list[RoundReport]:
    workdir = Path(config.workdir).resolve()
    dataset = str(workdir / "dataset")
    reports: list[RoundReport] = []
    pending_failures: list[int] = []
    for round_index in range(1, config.rounds + 1):
        started_s = time.perf_counter()
        stage_s: dict[str, float] = {}
        # 1-3. collect + label: expert demos first, then the previous round's failures (DAgger).
        collected = []
        expert_success = None
        clock = time.perf_counter()
        if round_index == 1 or config.new_expert_episodes_per_round:
            count = config.num_episodes if round_index == 1 else config.new_expert_episodes_per_round
            start = TRAIN_SEED_BASE + (0 if round_index == 1 else config.num_episodes
                                        + (round_index - 2) * config.new_expert_episodes_per_round)
            result = collect(pool, CollectConfig(
                dst=dataset, seeds=list(range(start, start + count)), modes=("expert",),
                noise_std=config.noise_std, tag=f"round-{round_index:02d}"))
            expert_success = result.rollout_success_rate
            collected.append(result)
        if pending_failures:
            collected.append(collect(pool, CollectConfig(
                dst=dataset, seeds=pending_failures, modes=("dagger", "expert"), noise_std=config.noise_std,
                driver={"kind": "serve", "app_name": APP_NAME}, tag=f"round-{round_index:02d}-dagger")))
        stage_s["collect_label"] = time.perf_counter() - clock
        quality, by_mode = LabelQuality(), {}
        for result in collected:
            quality.add(result.label_quality)
            for mode, mode_quality in result.label_quality_by_mode.items():
                by_mode.setdefault(mode, LabelQuality()).add(mode_quality)
        # 4. train on everything collected so far.
        clock = time.perf_counter()
        trained = train_policy(PolicyTrainConfig(
            dataset=dataset, output_dir=str(workdir / "policies" / f"round-{round_index:02d}" / "state_mlp"),
            kind="state_mlp", max_steps=config.train_steps, supervised=config.supervised,
            version=f"round-{round_index}-state_mlp"))
        stage_s["train"] = time.perf_counter() - clock
        # 5. deploy (round 1) or hot-swap (later rounds) the new checkpoint.
        clock = time.perf_counter()
        deploy_policy(PolicyAppArgs(checkpoint=trained.checkpoint, num_cpus=config.policy_num_cpus), app_name=APP_NAME,
                      route_prefix=ROUTE_PREFIX)
        stage_s["deploy"] = time.perf_counter() - clock
        # 6. evaluate through the deployed policy on fresh seeds.
        clock = time.perf_counter()
        eval_seeds = [EVAL_SEED_BASE + round_index * 10_000 + i for i in range(config.eval_episodes)]
        evaluation: EvalReport = evaluate_policy(pool, eval_seeds, {"kind": "serve", "app_name": APP_NAME})
        stage_s["evaluate"] = time.perf_counter() - clock
        pending_failures = evaluation.failed_seeds
        failures_path = workdir / "evaluations" / f"round-{round_index:02d}.json"
        failures_path.parent.mkdir(parents=True, exist_ok=True)
        failures_path.write_text(json.dumps({"seeds": eval_seeds, "success_rate": evaluation.success_rate,
                                             "policy_versions": evaluation.policy_versions,
                                             "failures": evaluation.failures}, indent=2))
        report = RoundReport(
            round=round_index, episodes_added=sum(r.num_episodes for r in collected),
            episodes_total=collected[-1].episodes_total, frames_total=collected[-1].frames_total,
            label_success_accuracy=quality.success_accuracy, label_phase_f1=quality.phase_f1,
            label_phase_f1_by_mode={mode: q.phase_f1 for mode, q in by_mode.items()},
            expert_success_rate=expert_success, train_loss=trained.final_loss, success_rate=evaluation.success_rate,
            failed_seeds=evaluation.failed_seeds, failure_phases=evaluation.failure_phases,
            policy_version=trained.version, stage_s=stage_s,
        )
        if config.pointnet:
            clock = time.perf_counter()
            cloud_policy = train_policy(PolicyTrainConfig(
                dataset=dataset, output_dir=str(workdir / "policies" / f"round-{round_index:02d}" / "pointnet"),
                kind="pointnet", max_steps=config.pointnet_train_steps, batch_size=64, supervised=config.supervised,
                version=f"round-{round_index}-pointnet"))
            cloud_eval = evaluate_policy(pool, eval_seeds, {"kind": "checkpoint", "path": cloud_policy.checkpoint})
            report.pointnet_train_loss = cloud_policy.final_loss
            report.pointnet_success_rate = cloud_eval.success_rate
            stage_s["pointnet"] = time.perf_counter() - clock
        report.wall_s = time.perf_counter() - started_s
        reports.append(report)
        print(render_round(report), flush=True)
        (workdir / "loop_report.json").write_text(json.dumps([asdict(r) for r in reports], indent=2))
    return reports


def replica_groups(config: LoopConfig) -> list[ReplicaGroup]:
    """What holds CPUs at the loop's busiest moment, training: the sim workers and the policy endpoint
    stay up all run; one policy_train worker and the Ray Data read it drives need a CPU each."""
    return [
        ReplicaGroup(name="SimWorker", count=config.num_sim_workers, num_cpus=config.num_cpus_per_sim_worker),
        ReplicaGroup(name="Policy", count=1, num_cpus=config.policy_num_cpus),
        ReplicaGroup(name="policy_train worker", count=1, num_cpus=1.0, fixed=True),
        ReplicaGroup(name="Ray Data task", count=1, num_cpus=1.0, fixed=True),
    ]


def render_round(report: RoundReport) -> str:
    def pct(value):
        return "-" if value is None else f"{value:.0%}"

    rows = [
        ("episodes", f"+{report.episodes_added} -> {report.episodes_total} ({report.frames_total} frames)"),
        ("expert success", pct(report.expert_success_rate)),
        ("label quality", f"success acc {pct(report.label_success_accuracy)}, phase F1(+-2) {report.label_phase_f1:.2f}"
         + (" (" + ", ".join(f"{m} {f1:.2f}" for m, f1 in report.label_phase_f1_by_mode.items()) + ")"
            if len(report.label_phase_f1_by_mode) > 1 else "")),
        ("training loss", f"state MLP {report.train_loss:.5f}"
         + ("" if report.pointnet_train_loss is None else f", PointNet {report.pointnet_train_loss:.5f}")),
        ("success rate", f"state MLP {pct(report.success_rate)} (Serve, {report.policy_version})"
         + ("" if report.pointnet_success_rate is None else f", PointNet {pct(report.pointnet_success_rate)}")),
        ("failures", f"{len(report.failed_seeds)} -> re-collected next round; ended in {report.failure_phases}"),
        ("wall time", f"{report.wall_s:.1f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in report.stage_s.items()) + ")"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"=== round {report.round} ==="] + [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_apps.loop", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small settings for a demo (make demo)")
    parser.add_argument("--num-episodes", type=int, default=None, help="expert demonstrations in round 1")
    parser.add_argument("--eval-episodes", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--pointnet", action=argparse.BooleanOptionalAction, default=None,
                        help="also train and evaluate the PointNet policy")
    parser.add_argument("--supervised", action=argparse.BooleanOptionalAction, default=True,
                        help="train under the ElasticSupervisor (default) or a plain TorchTrainer")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of an embedded cluster")
    parser.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: a free one)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> LoopConfig:
    config = LoopConfig.quick(args.workdir, args.rounds) if args.quick else LoopConfig(
        workdir=args.workdir, rounds=args.rounds)
    overrides = {"num_episodes": args.num_episodes, "eval_episodes": args.eval_episodes,
                 "train_steps": args.train_steps, "pointnet": args.pointnet}
    for name, value in overrides.items():
        if value is not None:
            setattr(config, name, value)
    config.supervised = args.supervised
    config.__post_init__()
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from_args(args)
    started_s = time.perf_counter()
    os.makedirs(config.workdir, exist_ok=True)
    connect(num_cpus=args.num_cpus)
    fit = place(replica_groups(config), prog="python -m data_apps.loop", embedded_flag="--num-cpus")
    config.num_cpus_per_sim_worker, config.policy_num_cpus = fit.num_cpus["SimWorker"], fit.num_cpus["Policy"]
    from ray import serve

    port = args.port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    print(f"policy endpoint (after round 1): http://127.0.0.1:{port}{ROUTE_PREFIX}", flush=True)
    pool = SimPool(SimPoolConfig(num_workers=config.num_sim_workers, num_envs_per_worker=config.num_envs_per_worker,
                                 num_cpus_per_worker=config.num_cpus_per_sim_worker),
                   SimConfig(image_size=config.image_size))
    try:
        reports = run_loop(config, pool)
    finally:
        pool.shutdown()
    total_s = time.perf_counter() - started_s
    rates = " -> ".join(f"{report.success_rate:.0%}" for report in reports)
    print(f"loop done: {len(reports)} rounds in {total_s:.1f} s; policy success {rates}; "
          f"report {Path(config.workdir).resolve() / 'loop_report.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
