"""serve_apps.policy on a real Serve app: HTTP and handle answers, batching, hot-swap under load."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
import torch
from helpers.robot_loop_policies import constant_policy
from helpers.tolerances import dtype_steps_tolerance
from ray import serve
from ray.serve.context import _get_global_client

from runtime.cluster import free_port
from serve_apps.policy import PolicyAppArgs, build_policy_app, deploy_policy

APP = "policy-test"
ROUTE = "/policy-test"


@pytest.fixture
def policy_app(ray_local, tmp_path):
    if not serve.status().proxies:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    first = constant_policy(tmp_path / "v1", 0.5, version="v1")
    second = constant_policy(tmp_path / "v2", -0.5, version="v2")
    args = PolicyAppArgs(checkpoint=str(first), max_batch_size=16, batch_wait_timeout_s=0.01, num_cpus=0.25)
    handle = deploy_policy(args, app_name=APP, route_prefix=ROUTE)
    port = _get_global_client().http_config.port
    yield handle, args, second, f"http://127.0.0.1:{port}{ROUTE}"
    serve.delete(APP)


def tanh_tolerance(value: float) -> float:
    """The constant policy's action is float32 tanh of an exact bias (its last layer's weights are 0):
    float32 tanh is within an ulp or two of the float64 one; the JSON answer carries it exactly."""
    return dtype_steps_tolerance(torch.float32, value, 2)


def test_builder_validates_args():
    with pytest.raises(ValueError):
        build_policy_app({"checkpoint": "x.safetensors", "num_replicas": 0})


def test_replica_code_version_changes_with_the_constructor_not_the_checkpoint(tmp_path):
    first = build_policy_app(PolicyAppArgs(checkpoint=str(tmp_path / "v1"), num_cpus=0.25))
    swapped = build_policy_app(PolicyAppArgs(checkpoint=str(tmp_path / "v2"), num_cpus=0.25))
    resized = build_policy_app(PolicyAppArgs(checkpoint=str(tmp_path / "v1"), num_cpus=0.25, max_batch_size=8))
    keyed = build_policy_app(PolicyAppArgs(checkpoint=str(tmp_path / "v1"), num_cpus=0.25, api_key="k1"))
    versions = [app._bound_deployment.version for app in (first, swapped, resized, keyed)]
    assert versions[0] == versions[1] and len(set(versions)) == 3, versions


def test_http_and_handle_answer_in_batches(policy_app):
    handle, _, _, url = policy_app
    state = [0.1] * 28
    response = httpx.post(url, json={"observation": {"state": state}}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == "v1"
    assert body["action"] == pytest.approx([math.tanh(0.5)] * 4, abs=tanh_tolerance(0.5))
    from_handle = handle.act.remote({"state": state}).result()
    assert from_handle == body
    bad = httpx.post(url, json={"state": [0.0] * 3}, timeout=30)
    assert bad.status_code == 400 and "28" in bad.json()["error"]
    # Many concurrent handle calls: answered (in batches) with the same model.
    responses = [handle.act.remote({"state": [float(i)] * 28}) for i in range(32)]
    assert all(len(r.result()["action"]) == 4 for r in responses)
    info = handle.info.remote().result()
    assert info["version"] == "v1" and info["needs_pointcloud"] is False


def test_hot_swap_drops_no_request(policy_app):
    handle, args, second, url = policy_app
    replica_before = handle.info.remote().result()["replica"]

    async def stream(stop: asyncio.Event) -> list[dict]:
        answers = []
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                batch = [client.post(url, json={"state": [0.0] * 28}) for _ in range(4)]
                for response in await asyncio.gather(*batch):
                    assert response.status_code == 200, response.text
                    answers.append(response.json())
        return answers

    async def run() -> list[dict]:
        stop = asyncio.Event()
        task = asyncio.create_task(stream(stop))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(deploy_policy, args.model_copy(update={"checkpoint": str(second)}),
                                app_name=APP, route_prefix=ROUTE)
        await asyncio.sleep(0.5)
        stop.set()
        return await task

    answers = asyncio.run(run())
    versions = [answer["version"] for answer in answers]
    assert versions[0] == "v1" and versions[-1] == "v2"
    # Once the new version answers, the old one never comes back.
    assert versions == sorted(versions)
    for answer in answers:
        expected = math.tanh(0.5 if answer["version"] == "v1" else -0.5)
        assert answer["action"] == pytest.approx([expected] * 4, abs=tanh_tolerance(expected))
    info = handle.info.remote().result()
    # Swapped in place: the replica that served v1 serves v2 (a restart would leave a gap of a replica start).
    assert info["version"] == "v2" and info["replica"] == replica_before
