"""Pretrain a small Llama LM with DeepSpeed ZeRO under Ray Train and export it in HF format.

    python -m train_apps.lm_pretrain --output /tmp/lm_default [--preset default|tiny|bench]
        [--num-workers 2] [--zero-stage 2] [--max-steps S] [--checkpoint-dir D]
        [--supervised/--no-supervised] [--use-gpu]
    ray job submit --working-dir . -- python -m train_apps.lm_pretrain --output /mnt/shared/lm_default \\
        --checkpoint-dir /mnt/shared/lm_ckpt --data-dir /mnt/shared/lm_data

The corpus is the Python standard library's sources (offline everywhere); the BPE tokenizer is
trained on it with `tokenizers`. Training resumes from the newest checkpoint in --checkpoint-dir,
on any number of workers. The output directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) loads in transformers and is served by `python -m serve_apps.llm --model DIR`.
Checkpoint and data dirs must be on storage every worker sees (one machine: any local path).

For other code (supervisor tests, the fault drill): `train_loop_per_worker(config_dict)` is the
loop, `prepare_run(tiny_config(), workdir)` returns a ready `train_loop_config` dict.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from train_apps.lm.config import PRESETS, LMTrainConfig, bench_config, default_config, tiny_config
from train_apps.lm.corpus import prepare_data
from train_apps.lm.loop import train_loop_per_worker

__all__ = [
    "LMTrainConfig", "bench_config", "default_config", "export_latest", "prepare_run", "tiny_config",
    "train", "train_loop_per_worker",
]

logger = logging.getLogger(__name__)


def prepare_run(config: LMTrainConfig, workdir: str, *, data_root: str | None = None, **overrides) -> dict:
    """Prepare the corpus/tokenizer and return the `train_loop_config` dict for `train_loop_per_worker`.

    Checkpoints go to workdir/checkpoints unless `checkpoint_dir` is overridden; tokenized data is
    cached under data_root (default workdir/data).
    """
    config = config.with_overrides(**overrides)
    if not config.checkpoint_dir:
        config.checkpoint_dir = os.path.join(workdir, "checkpoints")
    config.data_dir = prepare_data(config.corpus, data_root or os.path.join(workdir, "data"))
    from tokenizers import Tokenizer

    vocab_size = Tokenizer.from_file(os.path.join(config.data_dir, "tokenizer.json")).get_vocab_size()
    if vocab_size > config.model.vocab_size:
        raise ValueError(f"model.vocab_size ({config.model.vocab_size}) < tokenizer vocab ({vocab_size})")
    return config.to_dict()


def train(train_loop_config: dict, *, num_workers: int, supervised: bool, max_failures: int = 3):
    """Run the loop on num_workers Ray Train workers (under the ElasticSupervisor when supervised)."""
    config = LMTrainConfig.from_dict(train_loop_config)
    resources = {"CPU": config.num_threads_per_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    if supervised:
        from runtime.elastic import ElasticConfig, run_elastic

        return run_elastic(train_loop_per_worker, train_loop_config, ElasticConfig(
            min_workers=1, max_workers=num_workers, resources_per_worker=resources,
            checkpoint_dir=config.checkpoint_dir, max_restarts=max_failures, name="lm_pretrain",
        ))
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    checkpoint_root = os.path.abspath(config.checkpoint_dir)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=train_loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=RunConfig(
            name=f"{os.path.basename(checkpoint_root)}_ray_train",
            storage_path=os.path.dirname(checkpoint_root),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()


def export_latest(train_loop_config: dict, output_dir: str) -> tuple[int, dict]:
    """Export the newest good checkpoint as an HF model directory; returns (step, metadata)."""
    from runtime.elastic.checkpoint import CheckpointManager
    from train_apps.lm.export import export_hf

    config = LMTrainConfig.from_dict(train_loop_config)
    restored = CheckpointManager(config.checkpoint_dir, replicate=config.replicate_checkpoints).latest()
    if restored is None:
        raise RuntimeError(f"no checkpoint to export in {config.checkpoint_dir}")
    step, state, metadata = restored
    export_hf(state["model"], config.model, os.path.join(config.data_dir, "tokenizer.json"), output_dir,
              training_info={"step": step, **metadata, "train_config": train_loop_config})
    return step, metadata


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train_apps.lm_pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="HF model directory to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--checkpoint-dir", default=None, help="default: OUTPUT.checkpoints")
    parser.add_argument("--data-dir", default=None, help="tokenized-corpus cache (default ~/.cache/strata)")
    parser.add_argument("--checkpoint-every-steps", type=int, default=None)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL (GPU nodes)")
    parser.add_argument("--supervised", action=argparse.BooleanOptionalAction, default=True,
                        help="run under the ElasticSupervisor (default) or a plain TorchTrainer")
    parser.add_argument("--max-failures", type=int, default=3)
    args = parser.parse_args(argv)
    if args.num_workers < 1:
        parser.error(f"--num-workers must be >= 1, got {args.num_workers}")
    return args


def _place_workers(args: argparse.Namespace) -> None:
    """Check the worker group against the cluster's CPUs before Ray Train waits on it. Supervised runs
    are elastic (ElasticConfig min_workers=1): they start with the workers that fit and grow."""
    from runtime.cluster import cluster_cpus, place
    from runtime.placement_fit import PlacementError, ReplicaGroup, fit_replicas

    workers = ReplicaGroup(name="train worker", count=args.num_workers, num_cpus=args.threads_per_worker,
                           flag="--num-workers or --threads-per-worker", fixed=True)
    if args.supervised:
        try:
            print(fit_replicas([workers], cluster_cpus()).message, file=sys.stderr, flush=True)
            return
        except PlacementError:
            workers = ReplicaGroup(name="train worker (elastic minimum)", count=1, num_cpus=args.threads_per_worker,
                                   flag="--threads-per-worker", fixed=True)
    place([workers], prog="python -m train_apps.lm_pretrain")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parse_args(argv)
    from runtime.cluster import connect

    config = PRESETS[args.preset]()
    overrides = {"zero_stage": args.zero_stage, "num_threads_per_worker": args.threads_per_worker,
                 "use_gpu": args.use_gpu,
                 "checkpoint_dir": args.checkpoint_dir or f"{args.output.rstrip('/')}.checkpoints"}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.checkpoint_every_steps is not None:
        overrides["checkpoint_every_steps"] = args.checkpoint_every_steps
    started = time.monotonic()
    connect(num_cpus=max(2, args.num_workers * args.threads_per_worker))
    _place_workers(args)  # before the corpus, so a cluster too small says so in seconds
    data_root = args.data_dir or os.path.join(os.path.expanduser("~"), ".cache", "strata")
    data_started = time.monotonic()
    train_loop_config = prepare_run(config, os.path.dirname(os.path.abspath(args.output)), data_root=data_root,
                                    **overrides)
    print(f"data ready in {time.monotonic() - data_started:.1f} s: {train_loop_config['data_dir']}", flush=True)
    result = train(train_loop_config, num_workers=args.num_workers, supervised=args.supervised,
                   max_failures=args.max_failures)
    for fault in getattr(result, "faults", []):
        print(f"fault {fault.fault_class} (rank {fault.rank}) -> tier {fault.tier}: detected in "
              f"{_seconds(fault.detection_latency_s)}, next step after {_seconds(fault.mttr_s)}, "
              f"steps lost {fault.steps_lost}", flush=True)
    if getattr(result, "stopped", False):
        print(f"training stopped by the supervisor:\n{result.report}", file=sys.stderr)
    step, metadata = export_latest(train_loop_config, args.output)
    from runtime.elastic.checkpoint import CheckpointManager

    CheckpointManager(train_loop_config["checkpoint_dir"]).drop_replica()  # the disk copy stays
    print(f"exported step {step} (loss {metadata.get('loss', float('nan')):.3f}) to {args.output} "
          f"in {time.monotonic() - started:.0f} s total", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
