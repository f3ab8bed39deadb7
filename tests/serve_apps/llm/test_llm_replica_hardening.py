"""Replica-side hardening of the Model API (#15): a big prompt is tokenized off the event loop with the GIL
released; bad prompts are 400s; request_timeout_s aborts a request and frees its blocks; a scale-down lets
running streams finish. PD-specific cases (KV leaks, fingerprint fallback) live in test_llm_pd_hardening.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading

import httpx
import openai
import pytest
from fakes.engine_models import build_tiny_model
from fakes.serve_llm_apps import SMALL_REPLICA, ensure_ray, replica_stats, run_apps, start_serve, wait_until
from ray import serve

from runtime.engine.tokenizer import Tokenizer
from serve_apps.llm import build_openai_app

BIG_PROMPT = ("the robot picks up the red cube and places it on the table. " * 25_000)[:1_500_000]
APP = "llm-hardening"
MAX_MODEL_LEN = 4096


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("hardening") / "tiny"), max_position_embeddings=MAX_MODEL_LEN)


@pytest.fixture(scope="module")
def no_template_model(tmp_path_factory):
    path = build_tiny_model(str(tmp_path_factory.mktemp("hardening") / "plain"))
    config_path = os.path.join(path, "tokenizer_config.json")
    with open(config_path) as file:
        config = json.load(file)
    del config["chat_template"]
    with open(config_path, "w") as file:
        json.dump(config, file)
    return path


# -- item 2: tokenization never stalls other threads ------------------------------------------------


def test_tokenizer_encode_releases_the_gil(tiny_model):
    """While a 1.5 MB prompt is encoded on one thread, another thread keeps running Python (a held GIL lets
    it run at most once or twice in the whole encode; a released one lets it run throughout)."""
    tokenizer = Tokenizer(tiny_model)
    done = threading.Event()
    ids: list[int] = []
    worker = threading.Thread(target=lambda: (ids.extend(tokenizer.encode(BIG_PROMPT)), done.set()))
    iterations = 0
    worker.start()
    while not done.is_set():
        iterations += 1
        done.wait(0.001)
    worker.join()
    assert len(ids) > 100_000
    assert iterations >= 20, f"the main thread ran only {iterations} times during the encode: the GIL was held"


def test_big_prompt_is_tokenized_off_the_event_loop_while_a_stream_runs(ray_local, tiny_model):
    """A running stream receives chunks between the start and the end of a big prompt's tokenization, which
    runs on another thread than the replica's event loop (event order, no timing)."""
    from serve_apps.llm.server import LLMServer

    server = LLMServer({"model_id": "tiny", "model_source": tiny_model, "engine_kwargs": {"max_num_seqs": 4}})
    events: list[tuple[str, int]] = []
    server.tokenizer = _RecordingTokenizer(server.tokenizer, events)

    async def scenario() -> dict:
        loop_thread = threading.get_ident()
        stream_request = {"request_id": "stream", "model": "tiny", "prompt": "the robot",
                          "sampling": {"max_tokens": MAX_MODEL_LEN - 16, "ignore_eos": True, "temperature": 0}}
        big_request = {"request_id": "big", "model": "tiny", "prompt": BIG_PROMPT, "sampling": {"max_tokens": 4}}
        first_chunk = asyncio.Event()

        async def consume() -> None:
            async for chunk in server.generate(stream_request):
                assert "error" not in chunk, chunk
                events.append(("chunk", threading.get_ident()))
                first_chunk.set()
                if any(e[0] == "encode_end" for e in events):
                    return  # the stream's generator closes: the engine aborts it

        consumer = asyncio.get_running_loop().create_task(consume())
        await first_chunk.wait()
        answer = [chunk async for chunk in server.generate(big_request)]
        await consumer
        return {"loop_thread": loop_thread, "answer": answer}

    try:
        result = asyncio.run(scenario())
    finally:
        server.engine.shutdown()
    assert result["answer"][0]["error"]["code"] == "context_length_exceeded", result["answer"]
    names = [name for name, _ in events]
    start, end = names.index("encode_start"), names.index("encode_end")
    assert "chunk" in names[start:end], f"no stream chunk while the big prompt was tokenized: {names[start - 2:end + 2]}"
    encode_thread = events[start][1]
    assert encode_thread != result["loop_thread"]


class _RecordingTokenizer:
    """The replica's real tokenizer, recording when (and on which thread) a big text is encoded."""

    def __init__(self, inner: Tokenizer, events: list[tuple[str, int]]):
        self._inner = inner
        self._events = events

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        big = len(text) > 100_000
        if big:
            self._events.append(("encode_start", threading.get_ident()))
        ids = self._inner.encode(text, add_special_tokens=add_special_tokens)
        if big:
            self._events.append(("encode_end", threading.get_ident()))
        return ids


# -- item 4 on the replica itself (the ingress also refuses these; a replica must not 500 on them either) ---


@pytest.mark.parametrize("body", [
    {"prompt": "a \ud800 b"},
    {"messages": [{"role": "user", "content": "x\udfffy"}]},
])
def test_replica_turns_a_lone_surrogate_into_a_400(ray_local, tiny_model, body):
    from serve_apps.llm.server import LLMServer

    server = LLMServer({"model_id": "tiny", "model_source": tiny_model})

    async def answer() -> list[dict]:
        request = {"request_id": "s", "model": "tiny", "sampling": {"max_tokens": 2}, **body}
        return [chunk async for chunk in server.generate(request)]

    try:
        chunks = asyncio.run(answer())
    finally:
        server.engine.shutdown()
    assert chunks[0]["status_code"] == 400 and "surrogate" in chunks[0]["error"]["message"], chunks


