"""Engine throughput against transformers `generate`, same models, same prompts, one run.

    python -m benchmarks.engine_throughput [--quick] [--models 50m,120m] [--trained-model DIR] [--threads N]
        [--num-requests 64]
    ray job submit --working-dir . -- python -m benchmarks.engine_throughput --quick

For a ~50M and a ~120M Llama (random weights, fp32 and int8) it measures: batch-1 decode tokens/s
and its fraction of the physical floor (one vector pushed through every linear weight of the
checkpoint with plain torch matmuls, timed in the same run), and, to show the engine's own overhead,
its fraction of the same floor run with the kernel the engine uses on CPU (oneDNN-packed weights,
which read memory ~2x faster than plain torch.mm's gemv here); a 64-request mixed workload (prompts
32-512, outputs 16-256) against transformers in static batches; the prefix-cache benefit on a
shared system prompt; int8 memory saving and greedy agreement with fp32 (on a trained LM when
--trained-model is given, e.g. the output of `python -m train_apps.lm_pretrain`). Writes
benchmarks/results/engine_throughput.json (+ .png) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

import torch
from safetensors import safe_open

from runtime.engine import LLMEngine, SamplingParams
from runtime.engine.device import configure_threads
from runtime.engine.layers import paged_decode
from runtime.engine.layers.linear import PackedLinear, can_pack
from runtime.engine.testing import build_tiny_model

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
MODELS = {
    "50m": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4),
    "120m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4),
}
VOCAB_SIZE = 32000
HF_STATIC_BATCH = 16


def build_models(cache_dir: str, names: list[str]) -> dict[str, str]:
    dirs = {}
    for name in names:
        path = os.path.join(cache_dir, f"llama-{name}")
        if not os.path.isfile(os.path.join(path, "config.json")):
            build_tiny_model(path, "llama", vocab_size=VOCAB_SIZE, max_position_embeddings=2048,
                             initializer_range=0.02, **MODELS[name])
        dirs[name] = path
    return dirs


def median_time(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def checkpoint_linear_weights(model_dir: str) -> list[torch.Tensor]:
    weights = []
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), framework="pt") as f:
                weights += [f.get_tensor(k).float() for k in f.keys() if k.endswith("proj.weight") or k == "lm_head.weight"]
    return weights


def linear_floor_s(model_dir: str, repeats: int) -> tuple[float, int]:
    """One vector through every linear weight of the checkpoint, back to back, plain torch.mm."""
    weights = checkpoint_linear_weights(model_dir)
    inputs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    transposed = [w.t() for w in weights]

    def push() -> None:
        for w in transposed:
            torch.mm(inputs[w.shape[0]], w)

    return median_time(push, repeats), sum(w.numel() * 4 for w in weights)


def packed_linear_floor_s(model_dir: str, repeats: int) -> float | None:
    """The same push with the engine's CPU kernel (oneDNN-packed weights, as PackedLinear runs them):
    what the engine's decode step would take if everything but the linears were free."""
    weights = checkpoint_linear_weights(model_dir)
    if not can_pack(weights[0]):
        return None
    inputs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    layers = [PackedLinear(w) for w in weights]
    del weights

    def push() -> None:
        for layer in layers:
            layer(inputs[layer.weight.shape[1]])

    return median_time(push, repeats)


def engine_decode_step_s(model_dir: str, quantization: str | None, num_tokens: int) -> float:
    engine = LLMEngine(model_dir, quantization=quantization, max_model_len=1024, max_num_seqs=64,
                       num_threads=torch.get_num_threads())
    engine.add_request("b1", {"prompt_token_ids": list(range(100, 132))},
                       SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True))
    engine.step()  # prefill
    steps = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - start)
    return statistics.median(steps)


def hf_decode_step_s(model, num_tokens: int) -> float:
    ids = torch.tensor([list(range(100, 132))])

    def generate(n: int) -> None:
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    with torch.inference_mode():
        generate(4)
        start = time.perf_counter()
        generate(1)
        one = time.perf_counter() - start
        start = time.perf_counter()
        generate(num_tokens)
        many = time.perf_counter() - start
    return (many - one) / (num_tokens - 1)


