"""`build_policy_app(args)`: the Serve application for a robot policy, and `deploy_policy` to run or swap it.

    serve run serve_apps.policy.builder:build_policy_app checkpoint=ckpt/pick/policy.safetensors
"""

from __future__ import annotations

import ray
from pydantic import BaseModel, Field
from ray import serve

from runtime.cluster import cluster_cpus
from runtime.placement_fit import ClusterCpus, ReplicaGroup, fit_replicas
from serve_apps.policy.app import PolicyServer

DEPLOYMENT_NAME = "Policy"


class PolicyAppArgs(BaseModel):
    checkpoint: str = Field(description="policy .safetensors file (or a directory holding policy.safetensors)")
    num_replicas: int = Field(default=1, ge=1)
    max_batch_size: int = Field(default=64, ge=1)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0)
    num_cpus: float = Field(default=0.5, gt=0)
    max_ongoing_requests: int = Field(default=256, ge=1)


def replica_group(args: PolicyAppArgs, *, flag: str = "num_cpus", fixed: bool = True) -> ReplicaGroup:
    """The app's replicas as a CPU ask (runtime.placement_fit); flag names what sets num_cpus."""
    return ReplicaGroup(name=DEPLOYMENT_NAME, count=args.num_replicas, num_cpus=args.num_cpus, flag=flag, fixed=fixed)


def build_policy_app(args: PolicyAppArgs | dict) -> serve.Application:
    """On a connected cluster, first checks that the replicas fit its CPUs (never shrunk here)."""
    if isinstance(args, dict):
        args = PolicyAppArgs.model_validate(args)
    if ray.is_initialized():
        cluster = cluster_cpus()
        fit_replicas([replica_group(args)], ClusterCpus(num_cpus=cluster.num_cpus, embedded=False,
                                                        max_num_cpus=cluster.max_num_cpus))
    deployment = serve.deployment(
        PolicyServer,
        name=DEPLOYMENT_NAME,
        num_replicas=args.num_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.num_cpus},
        user_config={"checkpoint": args.checkpoint},
    )
    return deployment.bind(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s)


def deploy_policy(args: PolicyAppArgs, *, app_name: str = "policy", route_prefix: str = "/policy"):
    """Deploy, or hot-swap a running app to args.checkpoint (only user_config changes: no restart).

    Returns the app's DeploymentHandle once every replica serves the new checkpoint.
    """
    return serve.run(build_policy_app(args), name=app_name, route_prefix=route_prefix, blocking=False)
