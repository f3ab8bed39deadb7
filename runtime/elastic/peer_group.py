"""In-place recovery: when a rank dies, the survivors go on without it at once and take its replacement back.

Ray Train restarts the whole worker group when any worker dies: every rank's process is recreated,
re-imports torch, re-forms the process group and re-reads the checkpoint, and the steps since that
checkpoint are lost. Ray Train 2.60 also knows *replica groups* (it uses them for torchft): a backend
with `has_replica_groups = True` makes it replace only the failing group. `PeerGroupTorchConfig` is
such a backend, one worker per replica group, that leaves the torch process group to the loop:

    group = peer_group.current()                   # set by the supervisor's loop wrapper
    step, state = group.form(step=start_step, state=None)    # first formation (fresh or resumed)
    while ...:
        try:
            resumed = group.regroup_if_joining(step, live_state)  # a replacement is ready: take it in
            ... shard by group.group_rank / group.group_size; dist.all_reduce(...) ...
        except Exception as error:
            if not group.is_peer_failure(error):
                raise
            step, state = group.form(step=step, state=live_state())  # a peer died: go on without it

A survivor whose collective fails joins the `Rendezvous` actor's next epoch. The epoch forms as soon as
every rank not reported dead has joined (the supervisor reports deaths within a fraction of a second),
so the survivors continue *shrunk* right away on a fresh gloo group (a new TCPStore on the epoch's
first rank), with their live state: no restart, no checkpoint read, no step lost. Meanwhile Ray Train
starts the replacement; it joins the following epoch, which the survivors enter at a step boundary
(all of them at the same step: the leader's "someone is waiting" flag is all-reduced), and it receives
the live state by broadcast from the most advanced rank.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.train.torch.config import TorchConfig, _TorchBackend

logger = logging.getLogger(__name__)

# Messages torch/gloo raise on the surviving ranks when a peer process dies or its sockets close.
_PEER_FAILURE_MARKERS = ("Connection closed", "Connection reset", "Broken pipe", "gloo", "Gloo", "ECONNRESET",
                         "Timed out", "timed out", "DistNetworkError", "DistStoreError", "NCCL")


class RunFinished(Exception):
    """Raised by PeerGroup.form in a replacement that arrives after the others finished training:
    there is nobody left to join, and nothing left to do (the loop wrapper returns normally)."""


class _PeerGroupBackend(_TorchBackend):
    """Each worker its own replica group; the loop forms the cross-rank process group itself."""

    has_replica_groups: bool = True

    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        pass  # the loop calls PeerGroup.form()

    def on_shutdown(self, worker_group: Any, backend_config: Any) -> None:
        pass  # a process group of dead peers is abandoned, not torn down collectively


class PeerGroupTorchConfig(TorchConfig):
    """TorchTrainer(torch_config=PeerGroupTorchConfig()): Ray Train replaces only a dead worker."""

    @property
    def backend_cls(self):
        return _PeerGroupBackend


@ray.remote(num_cpus=0)
class Rendezvous:
    """Epochs of one worker group. An epoch forms when every rank not reported dead has joined it."""

    def __init__(self, supervisor: Any = None):
        self._supervisor = supervisor
        self._epoch = 0
        self._world_size: int | None = None
        self._joined: dict[int, int] = {}  # rank -> last completed step, for the epoch being formed
        self._pids: dict[int, int] = {}  # rank -> pid of its latest join
        self._dead: set[int] = set()
        self._formed: dict[int, dict[int, int]] = {}
        self._stores: dict[int, tuple[str, int]] = {}
        self._finished = False  # some rank completed training: later joiners have nobody to wait for
        self._changed = asyncio.Condition()

    async def join(self, rank: int, world_size: int, step: int, pid: int) -> tuple[int, dict[int, int]]:
        """Block until the epoch forms; returns (epoch, {member rank: step}), or (-1, {}) once the run
        has finished (a rank completed training) and the epoch can no longer form."""
        async with self._changed:
            if self._finished:
                return -1, {}
            self._world_size = world_size
            epoch = self._epoch
            self._joined[rank], self._pids[rank] = step, pid
            self._dead.discard(rank)  # a replacement (or a survivor) of this rank is alive
            self._maybe_form()
            await self._changed.wait_for(lambda: self._epoch > epoch or self._finished)
            if self._epoch > epoch:
                return epoch, self._formed[epoch]
            return -1, {}

    async def finish(self) -> None:
        """A rank completed training: release every rank still waiting to join (RunFinished)."""
        async with self._changed:
            self._finished = True
            self._changed.notify_all()

    async def mark_dead(self, rank: int, pid: int | None = None) -> None:
        """The supervisor saw `rank` die (or killed it): the next epoch forms without it."""
        async with self._changed:
            if pid is None or self._pids.get(rank) in (None, pid):
                self._dead.add(rank)
                self._joined.pop(rank, None)
                self._maybe_form()

    def _maybe_form(self) -> None:
        if self._world_size is None or not self._joined:
            return
        expected = set(range(self._world_size)) - self._dead
        if not expected <= set(self._joined):
            return
        epoch, members = self._epoch, dict(self._joined)
        self._formed[epoch], self._joined = members, {}
        self._epoch += 1
        self._changed.notify_all()
        if self._supervisor is not None:
            self._supervisor.peer_group_formed.remote(epoch, sorted(members))

    async def reset(self) -> None:
        """A new worker group starts: forget the previous group's dead ranks and half-formed epoch."""
        async with self._changed:
            self._dead.clear()
            self._joined.clear()

    def has_joiners(self) -> bool:
        """True when some rank waits for the next epoch (a replacement is ready)."""
        return bool(self._joined)

    async def publish_store(self, epoch: int, address: str, port: int) -> None:
        async with self._changed:
            self._stores[epoch] = (address, port)
            self._changed.notify_all()

    async def store_address(self, epoch: int) -> tuple[str, int]:
        async with self._changed:
            await self._changed.wait_for(lambda: epoch in self._stores)
            return self._stores[epoch]


