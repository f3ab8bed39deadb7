"""Serve a robot policy checkpoint over HTTP (POST JSON observation -> action) and Serve handles.

    python -m serve_apps.policy --checkpoint ckpt/pick/policy.safetensors [--port 8000] [--route-prefix /policy]
    ray job submit --working-dir . -- python -m serve_apps.policy --checkpoint ckpt/pick/policy.safetensors

    curl -s localhost:8000/policy -d '{"state": [0.0, ...28 values]}'   ->  {"action": [...], "version": "..."}
Hot-swap a running app: rerun with another --checkpoint (Serve reconfigures the replicas in place).
The replicas are checked against the cluster's CPUs first (runtime.placement_fit): on an embedded
cluster the default per-replica CPUs shrink to fit, a given --num-cpus-per-replica does not.
"""

from __future__ import annotations

import argparse
import sys
import time

from ray import serve

from runtime.cluster import connect, place
from serve_apps.policy.builder import PolicyAppArgs, deploy_policy, replica_group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_apps.policy", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--app-name", default="policy")
    parser.add_argument("--route-prefix", default="/policy")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--num-replicas", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--num-cpus-per-replica", type=float, default=None,
                        help=f"default {PolicyAppArgs.model_fields['num_cpus'].default:g}, shrunk to fit an "
                             "embedded cluster; a value given here is kept or refused")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of an embedded cluster")
    args = parser.parse_args(argv)
    app_args = PolicyAppArgs(checkpoint=args.checkpoint, num_replicas=args.num_replicas,
                             max_batch_size=args.max_batch_size,
                             **({} if args.num_cpus_per_replica is None else {"num_cpus": args.num_cpus_per_replica}))
    connect(num_cpus=args.num_cpus)
    group = replica_group(app_args, flag="--num-cpus-per-replica", fixed=args.num_cpus_per_replica is not None)
    fit = place([group], prog="python -m serve_apps.policy", embedded_flag="--num-cpus")
    app_args = app_args.model_copy(update={"num_cpus": fit.num_cpus[group.name]})
    serve.start(http_options={"host": "0.0.0.0", "port": args.port})
    deploy_policy(app_args, app_name=args.app_name, route_prefix=args.route_prefix)
    print(f"policy served at http://127.0.0.1:{args.port}{args.route_prefix}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
