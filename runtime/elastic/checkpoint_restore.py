"""Where one process can restore from: the in-memory replica (read once) and the disk copies, each verified.

A damaged checkpoint (bad checksum, damaged or missing manifest, a step that disagrees with its
directory) is skipped with one error line naming the file and the reason, and reported as
CHECKPOINT_CORRUPT; the next older one is tried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from runtime.elastic import checkpoint_format as fmt
from runtime.elastic import checkpoint_replica as replica
from runtime.elastic.progress import report_event
from runtime.health.taxonomy import FaultClass

logger = logging.getLogger(__name__)

REPLICA_SOURCE = "in-memory replica"


@dataclass(kw_only=True, slots=True)
class Loadable:
    """A verified checkpoint and where it came from (REPLICA_SOURCE or its directory)."""

    blobs: fmt.CheckpointBlobs
    source: str

    @property
    def from_replica(self) -> bool:
        return self.source == REPLICA_SOURCE


class RestoreSources:
    """One restore's view of a checkpoint_dir: the replica is fetched once, each damaged copy logged once."""

    def __init__(self, checkpoint_dir: str, *, replicate: bool, replica_timeout_s: float) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.num_damaged = 0
        self._replica = _read_replica(checkpoint_dir, replica_timeout_s) if replicate else None
        self._damaged: set[str] = set()

    def newest(self, at_most: int | None = None) -> Loadable | None:
        """The newest loadable checkpoint whose step is <= at_most (any step when None), or None.

        The replica wins over a disk copy of the same step (no disk read); a newer disk copy wins
        over the replica.
        """
        held = self._replica
        if held is not None and at_most is not None and held.step > at_most:
            held = None
        for step, path in fmt.list_checkpoint_dirs(self.checkpoint_dir):
            if at_most is not None and step > at_most:
                continue
            if held is not None and held.step >= step:
                break
            if path in self._damaged:
                continue
            try:
                return Loadable(blobs=fmt.read_blobs(path), source=path)
            except (fmt.CheckpointCorruptError, OSError) as error:
                self._damaged.add(path)
                self.num_damaged += 1
                logger.error("checkpoint: skipping corrupt checkpoint %s: %s", path, error)
                report_corrupt(f"{path}: {error}")
        return Loadable(blobs=held, source=REPLICA_SOURCE) if held is not None else None


def _read_replica(checkpoint_dir: str, timeout_s: float) -> fmt.CheckpointBlobs | None:
    import ray

    actor = replica.find_replica(checkpoint_dir)
    if actor is None:
        return None
    try:
        blobs = ray.get(actor.get.remote(), timeout=timeout_s)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as error:
        logger.warning("checkpoint: in-memory replica unavailable, using storage: %s", error)
        return None
    if blobs is None:
        return None
    try:
        fmt.verify(blobs)
    except fmt.CheckpointCorruptError as error:
        logger.error("checkpoint: in-memory replica is corrupt, using storage: %s", error)
        report_corrupt(f"{REPLICA_SOURCE}: {error}")
        return None
    return blobs


def repair_disk_copy(checkpoint_dir: str, good: fmt.CheckpointBlobs, open_file: fmt.OpenFile) -> bool:
    """Rewrite the disk copy of good.step from `good` when it fails its check; True when rewritten.

    A step with no disk copy is left alone (its save failed; the next save writes a newer one).
    """
    found = dict(fmt.list_checkpoint_dirs(checkpoint_dir)).get(good.step)
    if found is None:
        return False
    try:
        fmt.read_blobs(found)
        return False
    except (fmt.CheckpointCorruptError, OSError) as error:
        logger.error("checkpoint: disk copy %s is corrupt (%s); rewriting it from the replica", found, error)
        report_corrupt(f"{found}: {error} (repaired from the in-memory replica)")
    try:
        fmt.write_atomic(checkpoint_dir, good, open_file=open_file)
    except OSError as error:  # e.g. the disk is full
        logger.warning("checkpoint: could not rewrite %s: %s", found, error)
        return False
    return True


def report_corrupt(detail: str) -> None:
    import ray

    from runtime import metrics

    report_event(FaultClass.CHECKPOINT_CORRUPT, detail)
    if ray.is_initialized():
        metrics.counter("strata_checkpoint_corrupt_total", "corrupt checkpoints skipped on restore").inc()
