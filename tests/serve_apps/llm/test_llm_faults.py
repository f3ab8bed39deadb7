"""Replica failures in the pd app: a dead prefill falls back to local prefill unnoticed; a decode
replica killed mid-stream gives its clients a clean error while the others carry on."""

from __future__ import annotations

import threading

import openai
import pytest
import ray
from fakes.engine_models import build_tiny_model
from fakes.serve_llm_apps import SMALL_REPLICA, ensure_ray, replica_stats, run_apps, start_serve, wait_until
from ray import serve

from serve_apps.llm import build_pd_openai_app

pytestmark = pytest.mark.slow

APP = "llm-faults"
PROMPT = "the robot picks up the red cube and places it on the table. " * 2


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    ensure_ray()
    model = build_tiny_model(str(tmp_path_factory.mktemp("faults") / "tiny"), max_position_embeddings=1024)
    port = start_serve()
    args = {"llm_configs": [{
        "model_id": "tiny", "model_source": model, "engine_kwargs": {"max_num_seqs": 8},
        "prefill_deployment_config": SMALL_REPLICA,
        "decode_deployment_config": {**SMALL_REPLICA, "num_replicas": 2},
        "kv_transfer_config": {"min_prompt_tokens": 16, "prefill_timeout_s": 3},
    }]}
    run_apps({APP: (build_pd_openai_app(args), "/faults")})
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/faults/v1", api_key="x", max_retries=0, timeout=120)
    serve.delete(APP)
    serve.shutdown()


def _replica_actor_names(deployment: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and f"#{deployment}#" in a["name"]]


def _running_replicas(deployment: str) -> int:
    status = serve.status().applications[APP].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def test_dead_prefill_falls_back_to_local_prefill(client):
    expected = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    for name in _replica_actor_names("Prefill:tiny"):
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    # No prefill replica is up now: decode waits prefill_timeout_s, then prefills itself.
    answer = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0)
    assert answer.choices[0].text == expected
    stats = replica_stats(APP, "Decode:tiny", num_replicas=2)
    assert sum(s["num_local_prefills"] for s in stats.values()) >= 1
    wait_until(lambda: _running_replicas("Prefill:tiny") == 1, timeout_s=90)


def test_decode_killed_mid_stream(client):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 800, "temperature": 0, "extra_body": {"ignore_eos": True}}
    outcomes: dict[str, object] = {}

    def consume(name: str) -> None:
        try:
            outcomes[name] = sum(1 for _ in client.completions.create(stream=True, **body))
        except openai.APIError as exc:
            outcomes[name] = exc

    first = threading.Thread(target=consume, args=("victim",))
    first.start()
    victim = wait_until(lambda: next((r for r, s in replica_stats(APP, "Decode:tiny", 2).items() if s["num_running"]),
                                     None), timeout_s=30)
    second = threading.Thread(target=consume, args=("survivor",))
    second.start()
    wait_until(lambda: all(s["num_running"] for s in replica_stats(APP, "Decode:tiny", 2).values()), timeout_s=30)
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    first.join(timeout=120)
    second.join(timeout=120)
    assert isinstance(outcomes["victim"], openai.APIError), outcomes  # a clean error, not a hang or a 200
    assert isinstance(outcomes["survivor"], int) and outcomes["survivor"] > 0, outcomes
    # Serve replaces the dead replica; new requests keep working meanwhile.
    assert client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4).usage.completion_tokens == 4
    wait_until(lambda: _running_replicas("Decode:tiny") == 2, timeout_s=90)
