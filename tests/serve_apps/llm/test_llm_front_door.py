"""The Model API's front door (#15 items 1, 4, 5, 7): the key and the body size are checked before any
parsing, prompts are bounded before tokenizing, every client error is a 4xx with an OpenAI error body,
the ingress queue is bounded, and docs routes are off unless asked for. Real Serve apps, real HTTP."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest
from fakes.engine_models import build_tiny_model
from fakes.serve_llm_apps import SMALL_REPLICA, ensure_ray, run_apps, start_serve
from ray import serve

from runtime.cluster import free_port
from serve_apps.llm import build_openai_app
from serve_apps.llm.request_limits import MAX_CHARS_PER_TOKEN

needs_apps = pytest.mark.ray_cluster  # the `apps` fixture starts the session cluster (ensure_ray)
API_KEY = "sk-front-door"
MAX_MODEL_LEN = 256
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    ensure_ray()
    model = build_tiny_model(str(tmp_path_factory.mktemp("front-door") / "tiny"), max_position_embeddings=MAX_MODEL_LEN)
    port = start_serve()
    server = {"model_id": "tiny", "model_source": model, "engine_kwargs": {"max_num_seqs": 4},
              "deployment_config": SMALL_REPLICA}
    keyed = {"api_key": API_KEY, "llm_configs": [server]}
    # One request at a time and one waiting at the ingress: a burst overflows the ingress queue itself.
    queued = {"llm_configs": [server], "ingress_deployment_config": {
        **SMALL_REPLICA, "max_ongoing_requests": 1, "max_queued_requests": 1}}
    run_apps({"front-keyed": (build_openai_app(keyed), "/keyed"), "front-queued": (build_openai_app(queued), "/queued")})
    base = f"http://127.0.0.1:{port}"
    yield {"keyed": f"{base}/keyed", "queued": f"{base}/queued"}
    serve.delete("front-keyed")
    serve.delete("front-queued")
    serve.shutdown()


def _post(url: str, content: bytes | str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url, content=content, headers={"Content-Type": "application/json", **(headers or {})},
                      timeout=120)


def _error(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert error["message"] and error["type"], response.text
    return error


@needs_apps
@pytest.mark.parametrize("body", ["{not json", "[1, 2]", json.dumps({"model": "tiny"}),
                                  json.dumps({"model": "tiny", "prompt": "x", "bogus": 1})])
def test_a_client_without_a_key_gets_401_whatever_the_body(apps, body):
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize"):
        response = _post(apps["keyed"] + path, body)
        assert response.status_code == 401, (path, response.text)
        assert _error(response)["type"] == "authentication_error"


@needs_apps
def test_a_non_ascii_key_is_401_not_500(apps):
    headers = [(b"Authorization", "Bearer ключ-🔑".encode()), (b"Content-Type", b"application/json")]
    response = httpx.post(apps["keyed"] + "/v1/completions", content=b'{"model": "tiny", "prompt": "x"}',
                          headers=headers, timeout=60)
    assert response.status_code == 401, response.text
    assert httpx.get(apps["keyed"] + "/v1/models", headers=[(b"Authorization", "Bearer é".encode("latin-1"))],
                     timeout=60).status_code == 401


@needs_apps
def test_a_body_over_the_cap_is_413_before_parsing(apps):
    oversized = b"{" + b" " * (5 * 2**20)  # not even JSON: the size decides first
    response = _post(apps["keyed"] + "/v1/completions", oversized, AUTH)
    assert response.status_code == 413, response.text[:300]
    assert "bytes" in _error(response)["message"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(6):
            yield b" " * 2**20

    streamed = httpx.post(apps["keyed"] + "/v1/completions", content=chunks(), headers=AUTH, timeout=120)
    assert streamed.status_code == 413, streamed.text[:300]


@needs_apps
def test_a_prompt_over_the_character_bound_is_400_before_tokenizing(apps):
    limit = MAX_MODEL_LEN * MAX_CHARS_PER_TOKEN
    body = {"model": "tiny", "prompt": "a" * (limit + 1), "max_tokens": 1}
    response = _post(apps["keyed"] + "/v1/completions", json.dumps(body), AUTH)
    assert response.status_code == 400, response.text[:300]
    error = _error(response)
    assert error["param"] == "prompt" and f"{limit} characters" in error["message"], error
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "b" * (limit + 1)}]}
    response = _post(apps["keyed"] + "/v1/chat/completions", json.dumps(chat), AUTH)
    assert response.status_code == 400 and f"{limit} characters" in _error(response)["message"], response.text[:300]
    tokens = {"model": "tiny", "prompt": [5] * (MAX_MODEL_LEN + 1)}
    response = _post(apps["keyed"] + "/v1/completions", json.dumps(tokens), AUTH)
    assert response.status_code == 400 and _error(response)["param"] == "prompt", response.text[:300]


@needs_apps
@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}] * 5000}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "y"}] * 5000}]},
     "messages.0.content"),
    ("/v1/completions", {"prompt": "x", "stop": ["z" * 5000]}, "stop"),
])
def test_message_count_content_parts_and_stop_length_are_bounded(apps, path, body, param):
    response = _post(apps["keyed"] + path, json.dumps({"model": "tiny", **body}), AUTH)
    assert response.status_code == 400, response.text[:300]
    error = _error(response)
    assert error["param"] == param and "at most" in error["message"], error


@needs_apps
@pytest.mark.parametrize("path, body", [
    ("/v1/completions", '{"model": "tiny", "prompt": "hi \\ud800 there", "max_tokens": 2}'),
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 2}'),
    ("/tokenize", '{"model": "tiny", "prompt": "\\ud83d"}'),
])
def test_a_lone_surrogate_is_400_at_the_ingress(apps, path, body):
    response = _post(apps["keyed"] + path, body, AUTH)
    assert response.status_code == 400, response.text[:300]
    assert "surrogate" in _error(response)["message"]


@needs_apps
def test_docs_routes_are_off_by_default(apps):
    for path in ("/docs", "/redoc", "/openapi.json"):
        response = httpx.get(apps["keyed"] + path, headers=AUTH, timeout=60)
        assert response.status_code == 404, (path, response.status_code)
    assert httpx.get(apps["keyed"] + "/health", timeout=60).status_code == 200  # no key needed to probe


@needs_apps
def test_a_full_ingress_queue_is_429_with_retry_after(apps):
    body = json.dumps({"model": "tiny", "prompt": "queue " * 10, "max_tokens": 64, "ignore_eos": True})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: _post(apps["queued"] + "/v1/completions", body), range(8)))
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["Retry-After"]) >= 1


@needs_apps
def test_starting_on_a_proxy_bound_elsewhere_fails_naming_both(apps):
    from serve_apps.llm.__main__ import start_http

    running = serve.context._get_global_client().http_config
    start_http(running.host, running.port)  # the same address: nothing to say
    other = free_port()
    with pytest.raises(RuntimeError) as error:
        start_http("0.0.0.0", other)
    message = str(error.value)
    assert f"{running.host}:{running.port}" in message and f"0.0.0.0:{other}" in message, message


# -- without Ray: the front door on a plain Starlette app, the CLI, the builder's ingress options ----------------

def _starlette_app():
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serve_apps.llm.errors import install_error_handlers

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    async def fault(request: Request) -> JSONResponse:
        raise KeyError("a server bug")

    app = FastAPI(openapi_url=None, routes=[Route("/echo", echo, methods=["POST"]), Route("/fault", fault, methods=["POST"]),
                            Route("/openapi.json", echo, methods=["GET", "POST"])])
    install_error_handlers(app)
    return app


def _door(**config):
    from starlette.testclient import TestClient

    from serve_apps.llm.front_door import FrontDoor, FrontDoorConfig

    settings = {"api_key": "k", "max_request_body_bytes": 1024, **config}
    return TestClient(FrontDoor(_starlette_app(), FrontDoorConfig(**settings)), raise_server_exceptions=False)


def test_front_door_counts_the_body_and_replays_it():
    client = _door()
    bearer = {"Authorization": "Bearer k"}
    assert client.post("/echo", content=b"x" * 1024, headers=bearer).json() == {"size": 1024}
    assert client.post("/echo", content=b"x" * 1025, headers=bearer).status_code == 413
    assert client.post("/echo", content=iter([b"x" * 600, b"x" * 600]), headers=bearer).status_code == 413
    assert client.post("/echo", content=b"x" * 5000).status_code == 401  # the key first, the size second
    assert client.post("/echo", content=b"x", headers={"Authorization": "bearer  k "}).status_code == 200


def test_front_door_logs_a_server_fault_once_and_answers_an_openai_500(caplog):
    client = _door(api_key=None)
    with caplog.at_level("ERROR", logger="serve_apps.llm.front_door"):
        response = client.post("/fault", content=b"{}")
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error", response.text
    records = [r for r in caplog.records if r.exc_info]
    assert len(records) == 1 and "KeyError" in caplog.text, caplog.text


def test_front_door_docs_routes_answer_only_when_enabled():
    assert _door().get("/openapi.json").status_code == 404
    assert _door(enable_docs=True).post("/openapi.json", content=b"{}").status_code == 200  # no key for docs


def test_key_matches_compares_bytes():
    from serve_apps.llm.front_door import key_matches

    assert key_matches(b"Bearer s\xc3\xa9cret", "sécret")
    assert not key_matches("Bearer ключ".encode(), "k") and not key_matches(b"Bearer \xff\xfe", "k")
    assert not key_matches(b"Basic k", "k") and not key_matches(b"", "k")


def test_the_api_key_flag_is_refused_and_says_where_the_key_goes(capsys):
    from serve_apps.llm.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model", "/m/a", "--api-key", "sk-visible-in-ps"])
    assert "STRATA_API_KEY" in capsys.readouterr().err


def test_the_key_comes_from_the_environment_or_a_file(monkeypatch, tmp_path):
    from serve_apps.llm.__main__ import parse_args, serving_args

    monkeypatch.delenv("STRATA_API_KEY", raising=False)
    assert serving_args(parse_args(["--model", "/m/a"])).resolved_api_key() is None
    monkeypatch.setenv("STRATA_API_KEY", "from-env")
    assert serving_args(parse_args(["--model", "/m/a"])).resolved_api_key() == "from-env"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    args = serving_args(parse_args(["--model", "/m/a", "--api-key-file", str(key_file)]))
    assert args.resolved_api_key() == "from-file"
    with pytest.raises(ValueError, match="api_key_file"):
        serving_args(parse_args(["--model", "/m/a", "--api-key-file", str(tmp_path / "missing")])).resolved_api_key()


def test_a_non_loopback_host_needs_a_key_or_the_explicit_opt_in(monkeypatch, capsys):
    from serve_apps.llm.__main__ import check_exposure, main

    monkeypatch.delenv("STRATA_API_KEY", raising=False)
    with pytest.raises(SystemExit):
        main(["--model", "/m/a", "--host", "0.0.0.0"])  # refused before any cluster is joined
    assert "--allow-unauthenticated" in capsys.readouterr().err
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(host, has_api_key=False, allow_unauthenticated=False)
    check_exposure("0.0.0.0", has_api_key=True, allow_unauthenticated=False)
    check_exposure("10.0.0.5", has_api_key=False, allow_unauthenticated=True)
    with pytest.raises(ValueError, match="STRATA_API_KEY"):
        check_exposure("my-host.internal", has_api_key=False, allow_unauthenticated=False)


def test_the_ingress_queue_is_bounded_and_answers_429():
    from serve_apps.llm.builder import ingress_deployment_options
    from serve_apps.llm.config import LLMServingArgs

    default = ingress_deployment_options(LLMServingArgs(llm_configs=[{"model_source": "/m/a"}]))
    assert default["max_queued_requests"] > 0 and default["backpressure_config"].status_code == 429
    assert default["backpressure_config"].retry_after_s >= 1
    tuned = LLMServingArgs(llm_configs=[{"model_source": "/m/a"}], ingress_deployment_config={"max_queued_requests": 3})
    assert ingress_deployment_options(tuned)["max_queued_requests"] == 3


def test_prompt_bounds_are_told_by_length_alone(tmp_path):
    from serve_apps.llm.errors import OpenAIError
    from serve_apps.llm.protocol import ChatCompletionRequest, CompletionRequest
    from serve_apps.llm.request_limits import check_prompt_size, checkpoint_max_model_len, find_lone_surrogate

    limit = 100 * MAX_CHARS_PER_TOKEN
    check_prompt_size(CompletionRequest(model="m", prompt="a" * limit), 100)
    check_prompt_size(CompletionRequest(model="m", prompt="a" * 10**6), None)  # context unknown: the replica decides
    with pytest.raises(OpenAIError, match=f"at most {limit} characters"):
        check_prompt_size(CompletionRequest(model="m", prompt="a" * (limit + 1)), 100)
    parts = [{"type": "text", "text": "b" * (limit // 2)}] * 2
    check_prompt_size(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": parts}]), 100)
    with pytest.raises(OpenAIError) as error:
        check_prompt_size(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": parts + parts}]), 100)
    assert error.value.param == "messages" and error.value.status_code == 400
    with pytest.raises(OpenAIError, match="100 tokens"):
        check_prompt_size(CompletionRequest(model="m", prompt=[1] * 100), 100)
    assert find_lone_surrogate({"messages": [{"content": "ok"}, {"content": "x\ud800"}]}) == "messages.1.content"
    assert find_lone_surrogate({"prompt": "héllo 🙂"}) is None
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 4096}')
    assert checkpoint_max_model_len(str(tmp_path), {}) == 4096
    assert checkpoint_max_model_len(str(tmp_path), {"max_model_len": 512}) == 512
    assert checkpoint_max_model_len(str(tmp_path / "elsewhere"), {}) is None