def workload(num_requests: int, prompt_range: tuple[int, int], output_range: tuple[int, int],
             seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(3, VOCAB_SIZE) for _ in range(rng.randint(*prompt_range))], rng.randint(*output_range))
            for _ in range(num_requests)]


def engine_mixed(model_dir: str, quantization: str | None, requests) -> dict:
    engine = LLMEngine(model_dir, quantization=quantization, max_model_len=1024, max_num_seqs=64,
                       max_num_batched_tokens=1024)
    start = time.perf_counter()
    for i, (prompt, output_len) in enumerate(requests):
        engine.add_request(str(i), {"prompt_token_ids": prompt},
                           SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True))
    generated = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            generated += len(out.outputs[0].delta_token_ids)
    elapsed = time.perf_counter() - start
    return {"time_s": elapsed, "generated_tokens": generated, "tokens_per_s": generated / elapsed,
            "preemptions": engine.stats()["num_preemptions"]}


def hf_mixed(model, requests, batch_size: int) -> dict:
    """Static batches in arrival order, left-padded; a batch runs until its longest output is done."""
    start = time.perf_counter()
    useful = 0
    with torch.inference_mode():
        for b in range(0, len(requests), batch_size):
            batch = requests[b:b + batch_size]
            width = max(len(p) for p, _ in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, (prompt, _) in enumerate(batch):
                ids[row, width - len(prompt):] = torch.tensor(prompt)
                mask[row, width - len(prompt):] = 1
            new = max(n for _, n in batch)
            model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=0)
            useful += sum(n for _, n in batch)
    elapsed = time.perf_counter() - start
    return {"time_s": elapsed, "generated_tokens": useful, "tokens_per_s": useful / elapsed}


def prefix_benefit(model_dir: str, num_requests: int, system_len: int) -> dict:
    rng = random.Random(1)
    system = [rng.randrange(3, VOCAB_SIZE) for _ in range(system_len)]
    prompts = [system + [rng.randrange(3, VOCAB_SIZE) for _ in range(32)] for _ in range(num_requests + 1)]
    out = {}
    for caching in (True, False):
        engine = LLMEngine(model_dir, enable_prefix_caching=caching, max_model_len=1024)
        params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        engine.add_request("warm", {"prompt_token_ids": prompts[0]}, params)  # the system prompt is now cached
        while engine.has_unfinished_requests():
            engine.step()
        computed_before = engine.stats()["num_prompt_tokens_computed"]
        start = time.perf_counter()
        for i, prompt in enumerate(prompts[1:]):
            engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
        ttft = []
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished:
                    ttft.append(o.metrics["first_token_time"] - o.metrics["arrival_time"])
        out["on" if caching else "off"] = {
            "time_s": time.perf_counter() - start, "mean_ttft_s": statistics.mean(ttft),
            "prompt_tokens_computed": engine.stats()["num_prompt_tokens_computed"] - computed_before,
            "hit_rate": engine.stats()["prefix_cache_hit_rate"]}
    out["speedup"] = out["off"]["time_s"] / out["on"]["time_s"]
    return out


