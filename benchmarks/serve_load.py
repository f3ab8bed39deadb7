"""Open-loop load on the Model API: colocated vs prefill/decode disaggregated, same machine, one run.

    python -m benchmarks.serve_load [--quick] [--model DIR | --model-size small|medium] [--rates 0.5,1,2] [--duration-s 40]
        [--structured]
    ray job submit --working-dir . -- python -m benchmarks.serve_load --quick
    python -m benchmarks.serve_load --quick --structured     # every request follows a JSON schema

With --structured every request carries `structured_outputs: {"json": RECORD_SCHEMA}` (compact; vLLM's field; the
same grammar a `response_format` json_schema compiles to), so prefill samples the first token under the
grammar and decode continues it; each output is checked against the schema and the share that
validates is reported per mode. Writes serve_load_structured.json/.png.

Poisson arrivals with mixed prompt/output lengths are sent over real HTTP (streaming SSE) to each
app in turn; reports TTFT, TPOT, ITL and end-to-end p50/p90/p99, throughput and goodput under an
SLO per request rate, the PD/colocated ratios, and the KV handoff share of TTFT for 1k-token
prompts. Writes benchmarks/results/serve_load.json and serve_load.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from typing import Any

import httpx
import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
APP_NAME = "serve-load"
# Bounded fields, so a random-weight model's output ends inside the output budget of the mix.
RECORD_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "name", "tags"], "properties": {
    "id": {"type": "integer", "minimum": 0, "maximum": 9999}, "name": {"type": "string", "maxLength": 12},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3}}}


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    array = np.asarray(values)
    return {
        "p50": float(np.percentile(array, 50)), "p90": float(np.percentile(array, 90)),
        "p99": float(np.percentile(array, 99)), "mean": float(array.mean()),
    }


async def _one_request(client: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int,
                       structured: bool = False) -> dict[str, Any]:
    body = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True},
    }
    if structured:
        # Compact JSON, as real models write it; a random-weight model would otherwise pad with whitespace.
        body["structured_outputs"] = {"json": RECORD_SCHEMA, "disable_any_whitespace": True}
    texts: list[str] = []
    start = time.perf_counter()
    token_times: list[float] = []
    status = None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        status = response.status_code
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                token_times.append(time.perf_counter())
                texts.append(chunk["choices"][0]["text"])
            if "error" in chunk:
                status = 599
    end = time.perf_counter()
    record = {"status": status, "start": start, "end": end, "token_times": token_times, "prompt_len": len(prompt)}
    if structured:
        record["valid"] = _validates("".join(texts))
    return record


def _validates(text: str) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), RECORD_SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _workload(rng: random.Random, vocab: int, mix: list[tuple[float, int, int]]) -> tuple[list[int], int]:
    weights = [w for w, _, _ in mix]
    _, prompt_len, output_len = rng.choices(mix, weights=weights)[0]
    return [rng.randrange(3, vocab) for _ in range(prompt_len)], output_len


async def run_rate(
    base_url: str, model: str, *, rate_rps: float, duration_s: float, vocab: int, mix: list[tuple[float, int, int]],
    seed: int, structured: bool = False,
) -> list[dict[str, Any]]:
    """Open loop: arrivals follow a Poisson process regardless of how fast responses come back."""
    rng = random.Random(seed)
    tasks = []
    async with httpx.AsyncClient(base_url=base_url, timeout=600.0, limits=httpx.Limits(max_connections=512)) as client:
        clock = 0.0
        begin = time.perf_counter()
        while clock < duration_s:
            prompt, output_len = _workload(rng, vocab, mix)
            delay = begin + clock - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_one_request(client, model, prompt, output_len, structured)))
            clock += rng.expovariate(rate_rps)
        return list(await asyncio.gather(*tasks))


def summarize(records: list[dict[str, Any]], *, ttft_slo_s: float, tpot_slo_s: float) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == 200 and r["token_times"]]
    ttft = [r["token_times"][0] - r["start"] for r in ok]
    tpot = [(r["end"] - r["token_times"][0]) / (len(r["token_times"]) - 1) for r in ok if len(r["token_times"]) > 1]
    itl = [b - a for r in ok for a, b in zip(r["token_times"], r["token_times"][1:])]
    e2e = [r["end"] - r["start"] for r in ok]
    span = max(r["end"] for r in records) - min(r["start"] for r in records) if records else 1.0
    good = [
        r for r in ok if r["token_times"][0] - r["start"] <= ttft_slo_s
        and (len(r["token_times"]) < 2 or (r["end"] - r["token_times"][0]) / (len(r["token_times"]) - 1) <= tpot_slo_s)
    ]
    validated = [r["valid"] for r in ok if "valid" in r]
    return {
        "num_requests": len(records), "num_ok": len(ok),
        "valid_share": (sum(validated) / len(validated)) if validated else None,
        "num_5xx": sum(1 for r in records if r["status"] is not None and r["status"] >= 500),
        "ttft_s": _percentiles(ttft), "tpot_s": _percentiles(tpot), "itl_s": _percentiles(itl),
        "e2e_s": _percentiles(e2e),
        "throughput_rps": len(ok) / span, "output_tokens_per_s": sum(len(r["token_times"]) for r in ok) / span,
        "goodput_rps": len(good) / span,
    }


# Random-weight Llamas, wider than the unit-test model so that a 1k-token prefill costs real compute,
# as on real models. "medium" (~30M parameters) makes a 1k prefill cost ~50 decode steps, the regime
# where a colocated engine's token stream visibly stalls behind incoming prefills.
MODEL_SIZES = {
    "small": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 4},
    "medium": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
               "num_key_value_heads": 4},
}


def _build_model(workdir: str, max_model_len: int, size: str = "medium") -> str:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from fakes.engine_models import build_tiny_model

    return build_tiny_model(
        os.path.join(workdir, f"bench-{size}"), max_position_embeddings=max_model_len, **MODEL_SIZES[size]
    )


def _serving_args(model_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    actor = {"ray_actor_options": {"num_cpus": args.cpus_per_replica}, "max_ongoing_requests": 256,
             "max_queued_requests": 1024}
    max_model_len = args.max_model_len
    return {
        "llm_configs": [{
            "model_id": "bench", "model_source": model_dir, "max_waiting_requests": 1024,
            "engine_kwargs": {"max_model_len": max_model_len, "max_num_seqs": 64},
            "deployment_config": {"num_replicas": args.num_colocated, **actor},
            "prefill_deployment_config": {"num_replicas": args.num_prefill, **actor},
            "decode_deployment_config": {"num_replicas": args.num_decode, **actor},
            "kv_transfer_config": {"min_prompt_tokens": 16},
        }],
    }


async def _handoff_share(base_url: str, vocab: int, prompt_len: int, repeats: int) -> list[float]:
    rng = random.Random(7)
    ttfts = []
    async with httpx.AsyncClient(base_url=base_url, timeout=600.0) as client:
        for _ in range(repeats):
            record = await _one_request(client, "bench", [rng.randrange(3, vocab) for _ in range(prompt_len)], 4)
            ttfts.append(record["token_times"][0] - record["start"])
    return ttfts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (CI smoke): 2 rates, 15 s each")
    parser.add_argument("--model", default=None, help="model dir (default: build a tiny random Llama)")
    parser.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="medium",
                        help="size of the random Llama built when --model is not given")
    parser.add_argument("--rates", default="0.5,1,2")
    parser.add_argument("--duration-s", type=float, default=40.0)
    parser.add_argument("--ttft-slo-s", type=float, default=2.0)
    parser.add_argument("--tpot-slo-s", type=float, default=0.2)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--num-prefill", type=int, default=1)
    parser.add_argument("--num-decode", type=int, default=1)
    parser.add_argument("--num-colocated", type=int, default=None, help="default: num-prefill + num-decode")
    parser.add_argument("--max-model-len", type=int, default=1280)
    parser.add_argument("--structured", action="store_true",
                        help="every request follows RECORD_SCHEMA (structured outputs through prefill and decode)")
    parser.add_argument("--output", default=None, help="default: results/serve_load[_structured].json")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = os.path.join(RESULTS_DIR, "serve_load_structured.json" if args.structured else "serve_load.json")
    if args.quick:
        args.rates, args.duration_s, args.model_size = "1,3", 15.0, "small"
    # Same hardware: as many colocated engines as prefill + decode engines together.
    args.num_colocated = args.num_colocated or args.num_prefill + args.num_decode

    from ray import serve

    from runtime.cluster import connect, free_port
    from serve_apps.llm import build_openai_app, build_pd_openai_app

    connect(num_cpus=4, include_dashboard=False)
    workdir = tempfile.mkdtemp(prefix="serve-load-")
    model_dir = args.model or _build_model(workdir, args.max_model_len, args.model_size)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base_url = f"http://127.0.0.1:{port}"
    with open(os.path.join(model_dir, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    # 70% chat-like short prompts, 30% long documents: long prefills are what disturb colocated decode.
    mix = [(0.7, 64, 48), (0.3, 1024, 32)]
    if args.structured:  # room for the whole record: the grammar, not the budget, ends each output
        mix = [(weight, prompt_len, 96) for weight, prompt_len, _ in mix]
    rates = [float(r) for r in args.rates.split(",")]
    results: dict[str, Any] = {"config": vars(args), "mix": mix, "load_avg_start": os.getloadavg(), "modes": {}}
    for mode, builder in (("colocated", build_openai_app), ("pd", build_pd_openai_app)):
        serve.run(builder(_serving_args(model_dir, args)),
                  name=APP_NAME, route_prefix="/")
        asyncio.run(run_rate(base_url, "bench", rate_rps=1.0, duration_s=3.0, vocab=vocab, mix=mix, seed=99))  # warm up
        per_rate = {}
        for rate in rates:
            records = asyncio.run(run_rate(
                base_url, "bench", rate_rps=rate, duration_s=args.duration_s, vocab=vocab, mix=mix, seed=int(rate * 100),
                structured=args.structured,
            ))
            per_rate[str(rate)] = summarize(records, ttft_slo_s=args.ttft_slo_s, tpot_slo_s=args.tpot_slo_s)
            print(mode, rate, json.dumps(per_rate[str(rate)]["tpot_s"]), flush=True)
        entry: dict[str, Any] = {"rates": per_rate}
        if mode == "pd":
            ttfts = asyncio.run(_handoff_share(base_url, vocab, 1024, 5))
            decode = serve.get_deployment_handle("Decode:bench", app_name=APP_NAME)
            seen = {}
            for _ in range(8 * args.num_decode):  # random routing: ask until every replica answered
                for record in decode.engine_stats.remote().result()["recent_transfers"]:
                    seen[(record["at_s"], record["put_s"])] = record
            transfers = sorted((t for t in seen.values() if t["prompt_tokens"] == 1024), key=lambda t: t["at_s"])
            transfers = transfers[-len(ttfts):]  # the sequential 1k-token requests just sent
            handoff = [t["put_s"] + t["pull_s"] for t in transfers]
            entry["handoff_1k"] = {
                "ttft_s": _percentiles(ttfts), "put_plus_pull_s": _percentiles(handoff),
                "kv_bytes": transfers[-1]["kv_bytes"] if transfers else None,
                "share_of_ttft": (float(np.median(handoff)) / float(np.median(ttfts))) if handoff else None,
            }
        results["modes"][mode] = entry
        serve.delete(APP_NAME)
    results["ratios_pd_over_colocated"] = {
        rate: {
            "tpot_p99": _ratio(results, rate, "tpot_s", "p99"), "ttft_p90": _ratio(results, rate, "ttft_s", "p90"),
            "goodput": _ratio(results, rate, "goodput_rps", None),
        }
        for rate in map(str, rates)
    }
    results["load_avg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    _plot(results, rates, args.output.replace(".json", ".png"))
    print(json.dumps(results["ratios_pd_over_colocated"], indent=2))
    serve.shutdown()
    return results


def _ratio(results: dict[str, Any], rate: str, metric: str, pct: str | None) -> float | None:
    pd_value = results["modes"]["pd"]["rates"][rate][metric]
    co_value = results["modes"]["colocated"]["rates"][rate][metric]
    if pct is not None:
        pd_value, co_value = pd_value[pct], co_value[pct]
    return None if not pd_value or not co_value else pd_value / co_value


def _plot(results: dict[str, Any], rates: list[float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for mode, style in (("colocated", "o-"), ("pd", "s--")):
        per_rate = results["modes"][mode]["rates"]
        for ax, metric, pct in ((axes[0], "ttft_s", "p90"), (axes[1], "tpot_s", "p99"), (axes[2], "e2e_s", "p99")):
            ax.plot(rates, [per_rate[str(r)][metric][pct] for r in rates], style, label=f"{mode} {pct}")
            ax.set_title(f"{metric} {pct}")
            ax.set_xlabel("request rate (req/s)")
            ax.set_ylabel("seconds")
            ax.legend()
    fig.suptitle("Model API: colocated vs prefill/decode disaggregated (same machine, one run)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
