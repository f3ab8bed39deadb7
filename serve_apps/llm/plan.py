"""Recommend a prefill:decode replica ratio for a workload and SLOs, from measured replica speeds.

    python -m serve_apps.llm.plan --model DIR --rate 4 --prompt-len 1024 --output-len 128 \
        --ttft-slo-s 1.0 --tpot-slo-s 0.1 [--output plan.json]
    ray job submit --working-dir . -- python -m serve_apps.llm.plan --model /models/tiny --rate 4

DistServe-style: one prefill replica (role "prefill") and one decode replica (role "decode") are
timed in this process; prefill is modelled as an M/D/1 queue (TTFT = service + queueing), decode
as batches whose step time must stay under the TPOT SLO. Each role is then sized on its own.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(kw_only=True, slots=True)
class Profile:
    """Measured speeds of one replica per role at the workload's prompt length."""

    prompt_len: int
    prefill_s: float  # one prompt, alone
    decode_step_s: dict[int, float]  # batch size -> seconds per decode step
    max_decode_batch: int  # by KV capacity: blocks for prompt + output per sequence


@dataclass(kw_only=True, slots=True)
class Plan:
    num_prefill: int
    num_decode: int
    ratio: str
    predicted_ttft_s: float
    decode_batch: int
    predicted_tpot_s: float
    prefill_capacity_rps: float
    decode_capacity_rps: float
    notes: list[str] = field(default_factory=list)


def mdl_ttft_s(rate_per_replica: float, service_s: float) -> float:
    """Mean time in an M/D/1 queue (Pollaczek-Khinchine): service + rho * service / (2 (1 - rho))."""
    rho = rate_per_replica * service_s
    if rho >= 1.0:
        return math.inf
    return service_s + rho * service_s / (2.0 * (1.0 - rho))


def recommend(
    profile: Profile, *, rate_rps: float, output_len: int, ttft_slo_s: float, tpot_slo_s: float,
    max_replicas: int = 64,
) -> Plan:
    if rate_rps <= 0:
        raise ValueError(f"rate must be > 0, got {rate_rps}")
    if output_len < 1:
        raise ValueError(f"output_len must be >= 1, got {output_len}")
    notes: list[str] = []
    num_prefill = next(
        (n for n in range(1, max_replicas + 1) if mdl_ttft_s(rate_rps / n, profile.prefill_s) <= ttft_slo_s),
        None,
    )
    if num_prefill is None:
        num_prefill = max_replicas
        notes.append(f"TTFT SLO {ttft_slo_s}s unreachable: one prefill alone takes {profile.prefill_s:.3f}s")
    fitting = [b for b, step in profile.decode_step_s.items() if step <= tpot_slo_s and b <= profile.max_decode_batch]
    if fitting:
        batch = max(fitting)
    else:
        batch = min(profile.decode_step_s)
        notes.append(f"TPOT SLO {tpot_slo_s}s unreachable: batch {batch} steps in {profile.decode_step_s[batch]:.3f}s")
    step_s = profile.decode_step_s[batch]
    # A decode replica holding `batch` sequences finishes one every step_s * output_len / batch seconds.
    decode_capacity = batch / (step_s * output_len)
    num_decode = min(max_replicas, max(1, math.ceil(rate_rps / decode_capacity)))
    divisor = math.gcd(num_prefill, num_decode)
    return Plan(
        num_prefill=num_prefill, num_decode=num_decode, ratio=f"{num_prefill // divisor}:{num_decode // divisor}",
        predicted_ttft_s=mdl_ttft_s(rate_rps / num_prefill, profile.prefill_s), decode_batch=batch,
        predicted_tpot_s=step_s, prefill_capacity_rps=1.0 / profile.prefill_s,
        decode_capacity_rps=decode_capacity, notes=notes,
    )


def _prompt(vocab_size: int, length: int, rng: random.Random) -> list[int]:
    return [rng.randrange(3, vocab_size) for _ in range(length)]


def measure(
    model_dir: str, *, prompt_len: int, output_len: int, batch_sizes: list[int], engine_kwargs: dict[str, Any],
    repeats: int = 3, decode_steps: int = 8,
) -> Profile:
    """Time one prefill-role and one decode-role engine in this process (no Serve, no network)."""
    from runtime.engine import LLMEngine, SamplingParams

    rng = random.Random(0)
    prefill = LLMEngine(model_dir, role="prefill", **engine_kwargs)
    vocab = prefill.tokenizer.vocab_size if hasattr(prefill.tokenizer, "vocab_size") else 256
    times = []
    for i in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        prefill.add_request(f"p{i}", _prompt(vocab, prompt_len, rng), SamplingParams(max_tokens=1, temperature=0))
        while prefill.has_unfinished_requests():
            prefill.step()
        if i:
            times.append(time.perf_counter() - start)
    stats = prefill.stats()
    del prefill
    decode = LLMEngine(model_dir, role="decode", **engine_kwargs)
    block_size = int(getattr(decode, "block_size", 16))
    blocks_per_seq = math.ceil((prompt_len + output_len) / block_size)
    max_batch = max(1, int(stats.get("num_total_blocks", 0)) // blocks_per_seq)
    step_s: dict[int, float] = {}
    params = SamplingParams(max_tokens=decode_steps + 2, temperature=0, ignore_eos=True)
    for batch in batch_sizes:
        ids = [f"d{batch}-{i}" for i in range(batch)]
        for request_id in ids:
            decode.add_request(request_id, _prompt(vocab, prompt_len, rng), params)
        started: set[str] = set()
        while len(started) < batch:  # run the prefills (decode role prefills itself without a package)
            for output in decode.step():
                started.add(output.request_id)
        start = time.perf_counter()
        for _ in range(decode_steps):
            decode.step()
        step_s[batch] = (time.perf_counter() - start) / decode_steps
        for request_id in ids:
            decode.abort_request(request_id)
    return Profile(
        prompt_len=prompt_len, prefill_s=sorted(times)[len(times) // 2], decode_step_s=step_s,
        max_decode_batch=max_batch,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m serve_apps.llm.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--rate", type=float, required=True, help="target requests per second")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--ttft-slo-s", type=float, default=1.0)
    parser.add_argument("--tpot-slo-s", type=float, default=0.1)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--quantization", choices=["int8"], default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--output", default=None, help="write the plan as JSON here")
    args = parser.parse_args(argv)
    engine_kwargs = {k: v for k, v in (("quantization", args.quantization), ("max_model_len", args.max_model_len)) if v}
    profile = measure(
        args.model, prompt_len=args.prompt_len, output_len=args.output_len,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")], engine_kwargs=engine_kwargs,
    )
    plan = recommend(
        profile, rate_rps=args.rate, output_len=args.output_len, ttft_slo_s=args.ttft_slo_s,
        tpot_slo_s=args.tpot_slo_s,
    )
    report = {"workload": vars(args), "profile": asdict(profile), "plan": asdict(plan)}
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return report


if __name__ == "__main__":
    main()
