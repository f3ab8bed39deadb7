"""CheckpointManager: asynchronous, atomic, checksummed checkpoints with an in-memory replica.

    ckpt = CheckpointManager(checkpoint_dir, keep=3, replicate=True)
    ckpt.save_async(step, {"model": state_dict, "step": step}, metadata={"loss": 2.1})
    step, state, metadata = ckpt.latest()   # replica first, then the newest disk checkpoint that verifies
    ckpt.wait()                             # flush pending saves

What Ray Train lacks and this adds: `ray.train.report(checkpoint=...)` is synchronous (every rank
waits for the upload), has no checksums, and restores from storage only. Here the caller pays
only for a CPU snapshot; a background thread serializes, sends the blobs to the replica actor on
another node through the object store, and writes temp dir + fsync + rename + manifest to disk. A
failed save (full disk, crash) leaves the previous checkpoint as the latest and is logged loudly.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runtime.elastic import checkpoint_format as fmt
from runtime.elastic import checkpoint_replica as replica
from runtime.elastic.progress import report_event
from runtime.health.taxonomy import FaultClass

logger = logging.getLogger(__name__)

_REPLICA_TIMEOUT_S = 30.0
_STALE_TEMP_DIR_S = 600.0
# A quota'd volume with no room left; `runtime.chaos.inject.fill_disk` writes it, HostSource reads it.
DISK_FULL_MARKER = ".strata_disk_full"


@dataclass(kw_only=True, slots=True)
class SaveFailure:
    step: int
    error: str


def _snapshot(value: Any) -> Any:
    """A copy the training loop may keep mutating: tensors are detached CPU clones."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_snapshot(item) for item in value]
    return value


