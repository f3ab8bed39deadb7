"""What we ship is safe by default (#15 item 7): the Ray dashboard (its job API runs code) listens on
loopback unless Ray's token authentication guards it, and the Model API is bound to loopback unless
requests need a key that comes from a Kubernetes Secret or a file, never from the YAML itself."""

import glob
import os
import re

import pytest
import yaml

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "cluster_configs")
RAY_UP_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "ray_up", "*.yaml")))
KUBERAY_MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "kuberay", "*.yaml")))
SERVE_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "serve", "*.yaml")))
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _load(path: str) -> dict:
    with open(path) as file:
        return yaml.safe_load(file)


def _cluster_spec(manifest: dict) -> dict:
    spec = manifest["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}[manifest["kind"]]


def _containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


@pytest.mark.parametrize("path", RAY_UP_CONFIGS, ids=os.path.basename)
def test_ray_up_dashboard_listens_on_loopback(path):
    commands = " ".join(_load(path)["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", commands)
    assert hosts == ["127.0.0.1"], f"{path}: dashboard hosts {hosts}"
    with open(path) as file:
        assert "ray dashboard" in file.read(), f"{path}: say how to reach the dashboard (an SSH tunnel)"


@pytest.mark.parametrize("path", KUBERAY_MANIFESTS, ids=os.path.basename)
def test_kuberay_dashboard_is_loopback_or_token_guarded(path):
    cluster = _cluster_spec(_load(path))
    host = cluster["headGroupSpec"]["rayStartParams"].get("dashboard-host")
    assert host is not None, f"{path}: KubeRay's default dashboard-host is 0.0.0.0; set it"
    if host not in LOOPBACK:
        assert cluster.get("authOptions", {}).get("mode") == "token", (
            f"{path}: dashboard on {host} without authOptions.mode token")


def _serve_configs() -> list[tuple[str, dict, list[dict]]]:
    """(where, serve config, containers whose environment the builder sees)."""
    configs = [(os.path.basename(path), _load(path), []) for path in SERVE_CONFIGS]
    for path in KUBERAY_MANIFESTS:
        manifest = _load(path)
        if manifest["kind"] == "RayService":
            configs.append((os.path.basename(path), yaml.safe_load(manifest["spec"]["serveConfigV2"]),
                            _containers(manifest["spec"]["rayClusterConfig"])))
    return configs


@pytest.mark.parametrize("where, config, containers", _serve_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_model_api_is_loopback_or_keyed_from_a_secret(where, config, containers):
    host = config.get("http_options", {}).get("host", "127.0.0.1")
    for app in config["applications"]:
        args = app.get("args", {})
        assert "api_key" not in args, f"{where}: a key in the YAML is a key in every copy of it; use api_key_file"
        if host in LOOPBACK or args.get("api_key_file"):
            continue
        keyed = [c for c in containers if any(
            env["name"] == "STRATA_API_KEY" and "secretKeyRef" in env.get("valueFrom", {}) for env in c.get("env", []))]
        assert containers and len(keyed) == len(containers), (
            f"{where}: the Model API on {host} needs STRATA_API_KEY from a Secret in every pod, or api_key_file")