class PeerGroup:
    """This rank's view of the re-formable process group (one per worker process).

    `rank`/`world_size` are the Ray Train rank and world; `group_rank`/`group_size` the current epoch's
    (smaller while a replacement is on its way): shard data and average gradients by the latter.
    """

    def __init__(self, rendezvous: Any, rank: int, world_size: int, timeout_s: float = 60.0):
        self.rendezvous, self.rank, self.world_size, self.timeout_s = rendezvous, rank, world_size, timeout_s
        self.epoch: int | None = None
        self.group_rank, self.group_size = rank, world_size
        self._store: Any = None

    @staticmethod
    def is_peer_failure(error: BaseException) -> bool:
        """True when `error` is what a collective raises after a peer died (not a bug in the loop)."""
        text = f"{type(error).__name__}: {error}"
        return isinstance(error, (RuntimeError, ConnectionError, TimeoutError)) and any(
            marker in text for marker in _PEER_FAILURE_MARKERS)

    def form(self, *, step: int, state: Any | None) -> tuple[int, Any | None]:
        """Join the next epoch; returns (step, state) to continue from.

        `step` is this rank's last completed step, `state` what it would hand a replacement (None on a
        first formation: nothing live yet). When some member holds state, every member receives the
        (step, state) of the most advanced one, so all continue from the same point; otherwise (a fresh
        start) each keeps its own.
        """
        import torch.distributed as dist

        began = time.monotonic()
        timeout = datetime.timedelta(seconds=self.timeout_s)
        reported = step if state is not None else -1  # only a rank holding state can be a source
        epoch, steps = ray.get(self.rendezvous.join.remote(self.rank, self.world_size, reported, os.getpid()),
                               timeout=self.timeout_s)
        if epoch < 0:
            raise RunFinished(f"rank {self.rank}: the other ranks finished training before this one joined")
        members = sorted(steps)
        self.group_rank, self.group_size = members.index(self.rank), len(members)
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.group_rank == 0:
            address = ray.util.get_node_ip_address()
            self._store = dist.TCPStore(address, 0, self.group_size, True, timeout=timeout, wait_for_workers=False)
            ray.get(self.rendezvous.publish_store.remote(epoch, address, self._store.port))
        else:
            address, port = ray.get(self.rendezvous.store_address.remote(epoch), timeout=self.timeout_s)
            self._store = dist.TCPStore(address, port, self.group_size, False, timeout=timeout)
        dist.init_process_group("gloo", store=dist.PrefixStore(f"epoch{epoch}", self._store),
                                rank=self.group_rank, world_size=self.group_size, timeout=timeout)
        self.epoch = epoch
        source = max(members, key=lambda rank: (steps[rank], -rank))
        if steps[source] < 0:
            return step, state  # a fresh start: every rank loads what it loads (checkpoint or init)
        payload = [(step, state)] if self.rank == source else [None]
        dist.broadcast_object_list(payload, src=members.index(source))
        resumed_step, resumed_state = payload[0]
        logger.warning("rank %d: peer group epoch %d of %d ranks %s formed in %.2f s; continuing at step %d "
                       "(state of rank %d)", self.rank, epoch, self.group_size, members, time.monotonic() - began,
                       resumed_step, source)
        return resumed_step, resumed_state

    def regroup_if_joining(self, step: int, live_state: Callable[[], Any]) -> tuple[int, Any | None] | None:
        """At a step boundary: when a replacement waits to join, all members re-form with it (same step)."""
        import torch
        import torch.distributed as dist

        if self.group_size == self.world_size:
            return None  # nobody is missing
        waiting = int(ray.get(self.rendezvous.has_joiners.remote())) if self.group_rank == 0 else 0
        flag = torch.tensor([waiting], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not flag.item():
            return None
        return self.form(step=step, state=live_state())


_CURRENT: PeerGroup | None = None


def install(rendezvous: Any, rank: int, world_size: int) -> PeerGroup:
    """Set this worker's PeerGroup (the supervisor's loop wrapper does it when in-place recovery is on)."""
    global _CURRENT
    _CURRENT = PeerGroup(rendezvous, rank, world_size)
    return _CURRENT


def current() -> PeerGroup | None:
    """This worker's PeerGroup, or None when the run does not use in-place recovery."""
    return _CURRENT
