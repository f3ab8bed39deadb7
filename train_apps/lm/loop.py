"""The per-worker training loop: DeepSpeed ZeRO over Ray Train's process group, resumable anywhere.

    from train_apps.lm_pretrain import train_loop_per_worker   # what TorchTrainer / run_elastic run

Checkpoint state is consolidated so it resumes on any number of workers: full fp32 weights under
HF names, AdamW's exp_avg / exp_avg_sq per parameter (gathered from the ZeRO partitions with
DeepSpeed's `safe_get_full_optimizer_state`, scattered back with `safe_set_full_optimizer_state`),
Adam's step count, and the training step. The data position is the step (the global batch size is
fixed), and the learning rate is a function of the step, so nothing else needs saving.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from runtime.elastic.checkpoint import CheckpointManager
from runtime.elastic.progress import report_step
from train_apps.lm.config import LMTrainConfig
from train_apps.lm.corpus import TokenBatches
from train_apps.lm.model import LlamaForCausalLM

_OPTIMIZER_KEYS = ("exp_avg", "exp_avg_sq")


def deepspeed_config(config: LMTrainConfig, world_size: int) -> dict:
    return {
        "train_batch_size": config.global_batch_size,
        "train_micro_batch_size_per_gpu": config.global_batch_size // world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": config.grad_clip,
        "zero_optimization": {"stage": config.zero_stage},
        "steps_per_print": 10**9,  # the progress line is report_step's job
        "wall_clock_breakdown": False,
    }


def _import_deepspeed():
    if not torch.cuda.is_available():
        # Without this DeepSpeed probes for accelerators and may try to build CUDA ops.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


def _inner_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's ZeRO wrapper (the optimizer itself at stage 0)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _set_adam_step(engine, adam_step: int) -> None:
    for state in _inner_optimizer(engine).state.values():
        state["step"] = torch.tensor(float(adam_step))


def _adam_step(engine) -> int:
    for state in _inner_optimizer(engine).state.values():
        return int(state["step"])
    return 0


def gather_state(engine, step: int) -> dict:
    """Consolidated, world-size-free state (a collective: every rank must call it)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    zero = engine.zero_optimization_stage() > 0
    weights, moments = {}, {key: {} for key in _OPTIMIZER_KEYS}
    for name, param in engine.module.named_parameters():
        if zero:
            weights[name] = safe_get_full_fp32_param(param).detach().cpu()
            for key in _OPTIMIZER_KEYS:
                moments[key][name] = safe_get_full_optimizer_state(param, key).detach().cpu()
        else:
            weights[name] = param.detach().cpu()
            for key in _OPTIMIZER_KEYS:
                moments[key][name] = engine.optimizer.state[param][key].detach().cpu()
    return {"model": weights, "optimizer": {**moments, "adam_step": _adam_step(engine)}, "step": step}


def restore_optimizer(engine, optimizer_state: dict, config: LMTrainConfig) -> None:
    """Scatter consolidated AdamW moments into this world's ZeRO partitions.

    ZeRO creates its optimizer state (and links it to parameters) on the first step, so one step
    with lr 0 and zero gradients creates it without touching the weights; then we overwrite it.
    """
    from deepspeed.utils import safe_set_full_optimizer_state

    dummy = torch.zeros((config.global_batch_size // engine.world_size, 2), dtype=torch.long,
                        device=engine.device)
    for group in engine.optimizer.param_groups:
        group["lr"] = 0.0
    engine.backward(engine(dummy).sum() * 0.0)
    engine.step()
    zero = engine.zero_optimization_stage() > 0
    for name, param in engine.module.named_parameters():
        for key in _OPTIMIZER_KEYS:
            value = optimizer_state[key][name].to(engine.device)
            if zero:
                safe_set_full_optimizer_state(param, value, key)
            else:
                engine.optimizer.state[param][key].copy_(value)
    _set_adam_step(engine, int(optimizer_state["adam_step"]))


def _global_mean(value: torch.Tensor, world_size: int) -> float:
    """The loss over the whole global batch (each rank holds the mean over its own rows)."""
    if world_size == 1:
        return value.item()
    import torch.distributed as dist

    total = value.float().clone()
    dist.all_reduce(total)
    return total.item() / world_size


def train_loop_per_worker(config: dict) -> dict:
    """Train (or resume) the LM; every rank runs this under Ray Train. Returns the final step/loss."""
    import ray.train

    cfg = LMTrainConfig.from_dict(config)
    if not cfg.checkpoint_dir or not cfg.data_dir:
        raise ValueError("train.checkpoint_dir and train.data_dir must be set (see lm_pretrain.prepare_run)")
    deepspeed = _import_deepspeed()
    torch.set_num_threads(cfg.num_threads_per_worker)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if cfg.global_batch_size % world_size:
        raise ValueError(
            f"train.global_batch_size ({cfg.global_batch_size}) must be divisible by the number of workers "
            f"({world_size}); it is fixed across restarts so that the data position is the step"
        )
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")

    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(cfg.model)
    ckpt = CheckpointManager(cfg.checkpoint_dir, keep=cfg.keep_checkpoints, replicate=cfg.replicate_checkpoints)
    restored = ckpt.latest_agreed()  # every rank resumes from the same step (a collective)
    start_step = 0
    if restored is not None:
        start_step, state, metadata = restored
        model.load_state_dict(state["model"])
        if rank == 0:
            print(f"resuming from step {start_step} (saved by {metadata.get('world_size')} workers, "
                  f"now {world_size})", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=model.to(device), optimizer=optimizer, config=deepspeed_config(cfg, world_size),
        dist_init_required=False,
    )
    if restored is not None:
        restore_optimizer(engine, state["optimizer"], cfg)
        del state

    batches = TokenBatches(cfg.data_dir, cfg.seq_len, seed=cfg.seed)
    loss_value = float("nan")
    loss_history: list[list] = []  # [step, global mean loss] of this worker group's steps
    step = start_step
    # compute_s: this rank's own work from the end of the last step's collectives to the first
    # collective of this step (data, forward, loss) - what the supervisor compares to find stragglers.
    local_since_s = time.perf_counter()
    for step in range(start_step + 1, cfg.max_steps + 1):
        for group in engine.optimizer.param_groups:
            group["lr"] = cfg.lr_at(step - 1)
        batch = torch.from_numpy(batches.batch(step - 1, cfg.global_batch_size, rank, world_size)).to(device)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        logits = engine(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        compute_s = time.perf_counter() - local_since_s
        engine.backward(loss)
        engine.step()
        loss_value = _global_mean(loss.detach(), world_size)
        local_since_s = time.perf_counter()
        loss_history.append([step, loss_value])
        report_step(step, loss_value, num_tokens=inputs.numel(), lr=cfg.lr_at(step - 1), compute_s=compute_s)
        if step % cfg.checkpoint_every_steps == 0 or step == cfg.max_steps:
            # The only part training waits for: consolidating the ZeRO partitions and a CPU snapshot.
            started = time.monotonic()
            state = gather_state(engine, step)
            if rank == 0:
                ckpt.save_async(step, state, metadata={
                    "loss": loss_value, "world_size": world_size, "zero_stage": cfg.zero_stage,
                    "time_s": time.time(), "tokens_seen": step * cfg.global_batch_size * cfg.seq_len,
                    "resumed_from_step": start_step, "loss_history": loss_history,
                })
                print(f"checkpoint step {step}: training paused {time.monotonic() - started:.2f} s "
                      "(gather + snapshot); storage and replica writes continue in the background", flush=True)
    if rank == 0:
        ckpt.wait()
    ckpt.close()
    return {"step": step, "loss": loss_value}
