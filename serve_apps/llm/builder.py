"""Application builders, shaped like Ray Serve LLM's.

    build_pd_openai_app(args):  OpenAiIngress -> Decode:<model> -> Prefill:<model>
    build_openai_app(args):     OpenAiIngress -> LLMServer:<model>   (one engine does both)

`args` is `LLMServingArgs` (or its dict form, as `serve run` passes a YAML's `args:`).
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation as a class to
# validate YAML args into it.
from typing import Any, Union

import ray
from ray import serve
from ray.serve.config import BackpressureConfig, RequestRouterConfig
from ray.serve.deployment import Application

from runtime.cluster import cluster_cpus
from serve_apps.llm.config import LLMConfig, LLMServingArgs, deployment_name, deployment_options
from serve_apps.llm.ingress import OpenAiIngress
from serve_apps.llm.pd_server import PDDecodeServer, PDPrefillServer
from serve_apps.llm.placement import check_fits, ingress_options
from serve_apps.llm.request_limits import checkpoint_max_model_len
from serve_apps.llm.server import LLMServer

ROUTING_STATS_PERIOD_S = 1.0
# The ingress's own queue (requests waiting for one of its max_ongoing_requests slots): bounded, and a full
# one answers 429 with Retry-After instead of Serve's default 503. `ingress_deployment_config` overrides both.
INGRESS_MAX_QUEUED_REQUESTS = 256
INGRESS_BACKPRESSURE = BackpressureConfig(status_code=429, retry_after_s=1)


def _router_config(router_class: str, **kwargs: Any) -> RequestRouterConfig:
    return RequestRouterConfig(
        request_router_class=f"serve_apps.llm.router:{router_class}",
        request_router_kwargs=kwargs,
        request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
    )


def _validate(args: Union[LLMServingArgs, dict], mode: str) -> LLMServingArgs:
    """Args as the model; on a connected cluster (`serve run`/`serve deploy` build here too) also check
    that the app's replicas fit its CPUs, so a too-small cluster fails the deploy instead of hanging it."""
    args = args if isinstance(args, LLMServingArgs) else LLMServingArgs.model_validate(args)
    if ray.is_initialized():
        check_fits(args, mode, cluster_cpus())
    return args


def _max_model_len(config: LLMConfig) -> int | None:
    value = config.engine_kwargs.get("max_model_len")
    return int(value) if value else None


def ingress_deployment_options(args: LLMServingArgs) -> dict[str, Any]:
    return {"max_queued_requests": INGRESS_MAX_QUEUED_REQUESTS, "backpressure_config": INGRESS_BACKPRESSURE,
            **ingress_options(args)}


def _ingress(args: LLMServingArgs, servers: dict[str, Application]) -> Application:
    lens = {c.model_id: n for c in args.llm_configs if (n := _max_model_len(c))}
    bounds = {c.model_id: n for c in args.llm_configs if (n := checkpoint_max_model_len(c.model_source, c.engine_kwargs))}
    return serve.deployment(OpenAiIngress, name="OpenAiIngress", **ingress_deployment_options(args)).bind(
        llm_deployments=servers, api_key=args.resolved_api_key(), max_model_lens=lens, max_model_len_bounds=bounds,
        max_request_body_bytes=args.max_request_body_bytes, enable_docs=args.enable_docs,
    )


def build_openai_app(args: LLMServingArgs) -> Application:
    """Colocated: each model is one `LLMServer:<model>` deployment whose engine prefills and decodes."""
    args = _validate(args, "colocated")
    servers = {}
    for config in args.llm_configs:
        deployment = serve.deployment(
            LLMServer,
            name=deployment_name(LLMServer.name_prefix, config.model_id),
            request_router_config=_router_config("KVCapacityRouter"),
            **deployment_options(config.deployment_config),
        )
        servers[config.model_id] = deployment.bind(config.model_dump())
    return _ingress(args, servers)


def build_pd_openai_app(args: LLMServingArgs) -> Application:
    """Disaggregated: `Decode:<model>` replicas call `Prefill:<model>` replicas and pull their KV."""
    args = _validate(args, "pd")
    servers = {}
    for config in args.llm_configs:
        prefill = serve.deployment(
            PDPrefillServer,
            name=deployment_name(PDPrefillServer.name_prefix, config.model_id),
            request_router_config=_router_config("PrefixAffinityRouter"),
            **deployment_options(config.prefill_deployment_config),
        ).bind(config.model_dump())
        decode = serve.deployment(
            PDDecodeServer,
            name=deployment_name(PDDecodeServer.name_prefix, config.model_id),
            request_router_config=_router_config("KVCapacityRouter"),
            **deployment_options(config.decode_deployment_config),
        )
        servers[config.model_id] = decode.bind(config.model_dump(), prefill_server=prefill)
    return _ingress(args, servers)