def int8_agreement(model_dir: str, num_prompts: int, num_tokens: int) -> dict:
    """Greedy fp32 vs int8: free-running positional agreement, and teacher-forced agreement (int8's
    next token given fp32's prefix, which isolates per-position errors from divergence)."""
    full = LLMEngine(model_dir)
    int8 = LLMEngine(model_dir, quantization="int8")
    tokenizer = full.tokenizer
    seeds = ["def ", "import os\n", "class Node:\n", "for i in range(", "return self.", "# Copyright",
             "if __name__ ==", "The quick brown"][:num_prompts]
    free = forced = total = 0
    params = SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True)
    for i, seed in enumerate(seeds):
        prompt = tokenizer.encode(seed)
        runs = {}
        for name, engine in (("full", full), ("int8", int8)):
            engine.add_request(f"{name}{i}", {"prompt_token_ids": prompt}, params)
            while engine.has_unfinished_requests():
                for o in engine.step():
                    runs[name] = o.outputs[0].token_ids
        free += sum(a == b for a, b in zip(runs["full"], runs["int8"]))
        for pos in range(len(runs["full"])):  # prefix caching makes each of these a short prefill
            int8.add_request(f"tf{i}-{pos}", {"prompt_token_ids": prompt + runs["full"][:pos]},
                             SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
            while int8.has_unfinished_requests():
                for o in int8.step():
                    forced += o.outputs[0].token_ids == [runs["full"][pos]]
        total += len(runs["full"])
    return {"model": model_dir, "free_running": free / total, "teacher_forced": forced / total,
            "positions": total, "linear_weight_saving": int8.memory_report()["linear_weight_saving"]}


def main() -> None:
    parser = argparse.ArgumentParser(description="engine throughput vs transformers")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50m only, few short requests")
    parser.add_argument("--models", default=None, help="comma list of 50m,120m")
    parser.add_argument("--trained-model", default=None, help="HF dir of a trained LM for int8 agreement")
    parser.add_argument("--num-requests", type=int, default=64, help="mixed workload size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU allotment)")
    parser.add_argument("--model-cache", default=os.path.join("/tmp", "strata-engine-bench"))
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "engine_throughput.json"))
    args = parser.parse_args()
    import transformers

    threads = configure_threads(args.threads)
    names = (args.models or ("50m" if args.quick else "50m,120m")).split(",")
    decode_tokens = 16 if args.quick else 128
    requests = workload(8, (32, 96), (8, 32)) if args.quick else workload(args.num_requests, (32, 512), (16, 256))
    load_before = os.getloadavg()
    results = {"machine": {"threads": threads, "cpu": platform.processor() or platform.machine(),
                           "torch": torch.__version__, "numba": paged_decode.numba.__version__ if paged_decode.AVAILABLE
                           else None, "load_avg_before": load_before},
               "config": {"quick": args.quick, "decode_tokens": decode_tokens, "num_requests": len(requests),
                          "hf_static_batch": HF_STATIC_BATCH}, "models": {}}
    for name, model_dir in build_models(args.model_cache, names).items():
        floor_s, linear_bytes = linear_floor_s(model_dir, repeats=5 if args.quick else 20)
        packed_floor_s = packed_linear_floor_s(model_dir, repeats=5 if args.quick else 20)
        hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        entry = {"params_m": sum(p.numel() for p in hf.parameters()) / 1e6, "floor_step_s": floor_s,
                 "floor_bandwidth_gb_s": linear_bytes / floor_s / 1e9, "packed_floor_step_s": packed_floor_s,
                 "hf_decode_step_s": hf_decode_step_s(hf, decode_tokens)}
        entry["hf_floor_fraction"] = floor_s / entry["hf_decode_step_s"]
        log(name, floor_ms=1e3 * floor_s, packed_floor_ms=1e3 * (packed_floor_s or 0),
            hf_step_ms=1e3 * entry["hf_decode_step_s"])
        entry["hf_mixed"] = hf_mixed(hf, requests, HF_STATIC_BATCH)
        log(name, hf_mixed=entry["hf_mixed"])
        del hf
        for quant in (None, "int8"):
            key = quant or "fp32"
            step_s = engine_decode_step_s(model_dir, quant, decode_tokens)
            mixed = engine_mixed(model_dir, quant, requests)
            entry[key] = {"decode_step_s": step_s, "decode_tokens_per_s": 1 / step_s,
                          "floor_fraction": floor_s / step_s,
                          "packed_floor_fraction": packed_floor_s / step_s if packed_floor_s else None,
                          "mixed": mixed,
                          "mixed_speedup_vs_hf": mixed["tokens_per_s"] / entry["hf_mixed"]["tokens_per_s"],
                          "memory": LLMEngine(model_dir, quantization=quant, num_kvcache_blocks=8,
                                               max_model_len=128).memory_report()}
            log(name, key, step_ms=1e3 * step_s, floor_fraction=floor_s / step_s, mixed=mixed)
        entry["prefix_cache"] = prefix_benefit(model_dir, 4 if args.quick else 16, 128 if args.quick else 384)
        log(name, prefix_cache=entry["prefix_cache"])
        results["models"][name] = entry
    if args.trained_model:
        results["int8_agreement"] = int8_agreement(args.trained_model, 2 if args.quick else 8,
                                                   16 if args.quick else 64)
    results["machine"]["load_avg_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print_table(results)
    plot(results, args.out.removesuffix(".json") + ".png")
    print(f"wrote {args.out}")


def log(*parts, **values) -> None:
    print(" ".join(map(str, parts)), json.dumps(values, default=float), f"load={os.getloadavg()[0]:.1f}", flush=True)


def print_table(results: dict) -> None:
    print(f"threads={results['machine']['threads']} load before/after={results['machine']['load_avg_before'][0]:.1f}"
          f"/{results['machine']['load_avg_after'][0]:.1f}")
    header = (f"{'model':>6} {'mode':>5} {'b1 tok/s':>9} {'floor %':>8} {'packed %':>9} {'mixed tok/s':>12} "
              f"{'vs HF':>6} {'lin MB':>7}")
    print(header)
    for name, e in results["models"].items():
        print(f"{name:>6} {'hf':>5} {1 / e['hf_decode_step_s']:9.1f} {100 * e['hf_floor_fraction']:7.0f}% {'':>9} "
              f"{e['hf_mixed']['tokens_per_s']:12.1f} {1.0:6.2f} {'':>7}")
        for key in ("fp32", "int8"):
            m = e[key]
            packed = f"{100 * m['packed_floor_fraction']:8.0f}%" if m.get("packed_floor_fraction") else f"{'-':>9}"
            print(f"{name:>6} {key:>5} {m['decode_tokens_per_s']:9.1f} {100 * m['floor_fraction']:7.0f}% {packed} "
                  f"{m['mixed']['tokens_per_s']:12.1f} {m['mixed_speedup_vs_hf']:6.2f} "
                  f"{m['memory']['linear_weight_bytes'] / 1e6:7.1f}")
        print(f"{name:>6} floor {1e3 * e['floor_step_s']:.2f} ms (plain torch.mm), "
              f"{1e3 * (e.get('packed_floor_step_s') or float('nan')):.2f} ms (oneDNN-packed)")
        p = e["prefix_cache"]
        print(f"{name:>6} prefix cache: {p['speedup']:.2f}x faster, prompt tokens computed "
              f"{p['on']['prompt_tokens_computed']} vs {p['off']['prompt_tokens_computed']}")
    if "int8_agreement" in results:
        a = results["int8_agreement"]
        print(f"int8 vs fp32 greedy on {a['model']}: free-running {100 * a['free_running']:.1f}%, "
              f"teacher-forced {100 * a['teacher_forced']:.1f}% of {a['positions']} positions")


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = list(results["models"])
    for ax, metric, title in ((axes[0], "decode", "batch-1 decode tok/s"), (axes[1], "mixed", "mixed workload tok/s")):
        for offset, key in enumerate(("hf", "fp32", "int8")):
            values = []
            for name in names:
                e = results["models"][name]
                if metric == "decode":
                    values.append(1 / e["hf_decode_step_s"] if key == "hf" else e[key]["decode_tokens_per_s"])
                else:
                    values.append(e["hf_mixed"]["tokens_per_s"] if key == "hf" else e[key]["mixed"]["tokens_per_s"])
            ax.bar([i + 0.27 * offset for i in range(len(names))], values, width=0.27, label=key)
        ax.set_xticks([i + 0.27 for i in range(len(names))], names)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
