"""Serve models behind an OpenAI-compatible API, colocated or with prefill/decode disaggregation.

    python -m serve_apps.llm --model DIR_OR_HF_ID [--model ...] [--served-model-name NAME ...] [--mode pd|colocated]
        [--num-prefill N] [--num-decode M] [--quantization int8|fp8] [--host 127.0.0.1] [--port 8000]
        [--api-key-file PATH] [--allow-unauthenticated] [--enable-docs]
    ray job submit --working-dir . -- python -m serve_apps.llm --model /models/tiny --mode pd --num-prefill 1 --num-decode 2

Examples:
    # a Hugging Face id, found offline in the local cache (HF_HUB_CACHE / HF_HOME); nothing is downloaded
    python -m serve_apps.llm --model Qwen/Qwen3-0.6B --mode colocated --max-num-seqs 32 --kv-cache-dtype int8
    # tool calling: tool_choice "auto" parses the model's <tool_call>...</tool_call> (named/required always work)
    python -m serve_apps.llm --model Qwen/Qwen3-0.6B --enable-auto-tool-choice --tool-call-parser hermes
    # reasoning: <think>...</think> goes to message.reasoning_content
    python -m serve_apps.llm --model Qwen/Qwen3-0.6B --reasoning-parser qwen3 --tool-call-parser hermes
    # Llama 3.1 under its own name and chat template file, with no sampling defaults from generation_config.json
    python -m serve_apps.llm --model /models/llama-3.1-8b --served-model-name llama --enable-auto-tool-choice
        --tool-call-parser llama3_json --chat-template ./llama3.1_json.jinja --generation-config vllm

API key: $STRATA_API_KEY or --api-key-file, never a flag (a command line shows in `ps` and in job entrypoints).
A host other than loopback needs a key, or --allow-unauthenticated said out loud.

Joins RAY_ADDRESS or starts a local cluster, prints the base URL and blocks until Ctrl-C.
If Serve's HTTP proxy already runs on this cluster bound to another host or port, it stops with both named
(Serve itself would warn and serve on the old address).
Before deploying it checks the replicas against the cluster's CPUs (runtime.placement_fit): on an
embedded cluster the default per-replica CPUs shrink to fit, a given --num-cpus-per-replica does not;
a cluster that cannot hold them, and has no autoscaler to grow, is an error naming CPUs and flags.
The same app from a config file: `serve run cluster_configs/serve/llm_pd.yaml`.
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from ray import serve

from runtime.cluster import connect, is_loopback_host, place
from runtime.placement_fit import ReplicaGroup
from serve_apps.llm.builder import build_openai_app, build_pd_openai_app
from serve_apps.llm.config import API_KEY_ENV, REASONING_PARSERS, TOOL_CALL_PARSERS, LLMServingArgs
from serve_apps.llm.placement import replica_groups, with_num_cpus

DEFAULT_NUM_CPUS_PER_REPLICA = 1.0
# runtime.engine.config's choices, repeated so that --help need not import torch (a test keeps them equal)
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("int8", "fp8")
KV_CACHE_DTYPES = ("auto", "int8")
# engine flags by EngineConfig field name; only those the user gave reach engine_kwargs
ENGINE_FLAGS = ("dtype", "quantization", "kv_cache_dtype", "max_model_len", "max_num_seqs",
                "max_num_batched_tokens", "block_size", "enable_prefix_caching")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class _RefuseKeyOnCommandLine(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not accepted: a key on the command line shows in `ps` and in job "
                     f"entrypoints; export {API_KEY_ENV}=KEY or pass --api-key-file PATH")


def build_parser() -> argparse.ArgumentParser:
    summary, _, usage = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="python -m serve_apps.llm", description=summary, epilog=usage,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="HF-format model directory, or a Hugging Face id org/name[@revision] found offline in "
                             "the local cache (HF_HUB_CACHE, else HF_HOME/hub); repeatable, one model each")
    parser.add_argument("--served-model-name", "--model-id", dest="served_model_name", action="append", default=[],
                        help="name clients send as `model`, one per --model in order (default: the Hugging Face id "
                             "or the directory name); --model-id is the older spelling")
    parser.add_argument("--mode", choices=["pd", "colocated"], default="pd",
                        help="pd: prefill and decode replicas apart; colocated: one engine does both (default pd)")
    parser.add_argument("--num-prefill", type=int, default=1, help="prefill replicas per model (pd mode)")
    parser.add_argument("--num-decode", type=int, default=1, help="decode replicas per model (pd mode)")
    parser.add_argument("--num-replicas", type=int, default=1, help="LLMServer replicas per model (colocated mode)")
    parser.add_argument("--num-cpus-per-replica", type=float, default=None,
                        help=f"CPUs per engine replica (default {DEFAULT_NUM_CPUS_PER_REPLICA:g}; on an embedded "
                             "cluster the default shrinks to fit its CPUs, a value given here never does)")
    engine = parser.add_argument_group("engine (default: the engine's own)")
    engine.add_argument("--dtype", choices=DTYPES, default=None,
                        help="weights and activations; auto: float32 on CPU, the checkpoint's dtype on CUDA")
    engine.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                        help="weight-only quantization: int8 (per output channel) or fp8 (CUDA)")
    engine.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default=None,
                        help="KV cache storage: auto (= dtype) or int8 (per token and head scales)")
    engine.add_argument("--max-model-len", type=_positive_int, default=None,
                        help="longest prompt + completion in tokens (default: the checkpoint's)")
    engine.add_argument("--max-num-seqs", type=_positive_int, default=None, help="most sequences in one batch")
    engine.add_argument("--max-num-batched-tokens", type=_positive_int, default=None,
                        help="most tokens one engine step computes (prefill chunks and decodes together)")
    engine.add_argument("--block-size", type=_positive_int, default=None, help="tokens per KV cache block")
    engine.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                        help="reuse the KV blocks of a repeated prompt prefix (the engine's default: on)")
    api = parser.add_argument_group("chat API")
    api.add_argument("--chat-template", default=None,
                     help="Jinja chat template replacing the tokenizer's: a .jinja file, or the template text")
    api.add_argument("--enable-auto-tool-choice", action="store_true",
                     help="tool_choice auto: parse the tool calls the model makes (needs --tool-call-parser)")
    api.add_argument("--tool-call-parser", choices=TOOL_CALL_PARSERS, default=None,
                     help="the model's tool-call format: hermes (Qwen, Hermes <tool_call>), llama3_json "
                          "(Llama 3.x), mistral ([TOOL_CALLS])")
    api.add_argument("--reasoning-parser", choices=REASONING_PARSERS, default=None,
                     help="split <think>...</think> into message.reasoning_content: qwen3 or deepseek_r1")
    api.add_argument("--generation-config", default="auto",
                     help="sampling defaults for fields a request leaves unset: auto (the model's "
                          "generation_config.json), vllm (none), or a folder holding generation_config.json")
    parser.add_argument("--min-pd-prompt-tokens", type=int, default=32, help="shorter prompts skip prefill (pd mode)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--api-key-file", default=None,
                        help=f"a file holding the key requests need as `Authorization: Bearer KEY` (default: "
                             f"${API_KEY_ENV}, else no key)")
    parser.add_argument("--api-key", action=_RefuseKeyOnCommandLine, help=argparse.SUPPRESS)
    parser.add_argument("--allow-unauthenticated", action="store_true",
                        help="serve a non-loopback --host without an API key (anyone who reaches it can use it)")
    parser.add_argument("--enable-docs", action="store_true", help="serve /docs, /redoc and /openapi.json")
    parser.add_argument("--name", default="llm", help="Serve application name")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def serving_args(args: argparse.Namespace) -> LLMServingArgs:
    for name in ("num_prefill", "num_decode", "num_replicas"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    names = args.served_model_name
    if names and len(names) != len(args.model):
        raise ValueError(f"give one --served-model-name (or --model-id) per --model ({len(args.model)}), "
                         f"got {len(names)}")
    engine_kwargs: dict[str, Any] = {key: getattr(args, key) for key in ENGINE_FLAGS if getattr(args, key) is not None}
    num_cpus = DEFAULT_NUM_CPUS_PER_REPLICA if args.num_cpus_per_replica is None else args.num_cpus_per_replica
    if num_cpus <= 0:
        raise ValueError(f"--num-cpus-per-replica must be > 0, got {num_cpus}")
    actor = {"ray_actor_options": {"num_cpus": num_cpus}}
    configs = []
    for index, model in enumerate(args.model):
        configs.append(
            {
                "model_id": names[index] if names else None,
                "model_source": model,
                "engine_kwargs": engine_kwargs,
                "deployment_config": {"num_replicas": args.num_replicas, **actor},
                "prefill_deployment_config": {"num_replicas": args.num_prefill, **actor},
                "decode_deployment_config": {"num_replicas": args.num_decode, **actor},
                "kv_transfer_config": {"min_prompt_tokens": args.min_pd_prompt_tokens},
                "tool_call_parser": args.tool_call_parser,
                "enable_auto_tool_choice": args.enable_auto_tool_choice,
                "reasoning_parser": args.reasoning_parser,
                "chat_template": args.chat_template,
                "generation_config": args.generation_config,
            }
        )
    return LLMServingArgs(llm_configs=configs, api_key_file=args.api_key_file, enable_docs=args.enable_docs)


def check_exposure(host: str, has_api_key: bool, allow_unauthenticated: bool) -> None:
    """A non-loopback host without a key serves anyone who reaches it: only when asked for by name."""
    if not has_api_key and not allow_unauthenticated and not is_loopback_host(host):
        raise ValueError(f"--host {host} without an API key lets anyone who reaches it use the models; export "
                         f"{API_KEY_ENV}=KEY or pass --api-key-file PATH (or --allow-unauthenticated to mean it)")


def check_proxy_address(requested: tuple[str, int], running: tuple[str, int]) -> None:
    """Serve keeps a running proxy's address and only warns about a new one; serving elsewhere than asked is
    an error here."""
    if tuple(requested) != tuple(running):
        raise RuntimeError(
            f"Serve's HTTP proxy on this cluster already listens on {running[0]}:{running[1]}, not the "
            f"{requested[0]}:{requested[1]} asked for; pass --host {running[0]} --port {running[1]}, or run "
            "`serve shutdown` first")


def start_http(host: str, port: int) -> None:
    """serve.start on host:port, or an error naming both addresses when a proxy runs elsewhere already."""
    from ray.serve.context import _get_global_client  # Ray has no public getter for the running address

    serve.start(http_options={"host": host, "port": port})
    config = _get_global_client().http_config
    check_proxy_address((host, port), (config.host, config.port))


def cli_replica_groups(args: argparse.Namespace, serving: LLMServingArgs) -> list[ReplicaGroup]:
    """The app's CPU asks; a --num-cpus-per-replica given is the user's and never shrunk."""
    return replica_groups(serving, args.mode, cpu_flag="--num-cpus-per-replica",
                          fixed=args.num_cpus_per_replica is not None)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        serving = serving_args(args)
        check_exposure(args.host, serving.resolved_api_key() is not None, args.allow_unauthenticated)
    except ValueError as error:  # a flag the user gave (pydantic's ValidationError is one too): usage + message
        parser.error(str(error))
    connect()
    fit = place(cli_replica_groups(args, serving), prog="python -m serve_apps.llm")
    serving = with_num_cpus(serving, args.mode, fit.num_cpus)
    try:
        start_http(args.host, args.port)
    except RuntimeError as error:
        raise SystemExit(f"python -m serve_apps.llm: {error}") from None
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
