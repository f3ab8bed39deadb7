"""Cost of the structured-outputs mask per decode step, against the same engine unconstrained, one run.

    python -m benchmarks.structured_outputs_overhead [--quick] [--models 50m,120m] [--batch-sizes 1,64]
        [--threads N] [--device cpu|cuda] [--num-steps S]
    ray job submit --working-dir . -- python -m benchmarks.structured_outputs_overhead --quick

For a ~50M (and ~120M) Llama with random weights and a 32,000-token byte-level BPE (trained here on
the Python standard library's sources, so the mask is computed over a realistically large
vocabulary), two engines run side by side at batch 1 and batch 64: a baseline whose requests are
unconstrained and one whose requests all follow a JSON schema (records with strings, numbers and
arrays, long enough that no request completes while it is measured). Their decode steps are timed
alternately, one step each, so machine load hits both alike; the median step of each gives the
overhead fraction (target: under 10% of a decode step). Reported beside it: the time the sampler
spends collecting and unpacking the masks (their fill, started before the forward, overlaps it)
and the per-request grammar compile time (the first request also builds the token table). Writes
benchmarks/results/structured_outputs_overhead.json (_quick.json with --quick) and prints a table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import sysconfig
import time

import torch

from benchmarks.engine_throughput import MODELS, VOCAB_SIZE
from runtime.engine import LLMEngine, SamplingParams
from runtime.engine.device import configure_threads
from runtime.engine.structured_outputs import StructuredOutputsParams
from runtime.engine.testing import build_tiny_model

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
PROMPT_LEN = 32
# Every field bounded, so a random-weight model keeps moving through keys, strings and numbers (the
# states a real output visits) instead of spinning in one unbounded digit run or whitespace.
RECORD = {"type": "object", "properties": {
    "id": {"type": "integer", "minimum": 0, "maximum": 99999}, "name": {"type": "string", "maxLength": 24},
    "score": {"type": "integer", "minimum": -100, "maximum": 100},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["id", "name", "score", "tags"], "additionalProperties": False}
SCHEMA = {"type": "object", "properties": {"records": {"type": "array", "items": RECORD, "minItems": 16}},
          "required": ["records"], "additionalProperties": False}


def train_code_tokenizer(path: str, corpus_bytes: int = 6_000_000) -> None:
    """A 32k byte-level BPE trained on the standard library's .py files (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts, total = [], 0
    for name in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True)):
        with open(name, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
        total += len(texts[-1])
        if total > corpus_bytes:
            break
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save(path)


def build_model(cache_dir: str, name: str) -> str:
    path = os.path.join(cache_dir, f"llama-{name}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        build_tiny_model(path, "llama", vocab_size=VOCAB_SIZE, max_position_embeddings=2048,
                         initializer_range=0.02, **MODELS[name])
        train_code_tokenizer(os.path.join(path, "tokenizer.json"))  # replaces the tiny test tokenizer
    return path


class MaskTimer:
    """Wraps an engine's GrammarBackend.forbidden to add up the time the sampler waits for and unpacks masks."""

    def __init__(self, engine: LLMEngine):
        self.total_s = 0.0
        self._allowed = engine.grammar.forbidden
        engine.grammar.forbidden = self

    def __call__(self, *args):
        start = time.perf_counter()
        try:
            return self._allowed(*args)
        finally:
            self.total_s += time.perf_counter() - start


def start_engine(model_dir: str, batch_size: int, max_tokens: int, constrained: bool,
                 device: str = "cpu", num_threads: int | None = None) -> tuple[LLMEngine, float]:
    """An engine with `batch_size` requests prefilled and decoding; returns it and the mean compile time."""
    num_blocks = batch_size * -(-(PROMPT_LEN + max_tokens + 1) // 16) + 4
    engine = LLMEngine(model_dir, max_num_seqs=batch_size, max_num_batched_tokens=max(2048, batch_size * PROMPT_LEN),
                       num_kvcache_blocks=num_blocks, block_size=16, enable_prefix_caching=False, device=device,
                       dtype="float32", num_threads=num_threads)
    structured = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True) if constrained else None
    add_s = 0.0
    for i in range(batch_size):
        prompt = [(7919 * (i * PROMPT_LEN + j)) % (VOCAB_SIZE - 3) + 3 for j in range(PROMPT_LEN)]
        params = SamplingParams(temperature=1.0, seed=i, max_tokens=max_tokens, ignore_eos=True,
                                structured_outputs=structured)
        start = time.perf_counter()
        engine.add_request(f"r{i}", {"prompt_token_ids": prompt}, params)
        add_s += time.perf_counter() - start
    while any(seq.num_output_tokens == 0 for seq in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    return engine, add_s / batch_size


def timed_step(engine: LLMEngine, batch_size: int) -> float | None:
    """One decode step's seconds, or None when the batch was not full (a request finished).
    A step ends with the sampled token ids on the host, so no device work is left outside the timing."""
    if len(engine.scheduler.running) != batch_size:
        return None
    start = time.perf_counter()
    engine.step()
    return time.perf_counter() - start


def measure(model_dir: str, batch_size: int, num_steps: int, device: str, num_threads: int) -> dict:
    max_tokens = num_steps + 8
    baseline, _ = start_engine(model_dir, batch_size, max_tokens, False, device, num_threads)
    constrained, compile_s = start_engine(model_dir, batch_size, max_tokens, True, device, num_threads)
    timer = MaskTimer(constrained)
    for engine in (baseline, constrained):  # warm-up steps, not timed
        engine.step()
    base_steps, masked_steps = [], []
    mask_before = timer.total_s
    for _ in range(num_steps):
        base_steps.append(timed_step(baseline, batch_size))
        masked_steps.append(timed_step(constrained, batch_size))
    kept_base = [s for s in base_steps if s is not None]
    kept_masked = [s for s in masked_steps if s is not None]
    base_s, masked_s = statistics.median(kept_base), statistics.median(kept_masked)
    outputs = [seq.output_token_ids for seq in constrained.scheduler.running]
    return {"batch_size": batch_size, "baseline_step_s": base_s, "constrained_step_s": masked_s,
            "overhead_fraction": masked_s / base_s - 1.0,
            "mask_collect_s_per_step": (timer.total_s - mask_before) / max(len(kept_masked), 1),
            "grammar_compile_s_per_request": compile_s,
            "num_steps_kept": {"baseline": len(kept_base), "constrained": len(kept_masked)},
            "sample_output": constrained.tokenizer.decode(outputs[0])[:200] if outputs else None}


def main() -> None:
    parser = argparse.ArgumentParser(description="structured-outputs mask overhead per decode step")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50m only, few steps")
    parser.add_argument("--models", default=None, help="comma list of 50m,120m")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU allotment)")
    parser.add_argument("--num-steps", type=int, default=None, help="timed decode steps per engine (12 quick, 48)")
    parser.add_argument("--device", default="cpu", help="engine device: cpu, cuda or cuda:N")
    parser.add_argument("--model-cache", default=os.path.join("/tmp", "strata-structured-outputs-bench"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    names = (args.models or ("50m" if args.quick else "50m,120m")).split(",")
    num_steps = args.num_steps or (12 if args.quick else 48)
    suffix = ("_quick" if args.quick else "") + ("" if args.device == "cpu" else "_" + args.device.split(":")[0])
    out = args.out or os.path.join(RESULTS_DIR, f"structured_outputs_overhead{suffix}.json")
    results = {"machine": {"threads": threads, "cpu": platform.processor() or platform.machine(),
                           "torch": torch.__version__, "device": args.device,
                           "load_avg_before": os.getloadavg()},
               "config": {"quick": args.quick, "num_steps": num_steps, "prompt_len": PROMPT_LEN, "schema": SCHEMA,
                          "vocab_size": VOCAB_SIZE},
               "models": {}}
    for name in names:
        model_dir = build_model(args.model_cache, name)
        results["models"][name] = {}
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            entry = measure(model_dir, batch_size, num_steps, args.device, threads)
            results["models"][name][f"batch_{batch_size}"] = entry
            print(f"{name} batch {batch_size:>3}: step {1e3 * entry['baseline_step_s']:7.2f} ms -> "
                  f"{1e3 * entry['constrained_step_s']:7.2f} ms with the JSON-schema mask "
                  f"(overhead {100 * entry['overhead_fraction']:+.1f}%, mask collect "
                  f"{1e3 * entry['mask_collect_s_per_step']:.2f} ms/step, compile "
                  f"{1e3 * entry['grammar_compile_s_per_request']:.2f} ms/request)", flush=True)
    results["machine"]["load_avg_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
