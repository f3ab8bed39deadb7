"""serve_apps.policy under bad and oversize input, on a real Serve app over HTTP and handles: a malformed
observation fails only its own request (not the batch it would have joined), limits answer 413, and a
replica with no checkpoint yet answers 503 with Retry-After."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fakes.serve_llm_apps import ensure_ray, run_apps, start_serve
from helpers.robot_loop_policies import constant_policy
from ray import serve
from ray.serve.context import _get_global_client

from serve_apps.policy import PolicyAppArgs, build_policy_app, deploy_policy
from serve_apps.policy.observation import PolicyRequestError

pytestmark = pytest.mark.ray_cluster  # every test here serves through a Serve app its fixtures start

APP = "policy-unloaded-test"
ROUTE = "/policy-unloaded-test"
BATCH = 8
GOOD = {"state": [0.0] * 28}
NAN_STATE = b'{"state": [' + b"0.0, " * 27 + b"NaN]}"


def _url(route: str) -> str:
    return f"http://127.0.0.1:{_get_global_client().http_config.port}{route}"


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """A state policy and a point-cloud policy, each with a long batch wait: the BATCH concurrent
    requests below all land in one batch."""
    ensure_ray()
    if not serve.status().proxies:
        start_serve()
    root = tmp_path_factory.mktemp("policies")
    apps = {}
    for name, kind in (("policy-state-test", "state_mlp"), ("policy-cloud-test", "pointnet")):
        checkpoint = constant_policy(root / name, 0.5, kind=kind, version=name)
        args = PolicyAppArgs(checkpoint=str(checkpoint), max_batch_size=BATCH, batch_wait_timeout_s=1.0,
                             num_cpus=0.25)
        apps[name] = (build_policy_app(args), f"/{name}")
    run_apps(apps)
    yield {name: (serve.get_app_handle(name), _url(route)) for name, (_, route) in apps.items()}
    for name in apps:
        serve.delete(name)


@pytest.fixture
def state_policy(policies):
    return policies["policy-state-test"]


@pytest.fixture
def pointcloud_policy(policies):
    return policies["policy-cloud-test"]


def _post_together(url: str, bodies: list[object]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(url, content=body) if isinstance(body, bytes)
                                          else client.post(url, json=body) for body in bodies))

    return asyncio.run(run())


@pytest.mark.parametrize("bad, param, words", [
    ({"state": [0.0] * 27}, "observation.state", ["28"]),
    ({"state": [0.0] * 27 + ["x"]}, "observation.state", ["number"]),
    ({"state": [[0.0] * 28]}, "observation.state", ["28"]),
    ({"state": [0.0] * 28, "pointcloud": [0.0] * 3}, "observation.pointcloud", ["state_mlp", "takes no"]),
    (NAN_STATE, "observation.state", ["finite"]),
    ({"state": [0.0] * 28, "joints": [1.0]}, "observation.joints", ["unknown"]),
])
def test_one_malformed_observation_over_http_fails_only_its_own_request(state_policy, bad, param, words):
    _, url = state_policy
    bodies = [GOOD] * (BATCH - 1) + [bad]
    responses = _post_together(url, bodies)
    assert [r.status_code for r in responses] == [200] * (BATCH - 1) + [400], [r.text for r in responses]
    error = responses[-1].json()
    assert error["param"] == param and all(word in error["error"] for word in words), error


def test_one_malformed_observation_over_the_handle_fails_only_its_own_call(state_policy):
    handle, _ = state_policy
    calls = [handle.act.remote(GOOD) for _ in range(BATCH - 1)] + [handle.act.remote({"state": [0.0] * 5})]
    assert all(call.result()["version"] == "policy-state-test" for call in calls[:-1])
    with pytest.raises(PolicyRequestError, match="observation.state must hold 28 numbers") as raised:
        calls[-1].result()
    assert raised.value.status_code == 400 and raised.value.param == "observation.state"


def test_point_clouds_of_different_sizes_share_a_batch(pointcloud_policy):
    _, url = pointcloud_policy
    bodies = [{"state": [0.0] * 28, "pointcloud": [0.1] * (3 * (index + 1))} for index in range(BATCH - 1)]
    bodies.append({"state": [0.0] * 28, "pointcloud": [0.1] * 7})
    responses = _post_together(url, bodies)
    assert [r.status_code for r in responses] == [200] * (BATCH - 1) + [400], [r.text for r in responses]
    assert "observation.pointcloud" in responses[-1].json()["error"]
    missing = httpx.post(url, json={"state": [0.0] * 28}, timeout=60)
    assert missing.status_code == 400 and missing.json()["param"] == "observation.pointcloud", missing.text


def test_too_many_points_is_413_naming_the_limit(pointcloud_policy):
    _, url = pointcloud_policy
    response = httpx.post(url, json={"state": [0.0] * 28, "pointcloud": [0.0] * (3 * 65_537)}, timeout=60)
    assert response.status_code == 413, response.text
    assert "65536" in response.json()["error"] and response.json()["param"] == "observation.pointcloud"


def test_body_over_the_byte_limit_is_413_naming_the_limit(state_policy):
    _, url = state_policy
    body = b'{"state": [' + b"0.0, " * (2 * 1024 * 1024) + b'0.0]}'
    response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413, response.text
    assert str(8 * 1024 * 1024) in response.json()["error"]
    # The same without a Content-Length (chunked): the body is cut off at the limit while it is read.
    chunked = httpx.post(url, content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]), timeout=60)
    assert chunked.status_code == 413, chunked.text


def test_no_checkpoint_yet_is_503_with_retry_after_until_one_is_loaded(policies, tmp_path):
    args = PolicyAppArgs(checkpoint=None, num_cpus=0.25)
    handle, url = deploy_policy(args, app_name=APP, route_prefix=ROUTE), _url(ROUTE)
    try:
        response = httpx.post(url, json=GOOD, timeout=60)
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) > 0
        assert "no checkpoint" in response.json()["error"]
        with pytest.raises(PolicyRequestError, match="no checkpoint") as raised:
            handle.act.remote(GOOD).result()
        assert raised.value.status_code == 503
        checkpoint = constant_policy(tmp_path / "v1", 0.5, version="v1")
        deploy_policy(args.model_copy(update={"checkpoint": str(checkpoint)}), app_name=APP, route_prefix=ROUTE)
        assert httpx.post(url, json=GOOD, timeout=60).json()["version"] == "v1"
    finally:
        serve.delete(APP)
