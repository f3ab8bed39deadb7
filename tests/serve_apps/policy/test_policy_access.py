"""Who may reach the policy app: the API key (environment or file, never a command-line value), the
host it binds (loopback unless asked, and not beyond it without a key), checked before any body is read."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from fakes.serve_llm_apps import ensure_ray, start_serve
from helpers.robot_loop_policies import constant_policy
from ray import serve
from ray.serve.context import _get_global_client

from serve_apps.policy import PolicyAppArgs, build_policy_app
from serve_apps.policy.access import API_KEY_ENV, check_exposure, is_loopback_host, resolve_api_key

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
KEY = "policy-test-key-1"


def test_the_key_comes_from_the_environment_or_a_file_once(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert resolve_api_key(env_value=None, key_file=str(key_file)) == KEY
    assert resolve_api_key(env_value=KEY, key_file=None) == KEY
    assert resolve_api_key(env_value=None, key_file=None) is None
    with pytest.raises(ValueError, match="given twice"):
        resolve_api_key(env_value=KEY, key_file=str(key_file))
    with pytest.raises(ValueError, match="no such file"):
        resolve_api_key(env_value=None, key_file=str(tmp_path / "missing"))
    key_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        resolve_api_key(env_value=None, key_file=str(key_file))
    with pytest.raises(ValueError, match="printable ASCII"):
        resolve_api_key(env_value="clé", key_file=None)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("10.0.0.5", False), ("policy.internal", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback


def test_a_non_loopback_host_needs_a_key_or_the_explicit_opt_in():
    check_exposure(host="127.0.0.1", api_key=None, allow_unauthenticated=False)
    check_exposure(host="0.0.0.0", api_key=KEY, allow_unauthenticated=False)
    check_exposure(host="0.0.0.0", api_key=None, allow_unauthenticated=True)
    with pytest.raises(ValueError, match="--allow-unauthenticated"):
        check_exposure(host="0.0.0.0", api_key=None, allow_unauthenticated=False)


def _cli(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {name: value for name, value in os.environ.items() if name not in ("RAY_ADDRESS", API_KEY_ENV)}
    return subprocess.run([sys.executable, "-m", "serve_apps.policy", "--checkpoint", "x.safetensors", *flags],
                          cwd=REPO, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)


def test_cli_refuses_a_key_on_the_command_line():
    for flags in (("--api-key", KEY), (f"--api-key={KEY}",)):
        completed = _cli(*flags)
        assert completed.returncode == 2
        last = completed.stderr.strip().splitlines()[-1]
        assert "--api-key is not accepted" in last and API_KEY_ENV in last and "--api-key-file" in last, last


def test_cli_refuses_a_non_loopback_host_without_a_key():
    completed = _cli("--host", "0.0.0.0")
    assert completed.returncode == 2
    assert "--allow-unauthenticated" in completed.stderr.strip().splitlines()[-1], completed.stderr


@pytest.fixture(scope="module")
def keyed_policy(tmp_path_factory):
    ensure_ray()
    if not serve.status().proxies:
        start_serve()
    checkpoint = constant_policy(tmp_path_factory.mktemp("keyed") / "v1", 0.5, version="v1")
    key_file = tmp_path_factory.mktemp("key") / "policy.key"
    key_file.write_text(KEY + "\n")
    args = PolicyAppArgs(checkpoint=str(checkpoint), num_cpus=0.25, api_key_file=str(key_file))
    handle = serve.run(build_policy_app(args), name="policy-keyed-test", route_prefix="/policy-keyed-test")
    yield handle, f"http://127.0.0.1:{_get_global_client().http_config.port}/policy-keyed-test"
    serve.delete("policy-keyed-test")


@pytest.mark.ray_cluster  # its fixture starts a Serve app itself, not through ray_local
def test_the_key_is_checked_before_the_body_is_read(keyed_policy):
    handle, url = keyed_policy
    good = {"state": [0.0] * 28}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"},
                    {"authorization": "Bearer clé".encode("latin-1")}):
        for body in (good, {"state": "garbage"}):
            response = httpx.post(url, json=body, headers=headers, timeout=60)
            assert response.status_code == 401, response.text
            assert "API key" in response.json()["error"] and response.headers["www-authenticate"] == "Bearer"
    garbage = httpx.post(url, content=b"{not json", headers={"authorization": "Bearer x"}, timeout=60)
    assert garbage.status_code == 401, garbage.text
    answer = httpx.post(url, json=good, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["version"] == "v1", answer.text
    # Serve handles are in-cluster calls: no key.
    assert handle.act.remote(good).result()["version"] == "v1"


def test_a_key_given_in_a_file_and_as_a_value_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        build_policy_app(PolicyAppArgs(checkpoint="x", api_key=KEY, api_key_file=str(tmp_path)))

