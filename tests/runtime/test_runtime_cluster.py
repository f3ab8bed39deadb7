"""runtime.cluster, runtime.constants and runtime.metrics against the shared local cluster."""

import socket

import pytest
import ray

from runtime import cluster, constants, metrics


def test_connect_reuses_the_running_cluster(ray_local):
    before = ray.get_runtime_context().gcs_address
    info = cluster.connect(num_cpus=99)  # ignored: already connected
    assert info.address == before
    assert info.num_nodes == 1
    assert info.num_cpus == 4
    assert info.embedded


def test_cluster_cpus_of_the_embedded_cluster(ray_local, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = cluster.cluster_cpus("--num-cpus")
    assert (cpus.num_cpus, cpus.embedded, cpus.flag) == (4, True, "--num-cpus")
    # ray.init's autoscaler is read-only (one `node_<id>` type per node): it can add nothing.
    assert cpus.max_num_cpus is None
    assert cluster.cluster_cpus().flag == "STRATA_LOCAL_NUM_CPUS=N"


def test_free_port_is_bindable():
    port = cluster.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_env_getters_name_the_variable(monkeypatch):
    monkeypatch.setenv("STRATA_LOCAL_NUM_CPUS", "3")
    assert constants.local_num_cpus() == 3
    monkeypatch.setenv("STRATA_LOCAL_NUM_CPUS", "three")
    with pytest.raises(ValueError, match="STRATA_LOCAL_NUM_CPUS"):
        constants.local_num_cpus()
    monkeypatch.setenv("STRATA_DASHBOARD", "maybe")
    with pytest.raises(ValueError, match="STRATA_DASHBOARD"):
        constants.include_dashboard()
    monkeypatch.setenv("STRATA_DASHBOARD", "off")
    assert constants.include_dashboard() is False


def test_metric_names_need_prefix_and_unit():
    with pytest.raises(ValueError, match="unit suffix"):
        metrics.counter("strata_requests", "no unit")
    with pytest.raises(ValueError, match="must match"):
        metrics.gauge("requests_total", "no prefix")
    with pytest.raises(ValueError, match="tag keys"):
        metrics.counter("strata_x_total", "too many tags", tag_keys=("a", "b", "c", "d", "e"))


def test_metrics_are_cached_and_recordable_in_workers(ray_local):
    @ray.remote(num_cpus=0)
    def record() -> bool:
        latency = metrics.histogram("strata_test_latency_s", "test latency", tag_keys=("stage",))
        latency.observe(0.2, tags={"stage": "unit"})
        again = metrics.histogram("strata_test_latency_s", "test latency", tag_keys=("stage",))
        metrics.counter("strata_test_events_total", "test events").inc(3)
        metrics.gauge("strata_test_queue_count", "test queue").set(7)
        return latency is again

    assert ray.get(record.remote())


def test_embedded_start_is_retried_once_when_the_node_times_out(monkeypatch):
    from runtime import cluster

    calls = []

    def fake_init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(cluster.ray, "init", fake_init)
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: calls.append("shutdown"))
    cluster._start_embedded(address="local", num_cpus=2)
    assert calls == [{"address": "local", "num_cpus": 2}, "shutdown", {"address": "local", "num_cpus": 2}]

    def other_failure(**kwargs):
        raise Exception("some other start-up failure")

    calls.clear()

    def dashboard_late(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:  # what Ray raises when its dashboard misses the 60 s window: the log's tail
            raise Exception("\nThe last 20 lines of /tmp/ray/session_x/logs/dashboard.log (it contains ...): ")

    monkeypatch.setattr(cluster.ray, "init", dashboard_late)
    cluster._start_embedded(address="local")
    assert calls == [{"address": "local"}, "shutdown", {"address": "local"}]

    monkeypatch.setattr(cluster.ray, "init", other_failure)
    with pytest.raises(Exception, match="some other"):
        cluster._start_embedded(address="local")
