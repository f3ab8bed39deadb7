"""App graphs from the Serve YAMLs and the CLI: names, per-group autoscaling, routers (no deploy)."""

from __future__ import annotations

import os

import pytest
import yaml
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app
from ray.serve._private.utils import import_attr

from serve_apps.llm.__main__ import parse_args, serving_args

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "cluster_configs", "serve")


def _deployments(path: str, monkeypatch) -> dict:
    monkeypatch.setenv("STRATA_MODEL_DIR", "/models/strata-tiny")
    app_config = yaml.safe_load(open(os.path.join(CONFIGS, path)))["applications"][0]
    builder = import_attr(app_config["import_path"])
    app = call_user_app_builder_with_args_if_necessary(builder, app_config["args"])
    built = build_app(app, name=app_config["name"], make_deployment_handle=lambda d, app_name: None)
    return {d.name: d for d in built.deployments}


def test_pd_yaml_builds_ingress_decode_prefill(monkeypatch):
    deployments = _deployments("llm_pd.yaml", monkeypatch)
    assert set(deployments) == {"OpenAiIngress", "Decode:strata-tiny", "Prefill:strata-tiny"}
    decode, prefill = deployments["Decode:strata-tiny"], deployments["Prefill:strata-tiny"]
    assert decode._deployment_config.autoscaling_config.max_replicas == 8
    assert prefill._deployment_config.autoscaling_config.max_replicas == 4
    router = decode._deployment_config.request_router_config.request_router_class
    assert router.endswith("KVCapacityRouter")
    assert prefill._deployment_config.request_router_config.request_router_class.endswith("PrefixAffinityRouter")
    assert decode.init_args[0]["model_source"] == "/models/strata-tiny"  # $STRATA_MODEL_DIR expanded


def test_colocated_yaml_builds_llm_server(monkeypatch):
    assert set(_deployments("llm_colocated.yaml", monkeypatch)) == {"OpenAiIngress", "LLMServer:strata-tiny"}


def test_cli_maps_flags_to_serving_args():
    args = parse_args(["--model", "/m/a", "--model", "/m/b", "--mode", "pd", "--num-prefill", "2",
                       "--num-decode", "3", "--quantization", "int8", "--api-key-file", "/run/secrets/key"])
    serving = serving_args(args)
    assert [c.model_id for c in serving.llm_configs] == ["a", "b"]
    assert serving.llm_configs[0].prefill_deployment_config["num_replicas"] == 2
    assert serving.llm_configs[1].decode_deployment_config["num_replicas"] == 3
    assert serving.llm_configs[0].engine_kwargs == {"quantization": "int8"} and serving.api_key_file == "/run/secrets/key"
    with pytest.raises(ValueError, match="--num-decode"):
        serving_args(parse_args(["--model", "/m/a", "--num-decode", "0"]))


def test_cli_fits_default_replicas_into_an_embedded_cluster_and_keeps_a_given_flag():
    from runtime.placement_fit import ClusterCpus, PlacementError, fit_replicas
    from serve_apps.llm.__main__ import cli_replica_groups
    from serve_apps.llm.placement import with_num_cpus

    def fitted_serving_args(args, serving, cluster):
        return with_num_cpus(serving, args.mode, fit_replicas(cli_replica_groups(args, serving), cluster).num_cpus)

    two_cpus = ClusterCpus(num_cpus=2, embedded=True, flag="STRATA_LOCAL_NUM_CPUS=N")
    args = parse_args(["--model", "/m/a", "--mode", "pd", "--num-prefill", "1", "--num-decode", "1"])
    fitted = fitted_serving_args(args, serving_args(args), two_cpus)
    [config] = fitted.llm_configs
    prefill, decode = config.prefill_deployment_config, config.decode_deployment_config
    assert prefill["ray_actor_options"]["num_cpus"] == decode["ray_actor_options"]["num_cpus"] == 0.85
    assert prefill["num_replicas"] == 1
    assert fitted.ingress_deployment_config["ray_actor_options"]["num_cpus"] == 0.25
    given = parse_args(["--model", "/m/a", "--model", "/m/b", "--num-cpus-per-replica", "0.5"])
    with pytest.raises(PlacementError, match=r"need 2.25 CPUs but the embedded cluster has 2 .*--num-cpus-per-replica"):
        fitted_serving_args(given, serving_args(given), two_cpus)


def test_pd_yaml_too_big_for_the_cluster_fails_naming_the_yaml_fields(monkeypatch):
    from runtime.placement_fit import ClusterCpus, PlacementError
    from serve_apps.llm.config import LLMServingArgs
    from serve_apps.llm.placement import check_fits

    monkeypatch.setenv("STRATA_MODEL_DIR", "/models/strata-tiny")
    args = LLMServingArgs.model_validate(yaml.safe_load(open(os.path.join(CONFIGS, "llm_pd.yaml")))
                                         ["applications"][0]["args"])
    assert check_fits(args, "pd", ClusterCpus(num_cpus=2, embedded=False)).message.startswith(
        "placement: 3 replicas need 1.25 of 2 CPUs")  # the shipped YAML fits a 2-core laptop
    for embedded in (True, False):  # the builders' check never shrinks what a YAML asks for
        with pytest.raises(PlacementError, match=r"llm_configs\[0\]\.decode_deployment_config\.ray_actor_options"):
            check_fits(args, "pd", ClusterCpus(num_cpus=1, embedded=embedded))
