"""Where the engine's time goes in the 64-request mixed workload (torch.profiler over decode-heavy steps).

    python -m benchmarks.engine_mixed_profile [--model 120m] [--quantization int8] [--warm-steps 40] [--steps 15]
    ray job submit --working-dir . -- python -m benchmarks.engine_mixed_profile

Same model and requests as `benchmarks.engine_throughput`'s mixed part; skips the prefill-heavy start,
then profiles a few steps (batch ~64 decodes) and prints the top operators by self CPU time.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    from torch.profiler import ProfilerActivity, profile

    from benchmarks import engine_throughput as bench
    from runtime.engine import LLMEngine, SamplingParams

    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_mixed_profile")
    parser.add_argument("--model", default="120m", choices=sorted(bench.MODELS))
    parser.add_argument("--quantization", default=None, choices=["int8"])
    parser.add_argument("--warm-steps", type=int, default=40)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args(argv)
    model_dir = bench.build_models("/tmp/strata-engine-bench", [args.model])[args.model]
    engine = LLMEngine(model_dir, quantization=args.quantization, max_model_len=1024, max_num_seqs=64, max_num_batched_tokens=1024)
    for index, (prompt, output_len) in enumerate(bench.workload(64, (32, 512), (16, 256))):
        engine.add_request(str(index), {"prompt_token_ids": prompt},
                           SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True))
    for _ in range(args.warm_steps):
        engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        elapsed = time.perf_counter() - start
    print(f"{args.steps} steps in {elapsed:.2f} s ({elapsed / args.steps * 1e3:.0f} ms/step)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
