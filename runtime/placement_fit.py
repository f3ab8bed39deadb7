"""Does an app's set of replicas fit the cluster's CPUs? Fit them (embedded cluster) or say why not.

Ray schedules a replica only where its `num_cpus` is free and waits forever otherwise (Serve logs
"taken more than 30s to be scheduled", the app prints nothing). Ray has no up-front check for a
whole application against the cluster (Ray Train v2 checks one worker group, and only against an
autoscaler's reported node groups), so every app CLI runs its replicas through `fit_replicas`
before deploying. Pure: no Ray import; `runtime.cluster.cluster_cpus()` reads the cluster.

Words: a *group* is a set of identical replicas/actors/workers (a Serve deployment, the sim
workers, a Ray Train worker group); *fixed* groups get exactly what they ask for; the others may
be shrunk, on an embedded cluster only, to an equal share (water-filling: small asks stay whole).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CPU_STEP = 0.05  # fitted shares are rounded down to this, and are never smaller
_EPSILON = 1e-9


class PlacementError(ValueError):
    """The replicas cannot be placed; the message names CPUs needed and available and what to change."""


@dataclass(frozen=True, slots=True)
class ReplicaGroup:
    name: str  # the deployment or actor name an operator sees ("Prefill:strata-lm", "SimWorker")
    count: int  # replicas alive at the same time
    num_cpus: float  # CPUs each asks for
    flag: str | None = None  # the option that sets num_cpus or count, named in errors
    fixed: bool = False  # the user set num_cpus explicitly, or the app cannot run it on less

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"{self.name}: count must be >= 0, got {self.count}")
        if self.num_cpus < 0:
            raise ValueError(f"{self.name}: num_cpus must be >= 0, got {self.num_cpus}")


@dataclass(frozen=True, slots=True)
class ClusterCpus:
    num_cpus: float  # logical CPUs the cluster has now
    embedded: bool  # started by this process (no RAY_ADDRESS): its replicas may be shrunk to fit
    max_num_cpus: float | None = None  # what an autoscaler may grow it to (inf: no stated limit); None: no autoscaler
    flag: str | None = None  # what sizes an embedded cluster ("--num-cpus", "STRATA_LOCAL_NUM_CPUS")


@dataclass(frozen=True, slots=True)
class Fit:
    num_cpus: dict[str, float]  # group name -> CPUs each of its replicas should ask for
    message: str  # one line for the operator


def fit_replicas(groups: Sequence[ReplicaGroup], cluster: ClusterCpus) -> Fit:
    """Per-group CPU asks that fit `cluster`, or a PlacementError naming needed, available and the flags."""
    names = [group.name for group in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"replica group names must be unique, got {names}")
    needed = _total(groups)
    asked = {group.name: group.num_cpus for group in groups}
    replicas = sum(group.count for group in groups)
    if needed <= cluster.num_cpus + _EPSILON:
        return Fit(num_cpus=asked, message=f"placement: {_plural(replicas)} {_need(replicas)} {needed:g} of "
                                            f"{cluster.num_cpus:g} CPUs ({_describe(groups, asked)})")
    if not cluster.embedded:
        if cluster.max_num_cpus is not None and needed <= cluster.max_num_cpus + _EPSILON:
            limit = "" if math.isinf(cluster.max_num_cpus) else f" (up to {cluster.max_num_cpus:g} CPUs)"
            return Fit(num_cpus=asked, message=f"placement: {_plural(replicas)} {_need(replicas)} {needed:g} CPUs, "
                                                f"the cluster has {cluster.num_cpus:g} now; its autoscaler may add "
                                                f"nodes{limit} ({_describe(groups, asked)})")
        raise PlacementError(_not_enough(groups, cluster, needed, asked))
    fitted = _water_fill(groups, cluster.num_cpus)
    if fitted is None:
        raise PlacementError(_not_enough(groups, cluster, needed, asked))
    return Fit(num_cpus=fitted, message=f"placement: fitted {_plural(replicas)} into "
                                        f"{cluster.num_cpus:g} CPUs (asked {needed:g}): {_describe(groups, fitted)}")


def _water_fill(groups: Sequence[ReplicaGroup], capacity: float) -> dict[str, float] | None:
    """Fixed groups whole; the rest get min(ask, level) with the level as high as capacity allows."""
    fitted = {group.name: group.num_cpus for group in groups if group.fixed}
    remaining = capacity - _total([group for group in groups if group.fixed])
    shrinkable = sorted((group for group in groups if not group.fixed and group.count), key=lambda g: g.num_cpus)
    fitted.update({group.name: group.num_cpus for group in groups if not group.fixed and not group.count})
    left = sum(group.count for group in shrinkable)
    for index, group in enumerate(shrinkable):
        share = remaining / left if left else 0.0
        if group.num_cpus <= share + _EPSILON:
            fitted[group.name] = group.num_cpus
            remaining -= group.count * group.num_cpus
            left -= group.count
            continue
        level = math.floor(share / CPU_STEP + _EPSILON) * CPU_STEP
        if level < CPU_STEP - _EPSILON:
            return None
        for rest in shrinkable[index:]:
            fitted[rest.name] = round(level, 2)
        break
    return fitted if remaining >= -_EPSILON else None


def _not_enough(groups: Sequence[ReplicaGroup], cluster: ClusterCpus, needed: float, asked: dict) -> str:
    if cluster.embedded:
        kept = list(dict.fromkeys(group.flag for group in groups if group.fixed and group.flag))
        where = f"the embedded cluster has {cluster.num_cpus:g}" + (f" and {', '.join(kept)} is kept as given" if kept else "")
        more = f"give it more CPUs with {cluster.flag}" if cluster.flag else "give it more CPUs"
    else:
        kept = list(dict.fromkeys(group.flag for group in groups if group.flag))
        grow = ("no autoscaler can add nodes" if cluster.max_num_cpus is None
                else f"its autoscaler can grow it to only {cluster.max_num_cpus:g}")
        where = f"the cluster has {cluster.num_cpus:g} and {grow}"
        more = "add nodes"
    change = f"lower {' or '.join(kept)}, or {more}" if kept else more
    replicas = sum(group.count for group in groups)
    return f"{_plural(replicas)} ({_describe(groups, asked)}) {_need(replicas)} {needed:g} CPUs but {where}; {change}"


def _total(groups: Sequence[ReplicaGroup]) -> float:
    return sum(group.count * group.num_cpus for group in groups)


def _describe(groups: Sequence[ReplicaGroup], num_cpus: dict[str, float]) -> str:
    parts = []
    for group in groups:
        cpus = num_cpus[group.name]
        parts.append(f"{group.name} {group.count}x{cpus:g}" if group.count != 1 else f"{group.name} {cpus:g}")
    return ", ".join(parts) + " CPU"


def _plural(count: int) -> str:
    return "1 replica" if count == 1 else f"{count} replicas"


def _need(count: int) -> str:
    return "needs" if count == 1 else "need"
