"""The supervisor's in-place recovery decisions (`ElasticConfig(in_place_recovery=True)`).

In this mode Ray Train replaces a dead rank alone into its old placement-group bundle while the
survivors go on without it (`runtime.elastic.peer_group`). Each tier then takes its cheapest path:

- T1 (a rank died, hangs or raised): the rank is marked dead at the Rendezvous (and a hung one is
  killed), the survivors re-form at once, Ray Train starts the replacement in the same bundle.
- T3 node loss: the same, for every rank of the lost node. The GCS reschedules the lost bundles
  onto a healthy node that matches the worker group's label selector (a replacement node, or a
  spare when the group already uses spares); when no such node is there within `_NO_NODE_WAIT_S`,
  or no replacement arrives in time at all, the group is resized instead (a new attempt that takes
  a spare or shrinks). The survivors train on meanwhile.
- T2 (a bad GPU) and T3 on a live node (cordon): the same bundle would put the replacement back on
  the bad GPU or the cordoned node, so the whole group restarts on a new placement. It restarts
  inside the running Ray Train controller (the poll hook in `train_glue` makes it treat the failure as
  a whole-group one), which re-asks the label selector and skips creating a new controller.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from runtime.elastic.tiers import T2
from runtime.health.signals import FaultSignal
from runtime.health.taxonomy import FaultClass

logger = logging.getLogger(__name__)

_REPLACEMENT_TIMEOUT_S = 20.0  # a lost node's ranks must be replaced in place within this
_NO_NODE_WAIT_S = 3.0  # ... and a healthy node able to hold them must show up within this
_DECISION_SETTLE_S = 0.5  # a rank's error and the NVML event that explains it arrive this close together


class InPlaceRecovery:
    """Mixed into ElasticSupervisor; uses its state (`_lock`, `_workers`, `_rendezvous`, `_placement` ...)."""

    _rendezvous: Any
    _peer_ranks: list[int]
    _awaiting_replacement: set[int]
    _whole_restart_pending: bool
    _last_decision_s: float
    _selector_takes_spares: bool  # the running group's label selector admits spare nodes

    # -- enactment ----------------------------------------------------------------------------------
    def _enact_in_place(self, tier: str, signal: FaultSignal, node_id: str | None) -> None:
        """T2/T3 with in-place recovery on and enough capacity for the current group size."""
        if signal.fault_class == FaultClass.NODE_LOSS and node_id:
            lost = [worker for worker in self._workers if worker["node_id"] == node_id]
            self._awaiting_replacement = {worker["rank"] for worker in lost}
            for worker in lost:
                self._mark_dead(worker["rank"], worker["pid"])
            logger.warning("%s: node %s lost; ranks %s continue without %s until Ray replaces them in place",
                           tier, node_id[:8], sorted({w["rank"] for w in self._workers} - self._awaiting_replacement),
                           sorted(self._awaiting_replacement))
            threading.Thread(target=self._watch_replacement, args=(self._attempt, time.monotonic()),
                             name="in-place-replacement", daemon=True).start()
            return
        # A live node: the faulty rank must not come back in its old bundle. Restart the whole group
        # on a new placement, inside the running controller (see wants_whole_group_restart).
        self._whole_restart_pending = True
        self._retired_pids.update(worker["pid"] for worker in self._workers)
        self._kill_workers(node_id=node_id if tier != T2 or signal.rank is None else None, rank=signal.rank)
        logger.warning("%s: restarting the whole group on a new placement (without %s)", tier,
                       f"node {node_id[:8]}" if node_id else f"rank {signal.rank}")

    def _watch_replacement(self, attempt: int, since: float) -> None:
        """Fall back to a resize when the lost ranks are not replaced in place in time."""
        while True:
            time.sleep(0.5)
            with self._lock:
                if attempt != self._attempt or not self._awaiting_replacement or self._stop_report is not None:
                    return
                waited = time.monotonic() - since
                train_slots, spare_slots = self._placement.capacity(self._config.spread)
                slots = train_slots + (spare_slots if self._selector_takes_spares else 0)
                no_node = waited > _NO_NODE_WAIT_S and slots < self._group_size
                if no_node or waited > _REPLACEMENT_TIMEOUT_S:
                    why = "no healthy train node for it" if no_node else f"not replaced within {waited:.0f} s"
                    self._awaiting_replacement = set()
                    self._resize(self._target_size(), f"in-place replacement of a lost node's ranks: {why}")
                    return

    # -- called by Ray Train's controller (SupervisorCallback) -------------------------------------------
    def wants_whole_group_restart(self, attempt: int | None = None) -> bool:
        """The controller saw a failed rank: should it restart every rank rather than replace that one?"""
        settle_until = self._last_decision_s + _DECISION_SETTLE_S
        while not self._whole_restart_pending and time.time() < settle_until:
            time.sleep(0.05)  # an NVML event may be about to explain the error (XID 48 -> T2)
        with self._lock:
            return self._whole_restart_pending and (attempt is None or attempt == self._attempt)

    def reset_rendezvous(self) -> None:
        """A new worker group starts: all its ranks are alive, whatever the previous group's were."""
        if self._rendezvous is not None:
            ray.get(self._rendezvous.reset.remote())

    def replace_workers(self, workers: list[dict], attempt: int | None = None) -> None:
        """Ray Train replaced these ranks alone (in-place recovery); the others kept running."""
        with self._lock:
            if attempt is not None and attempt != self._attempt:
                return
            by_rank = {worker["rank"]: worker for worker in self._workers}
            for worker in workers:
                if worker["rank"] in by_rank:
                    self._retired_pids.add(by_rank[worker["rank"]]["pid"])
                by_rank[worker["rank"]] = worker
                self._awaiting_replacement.discard(worker["rank"])
            self._workers = [by_rank[rank] for rank in sorted(by_rank)]
            self._nodes_history.append([worker["node_id"] for worker in self._workers])
            self._watch_worker_pids()
            if self._whole_restart_pending:  # the controller replaced before the T2/T3 decision reached it
                self._resize(self._target_size(), "a rank was replaced onto the placement being left")
        logger.info("worker group %d: replaced in place %s", self._generation, workers)

    def peer_group_formed(self, epoch: int, ranks: list[int]) -> None:
        """In-place recovery: the ranks formed a new process group (shrunk without a dead rank, or grown back)."""
        with self._lock:
            if not self._whole_restart_pending:
                self._restarting = False
                self._generation += 1
            self._progress.keep_ranks(ranks)
            self._peer_ranks = list(ranks)
        logger.info("peer group epoch %d: ranks %s", epoch, ranks)

    def _mark_dead(self, rank: int | None, pid: int | None) -> None:
        """In-place recovery: the survivors need not wait for `rank`; they go on without it."""
        if self._config.in_place_recovery and self._rendezvous is not None and rank is not None:
            self._rendezvous.mark_dead.remote(rank, pid)

    def _kill_hung_ranks(self) -> None:
        """In-place recovery replaces only the killed ranks, so a hang must kill the rank that hangs.

        Every rank stops stepping when one hangs (the others wait in its collective), so the heartbeat
        alone cannot say which; a stopped process can (SIGSTOP, a debugger). Otherwise all ranks go.
        """
        statuses = {}
        for worker in self._workers:
            agent = self._agents.get(worker["node_id"])
            if agent is not None:
                statuses[worker["rank"]] = agent.process_status.remote(worker["pid"])
        try:
            stopped = [rank for rank, ref in statuses.items() if ray.get(ref, timeout=2.0) == "stopped"]
        except Exception:  # an agent that does not answer: fall back to the whole group
            stopped = []
        for worker in self._workers:
            if not stopped or worker["rank"] in stopped:
                self._kill_workers(node_id=None, rank=worker["rank"])
        logger.warning("hang: killing rank(s) %s", stopped or "all")
