"""CheckpointManager: asynchronous, atomic, checksummed checkpoints with an in-memory replica.

    ckpt = CheckpointManager(checkpoint_dir, keep=3, replicate=True)
    ckpt.save_async(step, {"model": state_dict, "step": step}, metadata={"loss": 2.1})
    step, state, metadata = ckpt.latest()   # replica first, then the newest disk checkpoint that verifies
    restored = ckpt.latest_agreed()         # on every rank of a process group: all get the same step
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
from runtime.elastic.checkpoint_restore import Loadable, RestoreSources, repair_disk_copy
from runtime.elastic.progress import report_event
from runtime.elastic.restore_agreement import NO_CHECKPOINT, agree_on_restore_step, is_deciding_rank
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
        self.repaired_steps: list[int] = []  # steps whose damaged disk copy a restore rewrote from the replica
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
        for _, path in fmt.list_checkpoint_dirs(self.checkpoint_dir)[self.keep:]:
            shutil.rmtree(path, ignore_errors=True)
        fmt.remove_superseded_aside_dirs(self.checkpoint_dir)
        fmt.remove_stale_temp_dirs(self.checkpoint_dir, older_than_s=_STALE_TEMP_DIR_S)

    # ---- restoring -------------------------------------------------------------------------------
    def latest(self) -> tuple[int, dict, dict] | None:
        """(step, state, metadata) of the newest good checkpoint this process can load, or None.

        For one process (an export, a tool). Ranks of a process group call `latest_agreed` instead.
        The in-memory replica wins when it is at least as new as the newest good disk copy; every
        candidate is verified, and a damaged one is skipped (logged, reported). None - no checkpoint,
        or none that is good - means training starts from step 0.
        """
        sources = self._sources()
        found = sources.newest()
        return self._load(found, sources, repair=True)

    def latest_agreed(self) -> tuple[int, dict, dict] | None:
        """`latest()` for every rank of the default process group at once (a collective): all ranks get
        the same step, the newest that every rank can load; only rank 0 repairs a disk copy."""
        sources = self._sources()
        held: list[Loadable | None] = [None]

        def propose(at_most: int | None) -> int:
            held[0] = sources.newest(at_most)
            return NO_CHECKPOINT if held[0] is None else held[0].blobs.step

        step = agree_on_restore_step(propose)
        found = held[0]
        assert (found is None) == (step == NO_CHECKPOINT) and (found is None or found.blobs.step == step)
        return self._load(found, sources, repair=is_deciding_rank())

    def _sources(self) -> RestoreSources:
        return RestoreSources(self.checkpoint_dir, replicate=self.replicate, replica_timeout_s=_REPLICA_TIMEOUT_S)

    def _load(self, found: Loadable | None, sources: RestoreSources, *, repair: bool) -> tuple[int, dict, dict] | None:
        if found is None:
            if sources.num_damaged:
                logger.error("checkpoint: no good checkpoint in %s (%d damaged, skipped); none to restore",
                             self.checkpoint_dir, sources.num_damaged)
            return None
        logger.info("checkpoint: restoring step %d from %s", found.blobs.step, found.source)
        if repair and found.from_replica and repair_disk_copy(self.checkpoint_dir, found.blobs, self.open_file):
            self.repaired_steps.append(found.blobs.step)
        state, metadata = fmt.decode_state(found.blobs)
        return found.blobs.step, state, metadata

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
