"""The Model API's deployments as CPU asks (`runtime.placement_fit`), and fitted asks written back.

The pd app deploys OpenAiIngress + `Prefill:<model>` + `Decode:<model>` per model, the colocated app
OpenAiIngress + `LLMServer:<model>`; an autoscaled deployment starts with its initial (or minimum)
replicas, which is what must fit. Serve's proxy and controller ask for no CPU.
"""

from __future__ import annotations

from typing import Any

from runtime.placement_fit import ClusterCpus, Fit, ReplicaGroup, fit_replicas
from serve_apps.llm.config import INGRESS_DEFAULT_OPTIONS, LLMServingArgs, deployment_name, deployment_options

INGRESS_NAME = "OpenAiIngress"
SERVER_PREFIXES = {"pd": (("prefill", "Prefill:"), ("decode", "Decode:")), "colocated": (("", "LLMServer:"),)}


def _config_field(role: str) -> str:
    return f"{role}_deployment_config" if role else "deployment_config"


def ingress_options(args: LLMServingArgs) -> dict[str, Any]:
    return {**INGRESS_DEFAULT_OPTIONS, **args.ingress_deployment_config}


def _num_replicas(options: dict[str, Any]) -> int:
    autoscaling = options.get("autoscaling_config")
    if not autoscaling:
        return int(options.get("num_replicas", 1))
    initial = autoscaling.get("initial_replicas")
    return int(initial if initial is not None else autoscaling.get("min_replicas", 1))


def _num_cpus(options: dict[str, Any]) -> float:
    return float(options.get("ray_actor_options", {}).get("num_cpus", 1.0))  # Serve's default is 1


def replica_groups(args: LLMServingArgs, mode: str, *, cpu_flag: str | None = None, fixed: bool = False
                   ) -> list[ReplicaGroup]:
    """One group per deployment. cpu_flag names the option setting the servers' num_cpus (default: the
    YAML field); fixed says the user set it, so an embedded cluster must not shrink it."""
    if mode not in SERVER_PREFIXES:
        raise ValueError(f"mode must be one of {sorted(SERVER_PREFIXES)}, got {mode!r}")
    ingress = ingress_options(args)
    groups = [ReplicaGroup(name=INGRESS_NAME, count=_num_replicas(ingress), num_cpus=_num_cpus(ingress),
                           flag=None if cpu_flag else "ingress_deployment_config.ray_actor_options.num_cpus",
                           fixed="num_cpus" in args.ingress_deployment_config.get("ray_actor_options", {}))]
    for index, config in enumerate(args.llm_configs):
        for role, prefix in SERVER_PREFIXES[mode]:
            options = deployment_options(getattr(config, _config_field(role)))
            flag = cpu_flag or f"llm_configs[{index}].{_config_field(role)}.ray_actor_options.num_cpus"
            groups.append(ReplicaGroup(name=deployment_name(prefix, config.model_id), count=_num_replicas(options),
                                       num_cpus=_num_cpus(options), flag=flag, fixed=fixed))
    return groups


def with_num_cpus(args: LLMServingArgs, mode: str, num_cpus: dict[str, float]) -> LLMServingArgs:
    """A copy of args whose deployments ask for num_cpus[deployment name]."""
    def options(current: dict[str, Any], name: str) -> dict[str, Any]:
        actor = {**current.get("ray_actor_options", {}), "num_cpus": num_cpus[name]}
        return {**current, "ray_actor_options": actor}

    configs = []
    for config in args.llm_configs:
        update = {}
        for role, prefix in SERVER_PREFIXES[mode]:
            field = _config_field(role)
            update[field] = options(getattr(config, field), deployment_name(prefix, config.model_id))
        configs.append(config.model_copy(update=update))
    return args.model_copy(update={"llm_configs": configs, "ingress_deployment_config": options(
        args.ingress_deployment_config, INGRESS_NAME)})


def check_fits(args: LLMServingArgs, mode: str, cluster: ClusterCpus) -> Fit:
    """The builders' check (Serve YAMLs too): the app as given, against the cluster, never shrunk."""
    return fit_replicas(replica_groups(args, mode), ClusterCpus(
        num_cpus=cluster.num_cpus, embedded=False, max_num_cpus=cluster.max_num_cpus))
