"""`build_policy_app(args)`: the Serve application for a robot policy, and `deploy_policy` to run or swap it.

    serve run serve_apps.policy.builder:build_policy_app checkpoint=ckpt/pick/policy.safetensors \
        api_key_file=/etc/strata/policy.key
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import ray
from pydantic import BaseModel, Field, field_validator
from ray import serve

import runtime.robot.policy
import serve_apps.policy
from runtime.cluster import cluster_cpus
from runtime.placement_fit import ClusterCpus, ReplicaGroup, fit_replicas
from serve_apps.policy.access import check_api_key_text, resolve_api_key
from serve_apps.policy.app import PolicyServer
from serve_apps.policy.observation import ObservationLimits

DEPLOYMENT_NAME = "Policy"


class PolicyAppArgs(BaseModel):
    checkpoint: str | None = Field(description="policy .safetensors file (or a directory holding "
                                               "policy.safetensors); None serves 503s until one is deployed")
    num_replicas: int = Field(default=1, ge=1)
    max_batch_size: int = Field(default=64, ge=1)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0)
    num_cpus: float = Field(default=0.5, gt=0)
    max_ongoing_requests: int = Field(default=256, ge=1)
    max_points: int = Field(default=65_536, ge=1, description="points per observation.pointcloud (else 413)")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024,
                                description="HTTP body bytes (else 413); the default holds max_points as JSON")
    api_key: str | None = Field(default=None, repr=False, min_length=1,
                                description="if set, HTTP requests need `Authorization: Bearer KEY` (else 401)")
    api_key_file: str | None = Field(default=None, description="a file holding the API key (for `serve run`, "
                                                               "where api_key=... would sit on the command line)")

    @field_validator("api_key")
    @classmethod
    def _printable_key(cls, key: str | None) -> str | None:
        return None if key is None else check_api_key_text(key, "api_key")


def replica_group(args: PolicyAppArgs, *, flag: str = "num_cpus", fixed: bool = True) -> ReplicaGroup:
    """The app's replicas as a CPU ask (runtime.placement_fit); flag names what sets num_cpus."""
    return ReplicaGroup(name=DEPLOYMENT_NAME, count=args.num_replicas, num_cpus=args.num_cpus, flag=flag, fixed=fixed)


def build_policy_app(args: PolicyAppArgs | dict) -> serve.Application:
    """On a connected cluster, first checks that the replicas fit its CPUs (never shrunk here)."""
    if isinstance(args, dict):
        args = PolicyAppArgs.model_validate(args)
    if args.api_key_file is not None:
        if args.api_key is not None:
            raise ValueError("policy app args: give api_key or api_key_file, not both")
        args = args.model_copy(update={"api_key": resolve_api_key(env_value=None, key_file=args.api_key_file)})
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
    init_kwargs = {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s,
                   "limits": ObservationLimits(max_points=args.max_points, max_body_bytes=args.max_body_bytes),
                   "api_key": args.api_key}
    deployment = deployment.options(version=replica_code_version(init_kwargs), _internal=True)
    return deployment.bind(**init_kwargs)


def replica_code_version(init_kwargs: dict) -> str:
    """What a replica runs, short of its checkpoint: the policy code and the constructor's arguments.

    Serve restarts replicas when this changes and applies a user_config change (a checkpoint swap)
    in place when it does not. Ray 2.60 gives an app deployed from Python a random version on every
    `serve.run` (the public `version` option was removed), so without this each swap restarted the
    replicas; with one replica Serve stops the old one before the new one is up, and requests waited
    for a whole replica start (25-30 s on a loaded 2-CPU machine). Setting the version takes Serve's
    `_internal` flag on `Deployment.options`.
    """
    digest = hashlib.sha256()
    for package in (serve_apps.policy, runtime.robot.policy):
        for source in sorted(Path(package.__file__).parent.glob("*.py")):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
    # repr of the dataclass and plain values is stable; the key only enters as part of a digest.
    digest.update(repr(sorted(init_kwargs.items())).encode())
    return digest.hexdigest()[:16]


def deploy_policy(args: PolicyAppArgs, *, app_name: str = "policy", route_prefix: str = "/policy"):
    """Deploy, or hot-swap a running app to args.checkpoint (only user_config changes: no restart, see
    replica_code_version).

    Returns the app's DeploymentHandle once every replica serves the new checkpoint.
    """
    return serve.run(build_policy_app(args), name=app_name, route_prefix=route_prefix, blocking=False)
