"""ElasticSupervisor: runs a Ray Train V2 TorchTrainer and answers every fault with the right tier.

Ray Train already restarts a failed worker group (FailureConfig) and sizes it elastically
(ScalingConfig(num_workers=(min, max))). It lacks: fast perception (its worker poll is the only
signal; a hang is noticed after 600 s), any notion of a bad GPU, a cordoned node or a spare, and
a way to tell a deterministic bug from a transient fault. The supervisor adds exactly that: it
hears HealthAgents (host + NVML, pushed), step heartbeats and the GCS node table, picks a tier from
`runtime.elastic.tiers`, and enacts it through Ray Train (killing the faulty rank so Ray Train
restarts the group at once, handing a new label selector to the restart, aborting the controller
to resize or stop). Every decision is logged with its signal, tier and latency.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from runtime import metrics
from runtime.elastic.capacity import Capacity
from runtime.elastic.in_place import InPlaceRecovery
from runtime.elastic.placement import Placement, PlacementConfig
from runtime.elastic.records import ElasticResult, FaultRecord
from runtime.elastic.tiers import T0, T1, T2, T3, T4, TIER_NAMES, TierPolicy, TierPolicyConfig
from runtime.health.agent import HealthAgentConfig, start_agents
from runtime.health.progress import ProgressConfig, ProgressSource
from runtime.health.ray_source import RaySource
from runtime.health.signals import FaultSignal
from runtime.health.taxonomy import FaultClass

logger = logging.getLogger(__name__)

# Signals that are expected while a worker group is being torn down on purpose.
_RESTART_NOISE = {FaultClass.PROCESS_DEATH, FaultClass.HANG, FaultClass.STRAGGLER, FaultClass.WORKER_ERROR}
# Two views of one incident (an XID 48 event and the ECC counter it bumps) count once.
_SAME_INCIDENT = {FaultClass.ECC_DBE: FaultClass.XID_DBE}
_DUPLICATE_WINDOW_S = 10.0
# A rank that loses its peer fails in the collective first; the root cause (a dead or hung peer)
# usually arrives within a poll or two, so such errors wait this long before being judged.
_COLLATERAL_MARKERS = ("gloo", "Connection closed", "Connection reset", "NCCL", "ProcessGroup", "Broken pipe")
_COLLATERAL_GRACE_S = 0.5
_RESTART_TIMEOUT_S = 120.0


@dataclass(kw_only=True, slots=True)
class ElasticConfig:
    """How the supervisor sizes, watches and heals one training run."""

    min_workers: int = 1
    max_workers: int = 2
    resources_per_worker: dict = field(default_factory=lambda: {"CPU": 1})
    checkpoint_dir: str
    max_restarts: int = 10
    hang_timeout_s: float | None = None  # None = derived from the observed step time
    hang_timeout_factor: float = 5.0
    hang_timeout_min_s: float = 3.0
    straggler_factor: float = 2.0
    name: str = "strata-elastic"
    role_label: str | None = "strata.io/role"  # node label naming train / spare nodes; None = any node
    gpu_resource: str = "GPU"
    nvml_backend: str = "auto"  # HealthAgent NVML: "auto" (real when a GPU is present), "fake", "none"
    train_poll_interval_s: float = 0.25  # Ray Train's worker poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)
    capacity_wait_s: float = 30.0  # how long to wait for min_workers slots before stopping
    spread: bool = False  # True: one worker per node (SPREAD; the node is the failure domain); False: PACK
    no_progress_limit: int = 2
    # True: a dead or killed rank is replaced alone and the survivors re-form the process group around
    # it with their live state (runtime.elastic.peer_group; the loop must call PeerGroup.form); a lost
    # node's ranks too. T2/T3 on a live node restart the whole group on a new placement
    # (runtime.elastic.in_place).
    in_place_recovery: bool = False

    def __post_init__(self) -> None:
        if self.min_workers < 1:
            raise ValueError(f"elastic.min_workers must be >= 1, got {self.min_workers}")
        if self.max_workers < self.min_workers:
            raise ValueError(f"elastic.max_workers must be >= min_workers ({self.min_workers}), got {self.max_workers}")
        if self.max_restarts < 0:
            raise ValueError(f"elastic.max_restarts must be >= 0, got {self.max_restarts}")
        if self.hang_timeout_s is not None and self.hang_timeout_s <= 0:
            raise ValueError(f"elastic.hang_timeout_s must be > 0 or None, got {self.hang_timeout_s}")
        if not self.checkpoint_dir:
            raise ValueError("elastic.checkpoint_dir must be a path")


@ray.remote(num_cpus=0, max_concurrency=32)
class ElasticSupervisor(Capacity, InPlaceRecovery):
    def __init__(self, train_loop_per_worker: Callable[[dict], Any], train_loop_config: dict, config: ElasticConfig):
        self._loop, self._loop_config, self._config = train_loop_per_worker, train_loop_config, config
        self._lock = threading.RLock()
        self._self = ray.get_runtime_context().current_actor
        self._policy = TierPolicy(TierPolicyConfig(max_restarts=config.max_restarts, no_progress_limit=config.no_progress_limit))
        self._progress = ProgressSource(ProgressConfig(
            hang_timeout_s=config.hang_timeout_s, hang_timeout_factor=config.hang_timeout_factor,
            hang_timeout_min_s=config.hang_timeout_min_s, straggler_factor=config.straggler_factor))
        self._ray_source = RaySource()
        self._placement = Placement(config=PlacementConfig(
            resources_per_worker=config.resources_per_worker, role_label=config.role_label,
            gpu_resource=config.gpu_resource))
        self._agents: dict[str, Any] = {}
        self._controller: Any = None
        self._rendezvous: Any = None  # peer_group.Rendezvous of the current attempt (in-place recovery)
        self._peer_ranks: list[int] = []  # ranks of the latest in-place process group
        self._awaiting_replacement: set[int] = set()  # in-place: ranks of a lost node not replaced yet
        self._whole_restart_pending = False  # in-place: the next failure restarts every rank (new placement)
        self._last_decision_s = 0.0
        self._selector_takes_spares = False
        self._grow_after_recovery = False  # a node joined during a recovery; grow once it has resumed
        self._workers: list[dict] = []  # current group: {"rank", "node_id", "pid"}
        self._group_size = 0
        self._generation = 0
        self._recovering: list[FaultRecord] = []  # decisions waiting for the next completed step
        self._restarting = False  # a restart was decided and the new worker group has not started yet
        # pids of worker groups the supervisor itself retired (restart, resize): their deaths and errors,
        # however late an agent reports them, are the enactment of a decision, not new faults.
        self._retired_pids: set[int] = set()
        self._attempt = 0  # one TorchTrainer.fit() per attempt; a resize starts a new one
        self._restarting_since = 0.0
        self._generation_at_decision = 0
        self._records: list[FaultRecord] = []
        self._recent: dict[tuple, float] = {}  # (class, key) -> last time, to collapse duplicates
        self._last_step = -1
        self._loss_history: list[tuple[float, int, float]] = []
        self._nodes_history: list[list[str]] = []
        self._stop_report: str | None = None
        self._resize_to: int | None = None
        self._done_ranks: set[int] = set()
        self._running = True

    # -- run ------------------------------------------------------------------------------------
    def run(self) -> ElasticResult:
        start_s = time.time()
        self._ray_source.start()
        self._agents = start_agents(self._agent_config(), sink=self._self)
        monitor = threading.Thread(target=self._monitor, name="supervisor-monitor", daemon=True)
        monitor.start()
        attempt, finished = 0, False
        while self._stop_report is None:
            size = self._target_size()
            if size < self._config.min_workers:
                size = self._wait_for_capacity()
                if size < self._config.min_workers:
                    self._stop(f"only {size} healthy worker slots, min_workers={self._config.min_workers}")
                    break
            attempt += 1
            with self._lock:
                self._group_size, self._resize_to, self._controller = size, None, None
                self._attempt = attempt
            try:
                self._make_trainer(size, attempt).fit()
                finished = True
                break
            except Exception as error:  # the controller was aborted (resize/stop) or gave up
                with self._lock:
                    if self._stop_report is None and self._resize_to is None:
                        self._stop(f"Ray Train gave up: {type(error).__name__}: {str(error)[:500]}")
        self._running = False
        monitor.join(timeout=2)
        if self._rendezvous is not None:
            ray.kill(self._rendezvous)
        for agent in self._agents.values():
            agent.stop.remote()
        self._placement.release()
        with self._lock:
            return ElasticResult(
                final_step=self._last_step, faults=list(self._records), stopped=self._stop_report is not None,
                report=self._stop_report, finished=finished, loss_history=list(self._loss_history),
                cordoned_nodes=list(self._placement.cordoned), worker_nodes_history=list(self._nodes_history),
                wall_time_s=time.time() - start_s)

    def _agent_config(self) -> HealthAgentConfig:
        return HealthAgentConfig(nvml_backend=self._config.nvml_backend, checkpoint_dir=self._config.checkpoint_dir)

    def _make_trainer(self, size: int, attempt: int):
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from runtime.elastic.train_glue import SupervisorCallback, supervised_loop

        config = self._config
        # The elastic range's upper end is the healthy capacity the supervisor counted (Ray's own
        # count ignores cordons and label selectors); a larger group needs a new attempt (grow).
        num_workers = (config.min_workers, size) if size > config.min_workers else size
        torch_config = None
        if config.in_place_recovery:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from runtime.elastic.peer_group import PeerGroupTorchConfig, Rendezvous

            if self._rendezvous is not None:
                ray.kill(self._rendezvous)
            self._rendezvous = Rendezvous.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=True)).remote(self._self)
            torch_config = PeerGroupTorchConfig()
        return TorchTrainer(
            supervised_loop(self._loop, self._self, self._rendezvous),
            train_loop_config=self._loop_config,
            torch_config=torch_config,
            scaling_config=ScalingConfig(
                num_workers=num_workers, resources_per_worker=dict(config.resources_per_worker),
                placement_strategy="STRICT_SPREAD" if config.spread else "PACK",
                elastic_resize_monitor_interval_s=1e9),
            run_config=RunConfig(
                name=f"{config.name}-{attempt}", storage_path=os.path.join(config.checkpoint_dir, "ray_train"),
                failure_config=FailureConfig(max_failures=config.max_restarts),
                callbacks=[SupervisorCallback(self._self, attempt, in_place=config.in_place_recovery)]),
        )

    # -- called by Ray Train's controller (SupervisorCallback) ----------------------------------------
    def register_controller(self, controller: Any, attempt: int | None = None) -> None:
        with self._lock:
            if attempt is not None and attempt != self._attempt:
                controller.abort.remote()
                return
            self._controller = controller
            if self._stop_report is not None or self._resize_to is not None:
                controller.abort.remote()

    def placement_label_selector(self, num_workers: int) -> dict:
        if self._config.in_place_recovery:
            self.reset_rendezvous()
        with self._lock:
            selector = self._placement.label_selector(num_workers, self._config.spread)
            role = selector.get(self._config.role_label or "", "")
            self._selector_takes_spares = not role or any(r in role for r in self._placement.config.spare_roles)
            return selector

    def register_workers(self, workers: list[dict], attempt: int | None = None) -> None:
        with self._lock:
            if attempt is not None and attempt != self._attempt:
                return  # a worker group of an attempt being aborted (resize)
            self._retired_pids.update(w["pid"] for w in self._workers)
            self._workers = workers
            # a new group starts whole (a loop of one rank forms no peer group that would say so)
            self._peer_ranks = sorted(worker["rank"] for worker in workers)
            self._restarting = False
            self._whole_restart_pending, self._awaiting_replacement = False, set()
            self._generation += 1
            self._progress.reset()
            self._nodes_history.append([worker["node_id"] for worker in workers])
            self._watch_worker_pids()
        logger.info("worker group %d: %s", self._generation, workers)
        metrics.gauge("strata_elastic_workers_count", "training workers in the current group").set(len(workers))

    def _watch_worker_pids(self) -> None:
        by_node: dict[str, dict[int, int]] = {}
        for worker in self._workers:
            by_node.setdefault(worker["node_id"], {})[worker["rank"]] = worker["pid"]
        for node_id, agent in self._agents.items():
            agent.watch_pids.remote(by_node.get(node_id, {}))

    # -- called by workers (report_step / supervised_loop) ---------------------------------------------
    def heartbeat(self, beat: Any) -> None:
        with self._lock:
            if self._workers and beat.pid not in {worker["pid"] for worker in self._workers}:
                return  # a straggling message from a previous worker group
            self._progress.record(rank=beat.rank, step=beat.step, time_s=beat.time_s, step_time_s=beat.step_time_s,
                                  node_id=beat.node_id, pid=beat.pid, compute_time_s=beat.metrics.get("compute_s"))
            leader = min(self._peer_ranks) if self._peer_ranks else 0  # rank 0 may be the one being replaced
            if beat.rank == leader:
                self._loss_history.append((beat.time_s, beat.step, beat.loss))
                self._last_step = beat.step
            if self._recovering and self._generation > self._generation_at_decision:
                # only a step of the restarted worker group counts (the old group may step once more)
                for record in self._recovering:
                    record.resumed_step, record.recovered_s = beat.step, beat.time_s
                    origin = record.observed_s if record.observed_s is not None else record.detected_s
                    record.mttr_s = beat.time_s - origin
                    if record.step_at_fault is not None:
                        record.steps_lost = max(0, record.step_at_fault - beat.step + 1)
                    metrics.histogram("strata_elastic_mttr_s", "fault -> next completed step", tag_keys=("tier",)).observe(
                        record.mttr_s, tags={"tier": record.tier})
                    logger.info("recovered from %s (%s) in %.2f s at step %d", record.fault_class, record.tier,
                                record.mttr_s, beat.step)
                self._recovering = []
                if self._grow_after_recovery:
                    self._grow_after_recovery = False
                    threading.Thread(target=self._grow_if_capacity, name="grow-back", daemon=True).start()

    def worker_event(self, *, rank: int, fault_class: str, detail: str, step: int | None, signature: str | None,
                     pid: int | None, node_id: str | None, time_s: float | None) -> None:
        signal = FaultSignal(fault_class=fault_class, source="worker", rank=rank, pid=pid, node_id=node_id,
                             observed_s=time_s, detail=detail, data={"signature": signature, "step": step})
        self.on_signals([signal])

    def worker_done(self, rank: int) -> None:
        with self._lock:
            self._done_ranks.add(rank)

    # -- signals ------------------------------------------------------------------------------------
    def on_signals(self, signals: list[FaultSignal]) -> None:
        for signal in signals:
            self._handle(signal)

    def _monitor(self) -> None:
        while self._running:
            time.sleep(0.1)
            signals = self._progress.poll() + self._ray_source.poll()
            for node_id in self._ray_source.added_nodes:
                self._on_node_added(node_id)
            self._ray_source.added_nodes.clear()
            self.on_signals(signals)

    def _handle(self, signal: FaultSignal, deferred: bool = False) -> None:
        detected_s = time.time()
        signature = signal.data.get("signature") or ""
        if (not deferred and signal.fault_class == FaultClass.WORKER_ERROR
                and any(marker in signature + signal.detail for marker in _COLLATERAL_MARKERS)):
            threading.Timer(_COLLATERAL_GRACE_S, self._handle, [signal, True]).start()
            return
        with self._lock:
            if not self._running or self._stop_report is not None:
                return
            if self._done_ranks and signal.fault_class in _RESTART_NOISE:
                return  # workers exit when training finishes
            if self._restarting and time.monotonic() - self._restarting_since > _RESTART_TIMEOUT_S:
                self._restarting = False  # the restart never came (nothing was killed); listen again
            if (self._restarting or self._resize_to is not None) and signal.fault_class in _RESTART_NOISE:
                return  # the group is being restarted or resized; its workers die, error in collectives, stop
            if signal.fault_class in _RESTART_NOISE and signal.pid is not None and signal.pid in self._retired_pids:
                return  # a worker of a group this supervisor already replaced
            if signal.fault_class == FaultClass.PROCESS_DEATH and signal.pid not in {w["pid"] for w in self._workers}:
                return
            dedup_key = (_SAME_INCIDENT.get(signal.fault_class, signal.fault_class), signal.key())
            if detected_s - self._recent.get(dedup_key, 0.0) < _DUPLICATE_WINDOW_S:
                return  # the same fault seen twice (event + counter, or two sources)
            self._recent[dedup_key] = detected_s
            signature = signal.data.get("signature")
            step = signal.data.get("step") if signal.data.get("step") is not None else self._last_step
            decision = self._policy.decide(signal, step, signature)
            self._last_decision_s = detected_s
            record = FaultRecord(
                signal=signal.source, fault_class=signal.fault_class, tier=decision.tier, reason=decision.reason,
                node_id=signal.node_id, rank=signal.rank, observed_s=signal.observed_s, detected_s=signal.detected_s,
                decided_s=detected_s, detection_latency_s=signal.detection_latency_s, step_at_fault=self._last_step,
                detail=signal.detail[-500:])
            self._records.append(record)
            tags = {"fault_class": signal.fault_class, "tier": decision.tier}
            metrics.counter("strata_elastic_faults_total", "faults by class and tier", ("fault_class", "tier")).inc(tags=tags)
            if signal.detection_latency_s is not None:
                metrics.histogram("strata_elastic_detection_latency_s", "fault -> signal latency",
                                  tag_keys=("fault_class", "tier")).observe(signal.detection_latency_s, tags=tags)
            logger.warning("fault %s on node=%s rank=%s -> %s (%s): %s | detection %.3f s", signal.fault_class,
                           (signal.node_id or "")[:8], signal.rank, decision.tier, TIER_NAMES[decision.tier],
                           decision.reason, signal.detection_latency_s or -1.0)
            self._enact(decision.tier, signal, record)

    def _enact(self, tier: str, signal: FaultSignal, record: FaultRecord) -> None:
        if tier == T0:
            return
        if tier == T4:
            self._stop(f"{signal.fault_class} on node {signal.node_id} rank {signal.rank}: {record.reason}\n{signal.detail}")
            return
        self._recovering.append(record)
        self._generation_at_decision = self._generation
        self._restarting, self._restarting_since = True, time.monotonic()
        node_id = signal.node_id or self._node_of_rank(signal.rank)
        if tier == T2 and node_id:
            self._placement.quarantine_gpu(node_id)
        if tier == T3 and node_id:
            self._placement.cordon(node_id, f"{signal.fault_class}: {record.reason}")
            self._ray_source.ignore_drain(node_id)
        train, spare = self._placement.capacity(self._config.spread)
        if self._config.in_place_recovery and tier == T3 and signal.fault_class == FaultClass.NODE_LOSS:
            self._enact_in_place(tier, signal, node_id)  # survivors go on; the lost ranks come back or we resize
            return
        if tier == T3 and train + spare < self._group_size:
            if self._config.in_place_recovery:
                # SIGKILL first: Ray Train's abort gives each worker 5 s to shut down, and a hung one
                # (XID 79) takes all of them. The abort follows before a replacement can be placed.
                self._kill_workers(node_id=node_id, rank=None)
            self._resize(train + spare, f"shrink after losing node {node_id}")
            if self._config.in_place_recovery:
                return
        elif self._config.in_place_recovery and tier in (T2, T3):
            self._enact_in_place(tier, signal, node_id)
            return
        if tier == T1 and signal.fault_class in (FaultClass.PROCESS_DEATH, FaultClass.WORKER_ERROR):
            self._mark_dead(signal.rank, signal.pid)
        if signal.fault_class not in (FaultClass.PROCESS_DEATH, FaultClass.WORKER_ERROR, FaultClass.NODE_LOSS):
            # Ray Train restarts the whole group once any rank dies: kill the faulty rank (a hung one, or
            # every rank on the faulty node) rather than wait for its 600 s health-check timeout.
            by_rank = signal.rank is not None and tier == T1
            if self._config.in_place_recovery and signal.fault_class == FaultClass.HANG:
                self._kill_hung_ranks()
                return
            self._kill_workers(node_id=None if by_rank else node_id, rank=signal.rank if by_rank else 0)

    def _kill_workers(self, node_id: str | None, rank: int | None) -> None:
        """SIGKILL the faulty rank (or every rank on the node) so Ray Train restarts the group now."""
        targets = [w for w in self._workers if (node_id and w["node_id"] == node_id) or (not node_id and w["rank"] == rank)]
        for worker in targets:
            agent = self._agents.get(worker["node_id"])
            if agent is not None:
                agent.kill.remote(worker["pid"])
            self._retired_pids.add(worker["pid"])  # its death is this decision's doing, not a new fault
            self._mark_dead(worker["rank"], worker["pid"])

    def _node_of_rank(self, rank: int | None) -> str | None:
        return next((w["node_id"] for w in self._workers if w["rank"] == rank), None)

    def request_stop(self, reason: str) -> None:
        """End the run from outside (a time-boxed drill, an operator); recorded as a stop with `reason`."""
        with self._lock:
            self._stop(f"requested: {reason}")

    # -- inspection (tests, chaos, benchmarks) ------------------------------------------------------------
    def workers(self) -> list[dict]:
        with self._lock:
            return list(self._workers)

    def agents(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._agents)

    def status(self) -> dict:
        with self._lock:
            return {"step": self._last_step, "generation": self._generation, "group_size": self._group_size,
                    "cordoned": dict(self._placement.cordoned), "num_faults": len(self._records),
                    "recovering": len(self._recovering), "stopped": self._stop_report,
                    "peer_ranks": list(self._peer_ranks)}
