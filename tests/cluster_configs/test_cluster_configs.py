"""Every `ray up` YAML validates against the schema shipped in the ray package; KubeRay manifests
carry the fields KubeRay requires."""

import glob
import json
import os

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "cluster_configs")
RAY_UP_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "ray_up", "*.yaml")))
KUBERAY_MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "kuberay", "*.yaml")))
ROLES = {"role_train", "role_prefill", "role_decode", "role_data"}


def _schema() -> dict:
    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        return json.load(f)


def test_configs_exist_for_onprem_aws_gcp():
    names = {os.path.basename(path) for path in RAY_UP_CONFIGS}
    assert {"onprem.yaml", "aws.yaml", "gcp.yaml"} <= names
    assert {"raycluster.yaml", "rayjob.yaml", "rayservice.yaml"} <= {
        os.path.basename(p) for p in KUBERAY_MANIFESTS
    }


@pytest.mark.parametrize("path", RAY_UP_CONFIGS, ids=os.path.basename)
def test_ray_up_yaml_matches_rays_schema(path):
    with open(path) as f:
        config = yaml.safe_load(f)
    jsonschema.validate(config, _schema())
    validate_config(fillout_defaults(config))  # what `ray up` itself runs after filling defaults


@pytest.mark.parametrize("path", [p for p in RAY_UP_CONFIGS if "onprem" not in p], ids=os.path.basename)
def test_cloud_configs_declare_every_node_role(path):
    with open(path) as f:
        config = yaml.safe_load(f)
    declared = set()
    for node_type in config["available_node_types"].values():
        declared |= set(node_type.get("resources", {}))
    assert ROLES <= declared, f"{path} lacks node types for {ROLES - declared}"
    assert config["head_node_type"] in config["available_node_types"]


def _check_head_and_workers(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head, f"{where}: headGroupSpec.rayStartParams is required"
    assert head["template"]["spec"]["containers"], f"{where}: head needs a container"
    for group in spec.get("workerGroupSpecs", []):
        for field in ("groupName", "rayStartParams", "template"):
            assert field in group, f"{where}: workerGroupSpecs[].{field} is required"
        assert group.get("minReplicas", 0) <= group.get("replicas", 0) <= group.get("maxReplicas", 1 << 30)
        assert group["template"]["spec"]["containers"]


@pytest.mark.parametrize("path", KUBERAY_MANIFESTS, ids=os.path.basename)
def test_kuberay_manifest_has_required_fields(path):
    with open(path) as f:
        manifest = yaml.safe_load(f)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["metadata"]["name"]
    kind, spec = manifest["kind"], manifest["spec"]
    if kind == "RayCluster":
        _check_head_and_workers(spec, path)
    elif kind == "RayJob":
        assert spec["entrypoint"].startswith("python -m ")
        _check_head_and_workers(spec["rayClusterSpec"], path)
    elif kind == "RayService":
        serve_config = yaml.safe_load(spec["serveConfigV2"])
        for app in serve_config["applications"]:
            assert app["import_path"] and app["route_prefix"]
        _check_head_and_workers(spec["rayClusterConfig"], path)
    else:
        pytest.fail(f"{path}: unexpected kind {kind}")


def test_rayservice_serves_the_same_app_as_the_serve_yaml():
    with open(os.path.join(ROOT, "kuberay", "rayservice.yaml")) as f:
        service = yaml.safe_load(yaml.safe_load(f)["spec"]["serveConfigV2"])
    with open(os.path.join(ROOT, "serve", "llm_pd.yaml")) as f:
        local = yaml.safe_load(f)
    [service_app], [local_app] = service["applications"], local["applications"]
    assert service_app["import_path"] == local_app["import_path"]
    service_models = {m["model_id"] for m in service_app["args"]["llm_configs"]}
    local_models = {m["model_id"] for m in local_app["args"]["llm_configs"]}
    assert service_models == local_models
