"""PD hardening (#15): an overload burst leaves no KV package pinned in the object store, and a prefill replica
serving other weights (fingerprint mismatch) makes decode continue locally instead of failing after token one."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from fakes.engine_models import build_tiny_model
from fakes.serve_llm_apps import SMALL_REPLICA, ensure_ray, replica_stats, run_apps, start_serve, wait_until
from ray import serve

from runtime.kv_transfer import object_store_used_bytes
from serve_apps.llm import build_pd_openai_app
from serve_apps.llm.config import LLMConfig, deployment_name, deployment_options
from serve_apps.llm.pd_server import PDDecodeServer, PDPrefillServer

pytestmark = pytest.mark.ray_cluster
LEAK_APP = "llm-pd-leak"
MISMATCH_APP = "llm-pd-mismatch"
# ~380 tokens: its K/V (~190 KB) is above Ray's 100 KB inline limit, so it lives in the shared object store.
SENTENCE = "the robot picks up the red cube and places it on the table. "
ONE_PACKAGE_BYTES = 100 * 1024


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pd-hardening")
    return {
        "a": build_tiny_model(str(root / "a"), max_position_embeddings=1024),
        "b": build_tiny_model(str(root / "b"), max_position_embeddings=1024, seed=1),  # same shapes, other weights
    }


@pytest.fixture(scope="module")
def serve_port():
    ensure_ray()
    yield start_serve()
    serve.shutdown()


@pytest.fixture(scope="module")
def base_url(models, serve_port):
    port = serve_port
    args = {"llm_configs": [{
        "model_id": "tiny", "model_source": models["a"], "engine_kwargs": {"max_num_seqs": 1},
        "max_waiting_requests": 1,
        "prefill_deployment_config": SMALL_REPLICA, "decode_deployment_config": SMALL_REPLICA,
        "kv_transfer_config": {"min_prompt_tokens": 16, "prefill_timeout_s": 60},
    }]}
    run_apps({LEAK_APP: (build_pd_openai_app(args), "/pdleak")})
    yield f"http://127.0.0.1:{port}/pdleak/v1"
    serve.delete(LEAK_APP)


def test_overload_burst_leaves_no_kv_in_the_object_store(base_url):
    def complete(index: int) -> int:
        body = {"model": "tiny", "prompt": f"{index} " + SENTENCE * 10, "max_tokens": 32, "temperature": 0}
        return httpx.post(base_url + "/completions", content=json.dumps(body),
                          headers={"content-type": "application/json"}, timeout=300).status_code

    assert complete(0) == 200  # warm up: the first handoff sets up the replicas' object-store clients
    wait_until(lambda: _live_handles() == 0, timeout_s=30)
    baseline = object_store_used_bytes()
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda i=i: statuses.append(complete(i))) for i in range(1, 13)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(statuses) == 12 and set(statuses) <= {200, 429}, statuses
    assert 429 in statuses, f"the burst never overloaded decode: {statuses}"
    wait_until(lambda: _live_handles() == 0, timeout_s=30)
    wait_until(lambda: object_store_used_bytes() <= baseline + ONE_PACKAGE_BYTES // 2, timeout_s=30)


def _live_handles() -> int:
    return sum(s["num_live_kv_handles"] for s in replica_stats(LEAK_APP, "Decode:tiny").values())


def test_fingerprint_mismatch_falls_back_to_local_decode(models, serve_port):
    """Prefill runs model a, decode model b (a rolling update half done): the stream continues on decode."""

    def config(source: str) -> dict:
        return LLMConfig(model_id="tiny", model_source=source, engine_kwargs={"max_num_seqs": 2},
                         kv_transfer_config={"min_prompt_tokens": 16, "prefill_timeout_s": 60}).model_dump()

    prefill = serve.deployment(PDPrefillServer, name=deployment_name("Prefill:", "tiny"),
                               **deployment_options(SMALL_REPLICA)).bind(config(models["a"]))
    decode = serve.deployment(PDDecodeServer, name=deployment_name("Decode:", "tiny"),
                              **deployment_options(SMALL_REPLICA)).bind(config(models["b"]), prefill_server=prefill)
    serve.run(decode, name=MISMATCH_APP, route_prefix=None)
    try:
        handle = serve.get_deployment_handle("Decode:tiny", app_name=MISMATCH_APP)
        request = {"request_id": "mismatch", "model": "tiny", "prompt": SENTENCE * 2,
                   "sampling": {"max_tokens": 12, "ignore_eos": True, "temperature": 0}}
        chunks = list(handle.options(stream=True).generate.remote(request))
        assert not [c for c in chunks if "error" in c], chunks
        last = chunks[-1]["outputs"][-1]
        assert last["finish_reason"] == "length", chunks[-1]
        stats = replica_stats(MISMATCH_APP, "Decode:tiny")
        (decode_stats,) = stats.values()
        assert decode_stats["num_remote_prefills"] == 1 and decode_stats["num_live_kv_handles"] == 0
    finally:
        serve.delete(MISMATCH_APP)
