"""`build_policy_app(args)`: the Serve application for a robot policy, and `deploy_policy` to run or swap it.

    serve run serve_apps.policy.builder:build_policy_app checkpoint=ckpt/pick/policy.safetensors
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from ray import serve

from serve_apps.policy.app import PolicyServer

DEPLOYMENT_NAME = "Policy"


class PolicyAppArgs(BaseModel):
    checkpoint: str = Field(description="policy .safetensors file (or a directory holding policy.safetensors)")
    num_replicas: int = Field(default=1, ge=1)
    max_batch_size: int = Field(default=64, ge=1)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0)
    num_cpus: float = Field(default=0.5, gt=0)
    max_ongoing_requests: int = Field(default=256, ge=1)


def build_policy_app(args: PolicyAppArgs | dict) -> serve.Application:
    if isinstance(args, dict):
        args = PolicyAppArgs.model_validate(args)
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
