"""Serve models behind an OpenAI-compatible API, colocated or with prefill/decode disaggregation.

    python -m serve_apps.llm --model DIR [--model DIR2 ...] [--model-id NAME] [--mode pd|colocated]
        [--num-prefill N] [--num-decode M] [--quantization int8] [--port 8000] [--api-key KEY]
    ray job submit --working-dir . -- python -m serve_apps.llm --model /models/tiny --mode pd --num-prefill 1 --num-decode 2

Joins RAY_ADDRESS or starts a local cluster, prints the base URL and blocks until Ctrl-C.
Before deploying it checks the replicas against the cluster's CPUs (runtime.placement_fit): on an
embedded cluster the default per-replica CPUs shrink to fit, a given --num-cpus-per-replica does not;
a cluster that cannot hold them, and has no autoscaler to grow, is an error naming CPUs and flags.
The same app from a config file: `serve run cluster_configs/serve/llm_pd.yaml`.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from ray import serve

from runtime.cluster import connect, place
from runtime.placement_fit import ReplicaGroup
from serve_apps.llm.builder import build_openai_app, build_pd_openai_app
from serve_apps.llm.config import LLMServingArgs
from serve_apps.llm.placement import replica_groups, with_num_cpus

DEFAULT_NUM_CPUS_PER_REPLICA = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve_apps.llm", description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="HF-format model dir (repeatable)")
    parser.add_argument("--model-id", action="append", default=[], help="served name per --model")
    parser.add_argument("--mode", choices=["pd", "colocated"], default="pd")
    parser.add_argument("--num-prefill", type=int, default=1)
    parser.add_argument("--num-decode", type=int, default=1)
    parser.add_argument("--num-replicas", type=int, default=1, help="colocated LLMServer replicas")
    parser.add_argument("--num-cpus-per-replica", type=float, default=None,
                        help=f"CPUs per engine replica (default {DEFAULT_NUM_CPUS_PER_REPLICA:g}; on an embedded "
                             "cluster the default shrinks to fit its CPUs, a value given here never does)")
    parser.add_argument("--quantization", choices=["int8"], default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--min-pd-prompt-tokens", type=int, default=32, help="shorter prompts skip prefill")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("STRATA_API_KEY"))
    parser.add_argument("--name", default="llm", help="Serve application name")
    return parser.parse_args(argv)


def serving_args(args: argparse.Namespace) -> LLMServingArgs:
    for name in ("num_prefill", "num_decode", "num_replicas"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.model_id and len(args.model_id) != len(args.model):
        raise ValueError(f"give one --model-id per --model ({len(args.model)}), got {len(args.model_id)}")
    engine_kwargs: dict[str, Any] = {}
    for key in ("quantization", "dtype", "max_model_len"):
        if getattr(args, key) is not None:
            engine_kwargs[key] = getattr(args, key)
    num_cpus = DEFAULT_NUM_CPUS_PER_REPLICA if args.num_cpus_per_replica is None else args.num_cpus_per_replica
    if num_cpus <= 0:
        raise ValueError(f"--num-cpus-per-replica must be > 0, got {num_cpus}")
    actor = {"ray_actor_options": {"num_cpus": num_cpus}}
    configs = []
    for index, model_dir in enumerate(args.model):
        configs.append(
            {
                "model_id": args.model_id[index] if args.model_id else None,
                "model_source": model_dir,
                "engine_kwargs": engine_kwargs,
                "deployment_config": {"num_replicas": args.num_replicas, **actor},
                "prefill_deployment_config": {"num_replicas": args.num_prefill, **actor},
                "decode_deployment_config": {"num_replicas": args.num_decode, **actor},
                "kv_transfer_config": {"min_prompt_tokens": args.min_pd_prompt_tokens},
            }
        )
    return LLMServingArgs(llm_configs=configs, api_key=args.api_key)


def cli_replica_groups(args: argparse.Namespace, serving: LLMServingArgs) -> list[ReplicaGroup]:
    """The app's CPU asks; a --num-cpus-per-replica given is the user's and never shrunk."""
    return replica_groups(serving, args.mode, cpu_flag="--num-cpus-per-replica",
                          fixed=args.num_cpus_per_replica is not None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    serving = serving_args(args)
    connect()
    fit = place(cli_replica_groups(args, serving), prog="python -m serve_apps.llm")
    serving = with_num_cpus(serving, args.mode, fit.num_cpus)
    serve.start(http_options={"host": args.host, "port": args.port})
    builder = build_pd_openai_app if args.mode == "pd" else build_openai_app
    serve.run(builder(serving), name=args.name, route_prefix="/")
    models = ", ".join(config.model_id for config in serving.llm_configs)
    print(f"Model API ({args.mode}) serving [{models}] at http://{args.host}:{args.port}/v1", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(args.name)


if __name__ == "__main__":
    main()
