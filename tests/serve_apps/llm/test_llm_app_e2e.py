"""The Model API end to end: real Serve apps (pd and colocated), real HTTP, the official openai client.

One module-scoped pair of apps serves every test here: `llm-pd` (OpenAiIngress -> Decode -> Prefill)
and `llm-co` (colocated, two models, API key, tight queue bounds on the second model).
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from fakes.engine_models import build_tiny_model
from fakes.serve_llm_apps import SMALL_REPLICA, ensure_ray, replica_stats, run_apps, start_serve, wait_until
from ray import serve

from runtime.kv_transfer import object_store_used_bytes
from serve_apps.llm import build_openai_app, build_pd_openai_app

pytestmark = pytest.mark.ray_cluster  # its module fixtures start the session cluster (ensure_ray)
API_KEY = "sk-test-key"
MAX_MODEL_LEN = 512
LONG_PROMPT = "the robot picks up the red cube and places it on the table. " * 2  # ~76 tokens: disaggregated


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    ensure_ray()
    root = tmp_path_factory.mktemp("llm-models")
    model_a = build_tiny_model(str(root / "tiny-a"), max_position_embeddings=MAX_MODEL_LEN)
    model_b = build_tiny_model(str(root / "tiny-b"), max_position_embeddings=MAX_MODEL_LEN)
    port = start_serve()
    engine = {"max_num_seqs": 8}
    pd_args = {"llm_configs": [{
        "model_id": "tiny", "model_source": model_a, "engine_kwargs": engine,
        "prefill_deployment_config": SMALL_REPLICA, "decode_deployment_config": SMALL_REPLICA,
        "kv_transfer_config": {"min_prompt_tokens": 16, "prefill_timeout_s": 20},
    }]}
    co_args = {"api_key": API_KEY, "llm_configs": [
        {"model_id": "tiny", "model_source": model_a, "engine_kwargs": engine, "deployment_config": SMALL_REPLICA},
        {"model_id": "tiny-b", "model_source": model_b, "engine_kwargs": engine, "max_waiting_requests": 1,
         "deployment_config": {**SMALL_REPLICA, "max_ongoing_requests": 2, "max_queued_requests": 1}},
    ]}
    run_apps({"llm-pd": (build_pd_openai_app(pd_args), "/pd"), "llm-co": (build_openai_app(co_args), "/co")})
    base = f"http://127.0.0.1:{port}"
    yield {"pd": f"{base}/pd/v1", "co": f"{base}/co/v1"}
    serve.delete("llm-pd")
    serve.delete("llm-co")
    serve.shutdown()


@pytest.fixture(scope="module")
def pd_client(apps):
    return openai.OpenAI(base_url=apps["pd"], api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def co_client(apps):
    return openai.OpenAI(base_url=apps["co"], api_key=API_KEY, max_retries=0)


def _decode_stats() -> dict:
    return next(iter(replica_stats("llm-pd", "Decode:tiny").values()))


def test_models_listed(co_client, pd_client):
    assert sorted(m.id for m in co_client.models.list()) == ["tiny", "tiny-b"]
    assert [m.id for m in pd_client.models.list()] == ["tiny"]


def test_pd_greedy_is_token_identical_to_colocated_and_recomputes_nothing(pd_client, co_client):
    before = _decode_stats()
    prompts = [LONG_PROMPT, LONG_PROMPT + " again", "short"]
    for prompt in prompts:
        pd = pd_client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logprobs=0)
        co = co_client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logprobs=0)
        assert pd.choices[0].logprobs.tokens == co.choices[0].logprobs.tokens
        assert pd.choices[0].text == co.choices[0].text
        assert (pd.usage.prompt_tokens, pd.usage.completion_tokens) == (co.usage.prompt_tokens,
                                                                        co.usage.completion_tokens)
    after = _decode_stats()
    assert after["num_remote_prefills"] - before["num_remote_prefills"] == 2
    assert after["num_local_prefills"] - before["num_local_prefills"] == 1  # "short" skips disaggregation
    short_prompt_tokens = co.usage.prompt_tokens
    # Decode computed only the short prompt itself; the two long prompts came as KV packages.
    assert after["num_prompt_tokens_computed"] - before["num_prompt_tokens_computed"] == short_prompt_tokens
    assert after["num_live_kv_handles"] == 0


def test_kv_objects_freed_after_handoffs(pd_client):
    pd_client.completions.create(model="tiny", prompt=LONG_PROMPT, max_tokens=2, temperature=0)
    time.sleep(1.0)
    baseline = object_store_used_bytes()
    for i in range(4):
        pd_client.completions.create(model="tiny", prompt=f"{i} {LONG_PROMPT}", max_tokens=4, temperature=0)
    wait_until(lambda: object_store_used_bytes() <= baseline, timeout_s=30)
    assert _decode_stats()["recent_transfers"][-1]["kv_bytes"] > 0


@pytest.mark.parametrize("mode", ["pd", "co"])
def test_chat_stream_with_usage_stop_n_seed_logprobs(mode, pd_client, co_client):
    client = pd_client if mode == "pd" else co_client
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": LONG_PROMPT}]
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_completion_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}, logprobs=True, top_logprobs=2,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(len(e.top_logprobs) == 2 for c in chunks if c.choices and c.choices[0].logprobs
               for e in c.choices[0].logprobs.content)
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.content == text
    sampled = [client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=1.0,
                                              seed=123, n=2) for _ in range(2)]
    assert [c.message.content for c in sampled[0].choices] == [c.message.content for c in sampled[1].choices]
    assert len(sampled[0].choices) == 2 and sampled[0].usage.completion_tokens == 16
    if text.strip():
        stop = text.strip()[len(text.strip()) // 2:][:3]
        stopped = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stop=[stop])
        assert stop not in stopped.choices[0].message.content
        assert stopped.choices[0].finish_reason == "stop"


def test_completion_stream_and_echo(co_client):
    chunks = list(co_client.completions.create(model="tiny", prompt="hello there", max_tokens=5, temperature=0,
                                               stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5
    echoed = co_client.completions.create(model="tiny", prompt="hello there", max_tokens=3, echo=True)
    assert echoed.choices[0].text.startswith("hello there")


def _post(url: str, body, headers=None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}", **(headers or {})}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(url, content=content, headers={"Content-Type": "application/json", **headers}, timeout=60)


@pytest.mark.parametrize(
    "body, status",
    [
        ("{not json", 400),
        ("[1, 2]", 400),
        ({"model": "tiny"}, 400),
        ({"model": "tiny", "prompt": "x", "max_tokens": "many"}, 400),
        ({"model": "tiny", "prompt": "x", "temperature": -1}, 400),
        ({"model": "tiny", "prompt": "x", "n": 1000}, 400),
        ({"model": "tiny", "prompt": [10**9]}, 400),
        ({"model": "tiny", "prompt": "x", "max_tokens": 10**6}, 400),
        ({"model": "tiny", "prompt": "word " * (MAX_MODEL_LEN * 2)}, 400),
        ({"model": "nope", "prompt": "x"}, 404),
        ({"model": "tiny", "prompt": "x", "stop": [""]}, 400),
    ],
)
def test_bad_input_is_4xx_with_openai_error(apps, body, status):
    for base in (apps["co"], apps["pd"]):
        response = _post(f"{base}/completions", body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"] and error["type"]


def test_bad_chat_input_via_client(co_client):
    with pytest.raises(openai.BadRequestError):
        co_client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        co_client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])


def test_api_key_required(apps):
    anonymous = openai.OpenAI(base_url=apps["co"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    assert _post(f"{apps['co']}/completions", {"model": "tiny", "prompt": "x"}, {"Authorization": ""}).status_code == 401


def test_overload_answers_429_with_retry_after(apps):
    import concurrent.futures

    body = {"model": "tiny-b", "prompt": "overload " * 20, "max_tokens": 48, "ignore_eos": True}
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: _post(f"{apps['co']}/completions", body), range(12)))
    statuses = [r.status_code for r in responses]
    assert 429 in statuses and 200 in statuses and all(s in (200, 429) for s in statuses), statuses
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["Retry-After"]) >= 1 and rejected.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("mode, deployment", [("pd", "Decode:tiny"), ("co", "LLMServer:tiny")])
def test_client_disconnect_aborts_and_frees_blocks(apps, mode, deployment):
    app_name = "llm-pd" if mode == "pd" else "llm-co"

    def stats():
        return next(iter(replica_stats(app_name, deployment).values()))

    max_tokens = MAX_MODEL_LEN - 100
    before = stats()["num_generation_tokens"]
    body = {"model": "tiny", "prompt": LONG_PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{apps[mode]}/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]
        assert any(line.startswith("data: ") for line in received)
    # The client left after a few tokens: the engine must abort the request and free its blocks.
    wait_until(lambda: (s := stats())["num_requests"] == 0 and s["num_running"] == 0 and s["kv_cache_usage"] == 0,
               timeout_s=30)
    assert stats()["num_generation_tokens"] - before < max_tokens - 1
