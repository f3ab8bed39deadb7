"""Worst inter-token gap of a running stream while a 1.5 MB prompt arrives on the same Model API replica.

    python -m benchmarks.serve_big_prompt [--prompt-mb 1.5] [--repeats 3]
    ray job submit --working-dir . -- python -m benchmarks.serve_big_prompt

One `LLMServer` replica object (the class Serve runs, here driven on one asyncio loop in this process, without
Serve's transport) streams a long completion; once tokens flow, a request with a 1.5 MB prompt arrives. The
replica templates and tokenizes it (then refuses it: it is far past the context) while the stream runs. Reported:
the stream's worst and p99 inter-chunk gap during that window, for the current path (prepare on a worker thread,
`encode_batch`, which releases the GIL) and the old path in the same run (prepare on the event loop, `encode`,
which holds the GIL), and their ratio. Writes benchmarks/results/serve_big_prompt.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from typing import Any

import numpy as np

from runtime.engine.testing import build_tiny_model
from serve_apps.llm.errors import OpenAIError
from serve_apps.llm.protocol import GenerateRequest
from serve_apps.llm.server import LLMServer

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
SENTENCE = "the robot picks up the red cube and places it on the table. "
MAX_MODEL_LEN = 4096


class _OldPathServer(LLMServer):
    """The replica before #15: prepare() on the event loop, tokenizers' GIL-holding `encode`."""

    async def generate(self, request: dict[str, Any]):
        tokenizer = self.tokenizer
        tokenizer.encode = lambda text, add_special_tokens=True: tokenizer._tok.encode(
            text, add_special_tokens=add_special_tokens).ids
        try:
            prepared = self.prepare(GenerateRequest.model_validate(request))
        except OpenAIError as exc:
            yield exc.to_chunk()
            return
        async for chunk in self.stream(prepared):
            yield chunk


async def _one_run(server: LLMServer, big_prompt: str, tag: str) -> dict[str, Any]:
    stream_request = {"request_id": f"stream-{tag}", "model": "tiny", "prompt": SENTENCE,
                      "sampling": {"max_tokens": MAX_MODEL_LEN - 64, "ignore_eos": True, "temperature": 0}}
    big_request = {"request_id": f"big-{tag}", "model": "tiny", "prompt": big_prompt, "sampling": {"max_tokens": 4}}
    arrivals: list[float] = []
    window: dict[str, float] = {}
    flowing = asyncio.Event()

    async def consume() -> None:
        async for _chunk in server.generate(stream_request):
            arrivals.append(time.perf_counter())
            if len(arrivals) >= 20:
                flowing.set()
            if "end" in window and arrivals[-1] > window["end"] + 1.0:
                return  # a second of tokens after the big request: enough; closing aborts the stream

    consumer = asyncio.get_running_loop().create_task(consume())
    await flowing.wait()
    window["start"] = time.perf_counter()
    answer = [chunk async for chunk in server.generate(big_request)]
    window["end"] = time.perf_counter()
    await consumer
    assert "error" in answer[0], "the big prompt must be refused (past the context)"
    during = [b - a for a, b in zip(arrivals, arrivals[1:]) if b >= window["start"] and a <= window["end"]]
    steady = [b - a for a, b in zip(arrivals, arrivals[1:]) if b < window["start"]]
    return {
        "big_request_s": window["end"] - window["start"],
        "worst_gap_s": max(during) if during else None,
        "p99_gap_s": float(np.percentile(during, 99)) if during else None,
        "steady_median_gap_s": float(np.median(steady)) if steady else None,
        "num_chunks_during": len(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-mb", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "serve_big_prompt.json"))
    args = parser.parse_args()
    big_prompt = (SENTENCE * (int(args.prompt_mb * 1e6) // len(SENTENCE) + 1))[: int(args.prompt_mb * 1e6)]
    import ray

    from runtime.cluster import connect

    connect(num_cpus=2, include_dashboard=False)  # the replica's metrics need a Ray worker
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(os.path.join(tmp, "tiny"), max_position_embeddings=MAX_MODEL_LEN)
        config = {"model_id": "tiny", "model_source": model, "engine_kwargs": {"max_num_seqs": 4}}
        results: dict[str, list[dict[str, Any]]] = {"current": [], "old_path": []}
        for repeat in range(args.repeats):
            for name, cls in (("current", LLMServer), ("old_path", _OldPathServer)):
                server = cls(config)
                try:
                    results[name].append(asyncio.run(_one_run(server, big_prompt, f"{name}-{repeat}")))
                finally:
                    server.engine.shutdown()
                print(name, results[name][-1], flush=True)
    ray.shutdown()
    worst = {name: max(run["worst_gap_s"] or 0.0 for run in runs) for name, runs in results.items()}
    summary = {
        "prompt_chars": len(big_prompt), "repeats": args.repeats, "runs": results,
        "worst_gap_s": worst, "old_over_current_worst_gap": worst["old_path"] / max(worst["current"], 1e-9),
        "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as file:
        json.dump(summary, file, indent=2)
    print(json.dumps({k: summary[k] for k in ("worst_gap_s", "old_over_current_worst_gap")}, indent=2))


if __name__ == "__main__":
    main()
