"""Train a behaviour-cloning robot policy (state MLP or PointNet) on a LeRobot v3 dataset with Ray Train.

    python -m train_apps.policy_train --dataset DIR --output CKPT_DIR [--kind state_mlp|pointnet]
        [--max-steps 2000] [--batch-size 256] [--num-workers 1] [--no-supervised] [--num-cpus 2]
    ray job submit --working-dir . -- python -m train_apps.policy_train --dataset data/sim_pick --output ckpt/pick

Each worker reads the dataset's frame rows with Ray Data (state, action and point clouds from the
LeRobot data files), fits the input normalization, and regresses actions with MSE; gradients are
averaged across workers by DDP. It runs under the ElasticSupervisor (step heartbeats via
report_step, resume from the newest step checkpoint after a restart) unless --no-supervised.
The result is one safetensors file, CKPT_DIR/policy.safetensors, that serve_apps.policy loads.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

POLICY_FILE = "policy.safetensors"


@dataclass(kw_only=True, slots=True)
class PolicyTrainConfig:
    dataset: str
    output_dir: str
    kind: str = "state_mlp"
    max_steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden_sizes: tuple[int, ...] = (256, 256)
    num_points: int = 128
    checkpoint_every: int = 500
    seed: int = 0
    num_workers: int = 1
    num_threads_per_worker: int = 1
    supervised: bool = True
    version: str = ""  # written into the checkpoint; default: output_dir's name + step
    max_restarts: int = 3
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("state_mlp", "pointnet"):
            raise ValueError(f"policy_train.kind must be 'state_mlp' or 'pointnet', got {self.kind!r}")
        for name in ("max_steps", "batch_size", "num_workers", "checkpoint_every", "num_threads_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"policy_train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"policy_train.lr must be > 0, got {self.lr}")
        self.hidden_sizes = tuple(self.hidden_sizes)


@dataclass(kw_only=True, slots=True)
class PolicyTrainResult:
    checkpoint: str
    version: str
    final_loss: float
    num_frames: int
    num_steps: int
    wall_s: float
    num_restarts: int = 0


def load_training_arrays(dataset: str, with_points: bool):
    """(states, actions, points or None) as numpy arrays, read through Ray Data from the LeRobot data files."""
    import numpy as np
    import ray.data

    from runtime.robot import schema

    columns = [schema.STATE, schema.ACTION] + ([schema.POINTCLOUD] if with_points else [])
    files = sorted(glob.glob(os.path.join(dataset, "data", "chunk-*", "file-*.parquet")))
    if not files:
        raise FileNotFoundError(f"{dataset} has no LeRobot data files (data/chunk-*/file-*.parquet)")
    parts = {column: [] for column in columns}
    for batch in ray.data.read_parquet(files, columns=columns).iter_batches(batch_size=4096, batch_format="pyarrow"):
        for column in columns:
            values = batch.column(column).combine_chunks()
            parts[column].append(values.flatten().to_numpy().reshape(len(values), -1))
    stacked = {column: np.concatenate(chunks).astype(np.float32) for column, chunks in parts.items()}
    points = stacked[schema.POINTCLOUD].reshape(len(stacked[schema.POINTCLOUD]), -1, 3) if with_points else None
    return stacked[schema.STATE], stacked[schema.ACTION], points


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: BC regression with DDP; rank 0 writes step checkpoints and the final policy."""
    import numpy as np
    import ray.train
    import torch

    from runtime.elastic import report_step
    from runtime.robot.policy import PolicyConfig, build_policy, load_policy, save_policy

    cfg = PolicyTrainConfig(**config)
    torch.set_num_threads(cfg.num_threads_per_worker)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    states, actions, points = load_training_arrays(cfg.dataset, cfg.kind == "pointnet")
    torch.manual_seed(cfg.seed)
    model = build_policy(PolicyConfig(kind=cfg.kind, state_dim=states.shape[1], action_dim=actions.shape[1],
                                      hidden_sizes=cfg.hidden_sizes, num_points=cfg.num_points))
    states_t, actions_t = torch.from_numpy(states), torch.from_numpy(actions)
    points_t = None if points is None else torch.from_numpy(points)
    model.fit_normalization(states_t, points_t)
    step_dir = os.path.join(cfg.output_dir, "steps")
    start_step = 0
    latest = _latest_step_checkpoint(step_dir)
    if latest is not None:  # restarted by the supervisor or Ray Train: continue where rank 0 saved
        restored, info = load_policy(latest[1])
        model.load_state_dict(restored.state_dict())
        start_step = latest[0]
    trained = ray.train.torch.prepare_model(model) if world_size > 1 else model
    optimizer = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed * 1000 + rank + start_step)
    recent: list[float] = []
    for step in range(start_step + 1, cfg.max_steps + 1):
        for group in optimizer.param_groups:  # cosine decay, restart-safe (a function of the step)
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / cfg.max_steps))
        index = torch.from_numpy(rng.integers(0, len(states_t), size=cfg.batch_size))
        batch_points = None if points_t is None else points_t[index]
        loss = torch.nn.functional.mse_loss(trained(states_t[index], batch_points), actions_t[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent = (recent + [loss.item()])[-100:]
        report_step(step, loss.item(), num_tokens=cfg.batch_size)
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
            metadata = {"step": step, "train_loss": float(np.mean(recent)), "num_frames": len(states_t),
                        "dataset": cfg.dataset, "world_size": world_size}
            version = cfg.version or f"{os.path.basename(os.path.abspath(cfg.output_dir))}-step{step}"
            save_policy(model, os.path.join(step_dir, f"step-{step:08d}.safetensors"), version=version,
                        metadata=metadata)
            if step == cfg.max_steps:
                save_policy(model, os.path.join(cfg.output_dir, POLICY_FILE), version=version, metadata=metadata)
    ray.train.report({"loss": float(np.mean(recent)) if recent else float("nan")})


def _latest_step_checkpoint(step_dir: str) -> tuple[int, str] | None:
    paths = sorted(glob.glob(os.path.join(step_dir, "step-*.safetensors")))
    if not paths:
        return None
    path = paths[-1]
    return int(os.path.basename(path)[len("step-") : -len(".safetensors")]), path


def train_policy(config: PolicyTrainConfig) -> PolicyTrainResult:
    """Train to config.max_steps (under the ElasticSupervisor when config.supervised); returns the policy."""
    from runtime.robot.policy import read_policy_info

    started_s = time.perf_counter()
    config.output_dir = os.path.abspath(config.output_dir)
    config.dataset = os.path.abspath(config.dataset)
    os.makedirs(config.output_dir, exist_ok=True)
    loop_config = asdict(config)
    resources = {"CPU": config.num_threads_per_worker}
    num_restarts = 0
    if config.supervised:
        from runtime.elastic import ElasticConfig, run_elastic

        result = run_elastic(train_loop_per_worker, loop_config, ElasticConfig(
            min_workers=1, max_workers=config.num_workers, resources_per_worker=resources,
            checkpoint_dir=os.path.join(config.output_dir, "steps"), max_restarts=config.max_restarts,
            name="policy_train", spread=False, nvml_backend="none",
        ))
        if result.stopped:
            raise RuntimeError(f"policy training stopped by the supervisor: {result.report}")
        num_restarts = len(result.faults)
    else:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=config.num_workers, resources_per_worker=resources),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name="policy_train", storage_path=os.path.join(config.output_dir, "ray_train"),
                                 failure_config=FailureConfig(max_failures=config.max_restarts)),
        ).fit()
    checkpoint = os.path.join(config.output_dir, POLICY_FILE)
    info = read_policy_info(checkpoint)
    return PolicyTrainResult(
        checkpoint=checkpoint, version=info.version, final_loss=float(info.metadata["train_loss"]),
        num_frames=int(info.metadata["num_frames"]), num_steps=int(info.metadata["step"]),
        wall_s=time.perf_counter() - started_s, num_restarts=num_restarts,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train_apps.policy_train", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="LeRobot v3.0 dataset directory")
    parser.add_argument("--output", required=True, help="directory for policy.safetensors and step checkpoints")
    parser.add_argument("--kind", default="state_mlp", choices=("state_mlp", "pointnet"))
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--supervised", action=argparse.BooleanOptionalAction, default=True,
                        help="run under the ElasticSupervisor (default) or a plain TorchTrainer")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of an embedded cluster")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from runtime.cluster import connect

    args = parse_args(argv)
    connect(num_cpus=args.num_cpus)
    result = train_policy(PolicyTrainConfig(
        dataset=args.dataset, output_dir=args.output, kind=args.kind, max_steps=args.max_steps,
        batch_size=args.batch_size, lr=args.lr, num_workers=args.num_workers, supervised=args.supervised,
    ))
    print(f"trained {result.version}: loss {result.final_loss:.5f} on {result.num_frames} frames, "
          f"{result.num_steps} steps, {result.wall_s:.1f} s -> {result.checkpoint}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
