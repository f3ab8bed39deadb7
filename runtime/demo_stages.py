"""The demo's smoke stages: Ray Data, Ray Train and Ray Serve each touched once on the shared cluster."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from dataclasses import dataclass

import numpy as np
import ray


@dataclass(kw_only=True, slots=True)
class StageResult:
    name: str
    status: str
    seconds: float
    detail: str


def data_stage(*, workdir: str, gcs_address: str) -> str:
    """Ray Data: a streaming map_batches pipeline over synthetic depth frames."""
    num_frames = 2_000

    def depth_to_mean_range(batch: dict) -> dict:
        depth = batch["id"].astype(np.float32)[:, None] * np.ones((1, 64 * 64), np.float32)
        return {"mean_depth": depth.mean(axis=1)}

    dataset = ray.data.range(num_frames, override_num_blocks=8).map_batches(depth_to_mean_range)
    total = dataset.sum("mean_depth")
    expected = num_frames * (num_frames - 1) / 2
    if abs(total - expected) > 1e-3 * expected:
        raise RuntimeError(f"data stage computed {total}, expected {expected}")
    return f"{num_frames} frames through map_batches, checksum ok"


def _train_loop(config: dict) -> None:
    import torch
    from ray import train

    torch.manual_seed(0)
    weights = torch.tensor([2.0, -3.0, 0.5])
    model = torch.nn.Linear(3, 1)
    model = train.torch.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(config["steps"]):
        inputs = torch.randn(64, 3)
        targets = inputs @ weights[:, None]
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Train V2 keeps metrics with checkpoints only, so the last report carries one (model weights).
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        if train.get_context().get_world_rank() == 0:
            torch.save(model.state_dict(), os.path.join(checkpoint_dir, "model.pt"))
        checkpoint = train.Checkpoint.from_directory(checkpoint_dir)
        train.report({"step": config["steps"], "loss": loss.item()}, checkpoint=checkpoint)


def train_stage(*, workdir: str, gcs_address: str) -> str:
    """Ray Train: a 2-worker TorchTrainer (gloo) on a regression problem."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"steps": 40},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="strata-demo-train", storage_path=os.path.join(workdir, "ray_results")),
    )
    result = trainer.fit()
    loss = result.metrics["loss"]
    if not loss < 0.1:
        raise RuntimeError(f"train stage did not converge: loss {loss}")
    return f"2 workers, 40 steps, final loss {loss:.4f}"


def serve_stage(*, workdir: str, gcs_address: str) -> str:
    """Ray Serve: deploy a small model behind HTTP, query it, tear it down."""
    from ray import serve

    from runtime.cluster import free_port

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    class Doubler:
        async def __call__(self, request) -> dict:
            body = await request.json()
            return {"doubled": [2 * x for x in body["values"]]}

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Doubler.bind(), name="strata-demo", route_prefix="/double")
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/double",
            data=json.dumps({"values": [1, 2, 3]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    finally:
        serve.shutdown()
    if answer != {"doubled": [2, 4, 6]}:
        raise RuntimeError(f"serve stage got {answer}")
    return f"HTTP on :{port} answered {answer['doubled']}"


SMOKE_STAGES = {
    "data": data_stage,
    "train": train_stage,
    "serve": serve_stage,
}