class CheckpointManager:
    """Saves and restores one run's checkpoints under checkpoint_dir (rank 0 saves; any rank restores)."""

    def __init__(self, checkpoint_dir: str, keep: int = 3, replicate: bool = True) -> None:
        if not checkpoint_dir:
            raise ValueError("checkpoint.checkpoint_dir must be a non-empty path")
        if keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
        self.checkpoint_dir = os.path.abspath(checkpoint_dir)
        self.keep = keep
        self.replicate = replicate
        if replicate:
            import ray

            if not ray.is_initialized():
                logger.warning("checkpoint: replicate=True ignored because Ray is not initialized")
                self.replicate = False
        # Test hook: how the disk writer opens files (simulate a full disk or a crash mid-save).
        self.open_file: fmt.OpenFile = open
        self.failures: list[SaveFailure] = []
        self.saved_steps: list[int] = []
        self._pending: tuple[int, dict, dict | None] | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # ---- saving ----------------------------------------------------------------------------------
    def save_async(self, step: int, state: dict, metadata: dict | None = None) -> None:
        """Snapshot state now and persist it in the background; returns as soon as the snapshot exists.

        If an older save is still queued (not yet started), it is superseded by this one: storage
        slower than the save interval costs checkpoints, never training time.
        """
        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        snapshot = _snapshot(state)
        with self._cond:
            if self._closed:
                raise RuntimeError("CheckpointManager is closed")
            if self._pending is not None:
                logger.warning("checkpoint step %d superseded by step %d before it was written", self._pending[0], step)
            self._pending = (step, snapshot, dict(metadata or {}))
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
                self._thread.start()

    def save(self, step: int, state: dict, metadata: dict | None = None) -> bool:
        """Synchronous save; True when the disk copy was committed."""
        self.save_async(step, state, metadata)
        self.wait()
        return step in self.saved_steps

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until every pending save has finished (committed or failed); False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._pending is not None or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self) -> None:
        self.wait()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                step, state, metadata = self._pending
                self._pending = None
                self._busy = True
            try:
                self._write(step, state, metadata)
            except Exception as error:  # the writer thread must outlive one bad save
                logger.exception("checkpoint step %d NOT saved: %s", step, error)
                self.failures.append(SaveFailure(step=step, error=f"{type(error).__name__}: {error}"))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, step: int, state: dict, metadata: dict) -> None:
        started = time.monotonic()
        blobs = fmt.encode_state(step, state, metadata)
        # The replica put and the disk write run in parallel; neither waits for the other.
        replica_put = self._start_replica_put(blobs) if self.replicate else None
        try:
            if os.path.exists(os.path.join(self.checkpoint_dir, DISK_FULL_MARKER)):
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (quota marker {DISK_FULL_MARKER})",
                              self.checkpoint_dir)
            path = fmt.write_atomic(self.checkpoint_dir, blobs, open_file=self.open_file)
        except OSError as error:
            previous = self._newest_disk_step()
            message = (
                f"checkpoint step {step} NOT saved to {self.checkpoint_dir}: {error}; "
                f"the latest checkpoint on disk stays step {previous}"
            )
            logger.error(message)
            self.failures.append(SaveFailure(step=step, error=message))
            _count_failure()
            if error.errno == errno.ENOSPC:
                report_event(FaultClass.DISK_FULL, message, step=step)
            self._finish_replica_put(replica_put, step)
            return
        self._finish_replica_put(replica_put, step)
        self.saved_steps.append(step)
        self._prune()
        logger.info(
            "checkpoint step %d saved: %s (%.1f MB, %.2f s)", step, path, blobs.num_bytes / 1e6,
            time.monotonic() - started,
        )

    def _start_replica_put(self, blobs: fmt.CheckpointBlobs):
        import ray

        try:
            return replica.get_or_create_replica(self.checkpoint_dir).put.remote(blobs)
        except (ray.exceptions.RayError, ValueError) as error:
            logger.warning("checkpoint step %d: in-memory replica not updated: %s", blobs.step, error)
            return None

    def _finish_replica_put(self, put_ref, step: int) -> None:
        if put_ref is None:
            return
        import ray

        try:
            ray.get(put_ref, timeout=_REPLICA_TIMEOUT_S)
        except (ray.exceptions.RayError, ValueError) as error:
            # The replica is an accelerator for recovery; storage stays the source of truth.
            logger.warning("checkpoint step %d: in-memory replica not updated: %s", step, error)

    def _prune(self) -> None:
        for step in fmt.list_steps(self.checkpoint_dir)[self.keep:]:
            shutil.rmtree(os.path.join(self.checkpoint_dir, fmt.step_dir_name(step)), ignore_errors=True)
        fmt.remove_stale_temp_dirs(self.checkpoint_dir, older_than_s=_STALE_TEMP_DIR_S)

    # ---- restoring -------------------------------------------------------------------------------
    def latest(self) -> tuple[int, dict, dict] | None:
        """(step, state, metadata) of the newest good checkpoint, or None when there is none.

        The in-memory replica wins when it is at least as new as the newest disk checkpoint; every
        candidate is verified against its manifest, and a corrupt one is skipped (logged).
        """
        blobs = self.latest_blobs()
        if blobs is None:
            return None
        state, metadata = fmt.decode_state(blobs)
        return blobs.step, state, metadata

    def latest_blobs(self) -> fmt.CheckpointBlobs | None:
        disk_steps = fmt.list_steps(self.checkpoint_dir)
        from_replica = self._replica_blobs()
        if from_replica is not None and (not disk_steps or from_replica.step >= disk_steps[0]):
            try:
                fmt.verify(from_replica)
            except fmt.CheckpointCorruptError as error:
                logger.error("checkpoint: in-memory replica is corrupt, using storage: %s", error)
                _report_corrupt(f"in-memory replica: {error}")
            else:
                logger.info("checkpoint: restoring step %d from the in-memory replica", from_replica.step)
                if disk_steps and disk_steps[0] == from_replica.step:
                    self._repair_disk_copy(from_replica)
                return from_replica
        for step in disk_steps:
            path = os.path.join(self.checkpoint_dir, fmt.step_dir_name(step))
            try:
                blobs = fmt.read_blobs(path)
            except (fmt.CheckpointCorruptError, OSError) as error:
                logger.error("checkpoint: skipping corrupt checkpoint %s: %s", path, error)
                _report_corrupt(f"{path}: {error}")
                continue
            logger.info("checkpoint: restoring step %d from %s", step, path)
            return blobs
        return None

    def _repair_disk_copy(self, good: fmt.CheckpointBlobs) -> None:
        """The disk copy of the replica's step is checked too: if storage corrupted it, rewrite it."""
        path = os.path.join(self.checkpoint_dir, fmt.step_dir_name(good.step))
        try:
            fmt.read_blobs(path)
            return
        except (fmt.CheckpointCorruptError, OSError) as error:
            logger.error("checkpoint: disk copy %s is corrupt (%s); rewriting it from the replica", path, error)
            _report_corrupt(f"{path}: {error} (repaired from the in-memory replica)")
        try:
            fmt.write_atomic(self.checkpoint_dir, good, open_file=self.open_file)
        except OSError as error:  # e.g. another rank repaired it at the same moment, or the disk is full
            logger.warning("checkpoint: could not rewrite %s: %s", path, error)

    def _replica_blobs(self) -> fmt.CheckpointBlobs | None:
        if not self.replicate:
            return None
        import ray

        actor = replica.find_replica(self.checkpoint_dir)
        if actor is None:
            return None
        try:
            return ray.get(actor.get.remote(), timeout=_REPLICA_TIMEOUT_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as error:
            logger.warning("checkpoint: in-memory replica unavailable, using storage: %s", error)
            return None

    def _newest_disk_step(self) -> int | None:
        steps = fmt.list_steps(self.checkpoint_dir)
        return steps[0] if steps else None

    def drop_replica(self) -> bool:
        """Release the replica's memory (end of run)."""
        return self.replicate and replica.drop_replica(self.checkpoint_dir)


def _count_failure() -> None:
    import ray

    from runtime import metrics

    if ray.is_initialized():
        metrics.counter("strata_checkpoint_save_failures_total", "checkpoint saves that failed").inc()


def _report_corrupt(detail: str) -> None:
    import ray

    from runtime import metrics

    report_event(FaultClass.CHECKPOINT_CORRUPT, detail)
    if ray.is_initialized():
        metrics.counter("strata_checkpoint_corrupt_total", "corrupt checkpoints skipped on restore").inc()