# -- items 4 and 5 on a colocated app ----------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_port():
    ensure_ray()
    yield start_serve()
    serve.shutdown()


@pytest.fixture(scope="module")
def app(tiny_model, no_template_model, serve_port):
    port = serve_port
    engine = {"max_num_seqs": 4}
    args = {"llm_configs": [
        {"model_id": "tiny", "model_source": tiny_model, "engine_kwargs": engine, "deployment_config": SMALL_REPLICA},
        {"model_id": "plain", "model_source": no_template_model, "engine_kwargs": engine,
         "deployment_config": SMALL_REPLICA},
        {"model_id": "refusing", "model_source": tiny_model, "engine_kwargs": engine,
         "deployment_config": SMALL_REPLICA,
         "chat_template": "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from "
                          "the user') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"},
        {"model_id": "short-timeout", "model_source": tiny_model, "engine_kwargs": engine,
         "deployment_config": SMALL_REPLICA, "request_timeout_s": 2},
    ]}
    run_apps({APP: (build_openai_app(args), "/hardening")})
    yield f"http://127.0.0.1:{port}/hardening/v1"
    serve.delete(APP)


def _post(base: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(base + path, content=json.dumps(body), headers={"content-type": "application/json"},
                      timeout=120)


@pytest.mark.ray_cluster  # starts a Serve app itself (module fixture), not through ray_local
@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/completions", {"model": "tiny", "prompt": "a \ud800 b", "max_tokens": 2}, "surrogate"),
    ("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x\udfffy"}]}, "surrogate"),
    ("/chat/completions", {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}, "chat_template"),
    ("/chat/completions", {"model": "refusing", "messages": [{"role": "assistant", "content": "hi"}]},
     "first message must be from the user"),
])
def test_client_errors_are_400s_with_a_clear_message(app, path, body, needle):
    response = _post(app, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error["message"], error
    assert error["type"] == "invalid_request_error"


@pytest.mark.ray_cluster  # starts a Serve app itself (module fixture), not through ray_local
def test_request_timeout_aborts_the_request_and_frees_its_blocks(app):
    body = {"model": "short-timeout", "prompt": "the robot", "max_tokens": MAX_MODEL_LEN - 16,
            "extra_body": {"ignore_eos": True}, "temperature": 0}
    client = openai.OpenAI(base_url=app, api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(**body)
    assert caught.value.status_code == 408
    assert "request_timeout_s" in caught.value.message
    received = 0
    with pytest.raises(openai.APIError) as caught_stream:  # the stream ends with an error event, not a hang
        for _ in client.completions.create(stream=True, **body):
            received += 1
    assert received > 0 and "request_timeout_s" in str(caught_stream.value)
    wait_until(lambda: _idle(replica_stats(APP, "LLMServer:short-timeout")), timeout_s=30)


def _idle(stats: dict[str, dict]) -> bool:
    (replica,) = stats.values()
    return replica["num_running"] == 0 and replica["num_free_blocks"] == replica["num_total_blocks"]


# -- item 5: a scale-down lets running streams finish ------------------------------------------------------


@pytest.mark.ray_cluster  # starts a Serve app itself (module fixture), not through ray_local
def test_scale_down_lets_running_streams_finish(tiny_model, serve_port):
    """Streams on both replicas run longer than Serve's old 5 s shutdown budget; the app is redeployed with one
    replica meanwhile. Every stream completes (the stopped replica drains its streams first)."""
    port = serve_port
    name = "llm-scale-down"

    def build(num_replicas: int):
        return build_openai_app({"llm_configs": [{
            "model_id": "tiny", "model_source": tiny_model, "engine_kwargs": {"max_num_seqs": 4},
            "deployment_config": {**SMALL_REPLICA, "num_replicas": num_replicas},
        }]})

    run_apps({name: (build(2), "/scale")})
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/scale/v1", api_key="unused", max_retries=0,
                           timeout=300)
    body = {"model": "tiny", "prompt": "the robot", "max_tokens": MAX_MODEL_LEN - 16, "temperature": 0,
            "extra_body": {"ignore_eos": True}}
    outcomes: dict[int, object] = {}

    def consume(index: int) -> None:
        try:
            outcomes[index] = sum(1 for _ in client.completions.create(stream=True, **body))
        except openai.APIError as exc:
            outcomes[index] = exc

    threads: list[threading.Thread] = []

    def running() -> list[int]:
        return [stats["num_running"] for stats in replica_stats(name, "LLMServer:tiny", 2).values()]

    def both_busy() -> bool:
        counts = running()
        return len(counts) == 2 and all(counts)

    try:
        while len(threads) < 4 and not both_busy():  # start streams until both replicas run one
            threads.append(threading.Thread(target=consume, args=(len(threads),)))
            threads[-1].start()
            wait_until(lambda: sum(running()) >= len(threads), timeout_s=60)
        assert both_busy(), "the streams never spread over both replicas"
        redeploy = threading.Thread(target=serve.run, args=(build(1),), kwargs={"name": name, "route_prefix": "/scale"})
        redeploy.start()  # returns once the app is RUNNING again, which waits for the stopped replica's drain
        for thread in threads:
            thread.join(timeout=300)
        redeploy.join(timeout=300)
        assert all(isinstance(outcomes.get(i), int) and outcomes[i] > 1000 for i in range(len(threads))), outcomes
    finally:
        for thread in threads:  # a running stream holds its replica's shutdown for up to request_timeout_s
            thread.join(timeout=300)
        serve.delete(name)
