"""CPU per request of the engine's output path: cumulative outputs (the baseline) vs delta outputs.

    python -m benchmarks.engine_output_kinds [--num-tokens 1000,4000,16000] [--stop]
    ray job submit --working-dir . -- python -m benchmarks.engine_output_kinds

Feeds one sequence token by token through the engine's OutputProcessor (stop checks, incremental
detokenization, one RequestOutput per token, as a streaming server gets them) with a tiny byte-level
tokenizer, and reports the time per token of each output kind. A cumulative output copies the whole
text, token ids and logprobs so far every step, so its cost per token grows with the output; a delta
output carries only the new token. Writes benchmarks/results/engine_output_kinds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

from runtime.engine.output_processor import OutputProcessor
from runtime.engine.sampling_params import RequestOutputKind, SamplingParams
from runtime.engine.sequence import Request, SequenceStatus
from runtime.engine.testing import build_tiny_model
from runtime.engine.tokenizer import Tokenizer

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def time_per_token_us(tokenizer: Tokenizer, kind: RequestOutputKind, num_tokens: int, stop: bool) -> float:
    rng = random.Random(0)
    token_ids = [rng.randrange(10, tokenizer.vocab_size) for _ in range(num_tokens)]
    params = SamplingParams(max_tokens=num_tokens, ignore_eos=True, logprobs=1, output_kind=kind,
                            stop=["\x00never\x00"] if stop else None)
    request = Request("r", None, [1, 2, 3], params, 0, None)
    seq = request.seqs[0]
    processor = OutputProcessor(tokenizer, max_model_len=num_tokens + 8)
    start = time.perf_counter()
    for token_id in token_ids:
        reason = processor.append_token(seq, token_id, {token_id: -1.0})
        if reason is not None:
            seq.status = SequenceStatus.FINISHED
        processor.make_output(request)
    return (time.perf_counter() - start) / num_tokens * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-tokens", default="1000,4000,16000")
    parser.add_argument("--stop", action="store_true", help="with a stop string (text held back and searched)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as model_dir:
        build_tiny_model(model_dir, "llama")
        tokenizer = Tokenizer(model_dir)
    rows = []
    for num_tokens in (int(n) for n in args.num_tokens.split(",")):
        row = {"num_tokens": num_tokens}
        for kind in (RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA):
            row[f"{kind.value}_us_per_token"] = time_per_token_us(tokenizer, kind, num_tokens, args.stop)
        row["cumulative_over_delta"] = row["cumulative_us_per_token"] / row["delta_us_per_token"]
        rows.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, "engine_output_kinds.json")
    with open(path, "w") as f:
        json.dump({"stop": args.stop, "load_avg": os.getloadavg()[0], "rows": rows}, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    main()
