"""runtime.placement_fit: replicas against a cluster's CPUs, without Ray."""

import math

import pytest

from runtime.placement_fit import ClusterCpus, PlacementError, ReplicaGroup, fit_replicas

FLAG = "--num-cpus-per-replica"


def _pd(num_cpus: float, *, fixed: bool = False, models: tuple[str, ...] = ("m",)) -> list[ReplicaGroup]:
    groups = [ReplicaGroup(name="OpenAiIngress", count=1, num_cpus=0.25)]
    for model in models:
        groups += [ReplicaGroup(name=f"Prefill:{model}", count=1, num_cpus=num_cpus, flag=FLAG, fixed=fixed),
                   ReplicaGroup(name=f"Decode:{model}", count=1, num_cpus=num_cpus, flag=FLAG, fixed=fixed)]
    return groups


def _embedded(num_cpus: float) -> ClusterCpus:
    return ClusterCpus(num_cpus=num_cpus, embedded=True, flag="STRATA_LOCAL_NUM_CPUS=N")


def test_asks_that_fit_are_kept_as_asked():
    fit = fit_replicas(_pd(1.0), _embedded(4))
    assert fit.num_cpus == {"OpenAiIngress": 0.25, "Prefill:m": 1.0, "Decode:m": 1.0}
    assert fit.message.startswith("placement: 3 replicas need 2.25 of 4 CPUs")


def test_defaults_on_an_embedded_cluster_are_water_filled_small_asks_whole():
    fit = fit_replicas(_pd(1.0), _embedded(2))
    # 1.75 left for two engine replicas: 0.875 each, rounded down to the 0.05 step.
    assert fit.num_cpus == {"OpenAiIngress": 0.25, "Prefill:m": 0.85, "Decode:m": 0.85}
    assert sum(fit.num_cpus.values()) <= 2
    assert "fitted 3 replicas into 2 CPUs (asked 2.25)" in fit.message
    assert "Prefill:m 0.85" in fit.message


def test_replica_counts_share_the_level():
    groups = [ReplicaGroup(name="SimWorker", count=2, num_cpus=0.5), ReplicaGroup(name="Policy", count=1, num_cpus=0.5),
              ReplicaGroup(name="train worker", count=1, num_cpus=1.0, fixed=True)]
    fit = fit_replicas(groups, _embedded(2))
    assert fit.num_cpus == {"SimWorker": 0.3, "Policy": 0.3, "train worker": 1.0}
    assert "SimWorker 2x0.3" in fit.message


def test_explicit_flag_that_does_not_fit_an_embedded_cluster_names_needed_available_and_the_flag():
    with pytest.raises(PlacementError) as error:
        fit_replicas(_pd(0.5, fixed=True, models=("a", "b")), _embedded(2))
    message = str(error.value)
    assert "need 2.25 CPUs but the embedded cluster has 2" in message
    assert f"lower {FLAG}" in message and "STRATA_LOCAL_NUM_CPUS=N" in message
    assert "\n" not in message


def test_too_many_replicas_to_shrink_is_an_error():
    groups = [ReplicaGroup(name="Decode:m", count=50, num_cpus=1.0, flag="--num-decode")]
    with pytest.raises(PlacementError, match="need 50 CPUs but the embedded cluster has 2"):
        fit_replicas(groups, _embedded(2))


def test_real_cluster_never_shrinks_and_names_every_flag():
    cluster = ClusterCpus(num_cpus=2, embedded=False)
    with pytest.raises(PlacementError) as error:
        fit_replicas(_pd(1.0), cluster)
    message = str(error.value)
    assert "need 2.25 CPUs but the cluster has 2 and no autoscaler can add nodes" in message
    assert f"lower {FLAG}, or add nodes" in message


def test_real_cluster_with_an_autoscaler_deploys_as_asked_up_to_its_limit():
    unlimited = fit_replicas(_pd(1.0), ClusterCpus(num_cpus=2, embedded=False, max_num_cpus=math.inf))
    assert unlimited.num_cpus["Prefill:m"] == 1.0
    assert "its autoscaler may add nodes" in unlimited.message
    limited = ClusterCpus(num_cpus=2, embedded=False, max_num_cpus=2.0)
    with pytest.raises(PlacementError, match="its autoscaler can grow it to only 2"):
        fit_replicas(_pd(1.0), limited)


def test_fixed_groups_without_a_flag_point_at_the_cluster_size():
    groups = [ReplicaGroup(name="Ray Data task", count=1, num_cpus=1.0, fixed=True),
              ReplicaGroup(name="train worker", count=1, num_cpus=1.0, fixed=True),
              ReplicaGroup(name="SimWorker", count=2, num_cpus=0.5)]
    with pytest.raises(PlacementError, match=r"has 2; give it more CPUs with --num-cpus$"):
        fit_replicas(groups, ClusterCpus(num_cpus=2, embedded=True, flag="--num-cpus"))


def test_group_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        fit_replicas([ReplicaGroup(name="a", count=1, num_cpus=1)] * 2, _embedded(2))
