"""A tiny data-parallel training loop for chaos tests and drills: pure torch, gloo, checkpoints, report_step.

It fits a small MLP to a fixed random regression target, so the loss falls steadily and a resume
from the wrong step is visible. Checkpoints are atomic (tmp + rename) with a sha256 manifest; a
corrupt newest checkpoint is skipped and reported (`report_event("checkpoint_corrupt")`). The state
is consolidated (full model + optimizer), so it resumes on any number of workers.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil
import time

import torch

from runtime.elastic.progress import report_event, report_step
from runtime.health.taxonomy import FaultClass

_ASIDE_SUFFIX = ".aside"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(directory: str, step: int, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    final = os.path.join(directory, f"step_{step:08d}")
    tmp = final + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "state.pt"), "wb") as file:
        file.write(data)
    with open(os.path.join(tmp, "manifest.json"), "w") as file:
        json.dump({"step": step, "files": {"state.pt": _sha256(data)}}, file)
    aside = final + _ASIDE_SUFFIX
    if os.path.exists(final):  # re-saving a step after resuming past a corrupt copy of it: set the old one aside,
        shutil.rmtree(aside, ignore_errors=True)  # so a kill before the rename below still leaves this step
        os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)
    for old in sorted(glob.glob(os.path.join(directory, "step_*[0-9]")))[:-3]:
        shutil.rmtree(old)


def _checkpoint_dirs(directory: str) -> list[tuple[int, str]]:
    """(step, path), newest first: the step directories, and a copy set aside by a re-save that did not finish."""
    found: dict[int, str] = {}
    for path in glob.glob(os.path.join(directory, "step_*")):
        name = os.path.basename(path)
        digits = name.removeprefix("step_").removesuffix(_ASIDE_SUFFIX)
        if not digits.isdigit() or name.endswith(".tmp"):
            continue
        if name.endswith(_ASIDE_SUFFIX) and int(digits) in found:
            continue
        found[int(digits)] = path
    return sorted(found.items(), reverse=True)


def _manifest_problem(manifest: object, step: int) -> str | None:
    if not isinstance(manifest, dict):
        return f"manifest is a {type(manifest).__name__}, not an object"
    if manifest.get("step") != step:
        return f"manifest step {manifest.get('step')!r} is not the directory's step {step}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(files.get("state.pt"), str):
        return "manifest has no sha256 for state.pt under 'files'"
    return None


def load_latest_checkpoint(directory: str, report: bool = True) -> tuple[int, dict] | None:
    for step, path in _checkpoint_dirs(directory):
        try:
            with open(os.path.join(path, "manifest.json"), "rb") as file:
                manifest = json.loads(file.read())  # bytes: a flipped byte is a ValueError, not a crash
            with open(os.path.join(path, "state.pt"), "rb") as file:
                data = file.read()
            problem = _manifest_problem(manifest, step)
        except (OSError, ValueError) as error:
            problem = str(error)
        if problem is None and _sha256(data) != manifest["files"]["state.pt"]:
            problem = "checksum mismatch"
        if problem is not None:
            if report:
                report_event(FaultClass.CHECKPOINT_CORRUPT, f"{path}: {problem}, using the previous one")
            continue
        return step, torch.load(io.BytesIO(data), weights_only=True)
    return None


def toy_train_loop(config: dict) -> None:
    """Ray Train worker loop. config: checkpoint_dir, max_steps, checkpoint_every, step_sleep_s, lr,
    bug_at_step (raise a deterministic error there), seed.

    Under in-place recovery (`peer_group.current()` set) the loop forms its own process group; when a
    peer dies mid-collective the survivors re-form without it and go on from their live state, and
    take its replacement back in at a step boundary."""
    import ray.train
    import torch.distributed as dist

    from runtime.elastic import peer_group

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.get("seed", 0))
    inputs = torch.randn(512, 16)
    targets = torch.sin(inputs @ torch.randn(16, 1))
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.get("lr", 0.05), momentum=0.9)
    start_step = 0
    directory = config["checkpoint_dir"]
    os.makedirs(directory, exist_ok=True)
    restored = load_latest_checkpoint(directory, report=rank == 0)
    if restored is not None:
        start_step, state = restored
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    group = peer_group.current() if world_size > 1 else None

    def live_state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    def adopt(resumed: tuple[int, dict | None]) -> int:
        step, state = resumed
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        return step

    if group is not None:
        start_step = adopt(group.form(step=start_step, state=None))
    distributed = group is not None or (dist.is_available() and dist.is_initialized() and world_size > 1)
    # compute_s: this rank's own time between two collectives (includes anything slowing it down,
    # excludes waiting for slower peers inside all_reduce) - what straggler detection compares.
    last_sync_s = time.perf_counter()
    step = start_step
    while step < config.get("max_steps", 100):
        if config.get("bug_at_step") == step + 1:
            raise ValueError(f"deterministic bug at step {step + 1}")
        try:
            if group is not None:
                joined = group.regroup_if_joining(step, live_state)  # a replacement is ready: take it in
                if joined is not None:
                    step = adopt(joined)
            # The whole batch every step: sharded over the ranks of the moment (fewer while one is replaced).
            shard_rank, shard_count = (group.group_rank, group.group_size) if group else (rank, world_size)
            shard = inputs[shard_rank::shard_count], targets[shard_rank::shard_count]
            loss = torch.nn.functional.mse_loss(model(shard[0]), shard[1])
            optimizer.zero_grad()
            loss.backward()
            time.sleep(config.get("step_sleep_s", 0.05))  # stands in for a real step's compute
            compute_s = time.perf_counter() - last_sync_s
            if distributed:
                for parameter in model.parameters():
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= shard_count
        except Exception as error:
            if group is None or not group.is_peer_failure(error):
                raise
            step = adopt(group.form(step=step, state=live_state()))  # a peer died: go on without it
            last_sync_s = time.perf_counter()
            continue
        last_sync_s = time.perf_counter()
        optimizer.step()
        step += 1
        leader = group.group_rank == 0 if group is not None else rank == 0
        if leader and step % config.get("checkpoint_every", 5) == 0:
            save_checkpoint(directory, step, live_state())
        report_step(step, loss.item(), num_tokens=len(shard[0]), compute_s=compute_s)
