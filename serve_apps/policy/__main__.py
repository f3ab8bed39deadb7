"""Serve a robot policy checkpoint over HTTP (POST JSON observation -> action) and Serve handles.

    python -m serve_apps.policy --checkpoint ckpt/pick/policy.safetensors [--port 8000] [--route-prefix /policy]
    ray job submit --working-dir . -- python -m serve_apps.policy --checkpoint ckpt/pick/policy.safetensors

    curl -s localhost:8000/policy -d '{"state": [0.0, ...28 values]}'   ->  {"action": [...], "version": "..."}
Hot-swap a running app: rerun with another --checkpoint (Serve reconfigures the replicas in place).
The replicas are checked against the cluster's CPUs first (runtime.placement_fit): on an embedded
cluster the default per-replica CPUs shrink to fit, a given --num-cpus-per-replica does not.

Access: the app listens on 127.0.0.1 unless --host says otherwise. With $STRATA_POLICY_API_KEY set
(or --api-key-file PATH) every HTTP request needs `Authorization: Bearer KEY` (401 otherwise, checked
before the body is read); a non-loopback --host without a key is refused unless --allow-unauthenticated.
Limits: a body over --max-body-bytes (8 MiB) or a point cloud over --max-points (65536) is a 413;
a malformed observation is a 400 naming the field, and fails only its own request.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ray import serve
from ray.serve.context import _get_global_client

from runtime.cluster import connect, place
from serve_apps.policy.access import API_KEY_ENV, DEFAULT_HOST, check_exposure, resolve_api_key
from serve_apps.policy.builder import PolicyAppArgs, deploy_policy, replica_group

PROG = "python -m serve_apps.policy"


class _RefuseKeyValue(argparse.Action):
    """`--api-key VALUE` is an error: a key on the command line shows in `ps` and in job entrypoints."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"--api-key is not accepted (a key on the command line shows in `ps` and in job "
                     f"entrypoints): put it in ${API_KEY_ENV} or in a file given with --api-key-file PATH")


def build_parser() -> argparse.ArgumentParser:
    defaults = PolicyAppArgs.model_fields
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--app-name", default="policy")
    parser.add_argument("--route-prefix", default="/policy")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address the HTTP proxy binds (default 127.0.0.1); any other needs an API key "
                             "or --allow-unauthenticated")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-file", default=None,
                        help=f"file holding the API key (else ${API_KEY_ENV}; else no key)")
    parser.add_argument("--api-key", action=_RefuseKeyValue, nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--allow-unauthenticated", action="store_true",
                        help="serve a non-loopback --host without an API key")
    parser.add_argument("--max-points", type=int, default=defaults["max_points"].default,
                        help="points per observation.pointcloud (default %(default)s; more is a 413)")
    parser.add_argument("--max-body-bytes", type=int, default=defaults["max_body_bytes"].default,
                        help="HTTP request body bytes (default %(default)s; more is a 413)")
    parser.add_argument("--num-replicas", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--num-cpus-per-replica", type=float, default=None,
                        help=f"default {defaults['num_cpus'].default:g}, shrunk to fit an "
                             "embedded cluster; a value given here is kept or refused")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of an embedded cluster")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        api_key = resolve_api_key(env_value=os.environ.get(API_KEY_ENV), key_file=args.api_key_file)
        check_exposure(host=args.host, api_key=api_key, allow_unauthenticated=args.allow_unauthenticated)
    except ValueError as error:
        parser.error(str(error))
    app_args = PolicyAppArgs(checkpoint=args.checkpoint, num_replicas=args.num_replicas,
                             max_batch_size=args.max_batch_size, max_points=args.max_points,
                             max_body_bytes=args.max_body_bytes, api_key=api_key,
                             **({} if args.num_cpus_per_replica is None else {"num_cpus": args.num_cpus_per_replica}))
    connect(num_cpus=args.num_cpus)
    group = replica_group(app_args, flag="--num-cpus-per-replica", fixed=args.num_cpus_per_replica is not None)
    fit = place([group], prog=PROG, embedded_flag="--num-cpus")
    app_args = app_args.model_copy(update={"num_cpus": fit.num_cpus[group.name]})
    serve.start(http_options={"host": args.host, "port": args.port})
    bound = _get_global_client().http_config
    if (bound.host, bound.port) != (args.host, args.port):
        # Serve keeps a running proxy's address and ignores ours: serving there would expose the app elsewhere.
        print(f"{PROG}: Serve on this cluster already listens on {bound.host}:{bound.port}, not "
              f"{args.host}:{args.port}; pass --host {bound.host} --port {bound.port}, or shut that Serve down",
              file=sys.stderr, flush=True)
        return 1
    deploy_policy(app_args, app_name=args.app_name, route_prefix=args.route_prefix)
    print(f"policy served at http://{args.host}:{args.port}{args.route_prefix}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
