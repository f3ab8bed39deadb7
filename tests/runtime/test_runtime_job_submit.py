"""Jobs on a real cluster: `ray start --head` on loopback, `ray job submit --working-dir .` through the
CLI as a user would, SUCCEEDED with the app's output, and a failing job surfacing as FAILED; and the
model API put on the same cluster with `serve deploy cluster_configs/serve/llm_pd.yaml`."""

import os
import re
import secrets
import signal
import subprocess
import sys
import time

import pytest

from runtime.cluster import free_port

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    """A separate head node in its own process group (so stopping it never touches other clusters)."""
    from runtime.engine.testing import build_tiny_model

    temp_dir = str(tmp_path_factory.mktemp("ray_head"))
    model_dir = build_tiny_model(str(tmp_path_factory.mktemp("models") / "strata-tiny"), max_position_embeddings=256)
    port, dashboard_port = free_port(), free_port()
    # Ray 2.60 turns token authentication on for `ray start --head`; the CLI must carry the token.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), STRATA_MODEL_DIR=model_dir)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")  # as in an activated venv: `python` is ours
    command = [
        os.path.join(BIN, "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={port}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        "--num-cpus=4", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    log = open(os.path.join(temp_dir, "ray_start.log"), "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.time() + 90
    while True:
        probe = subprocess.run(
            [os.path.join(BIN, "ray"), "job", "list", "--address", address],
            env=env, capture_output=True, text=True,
        )
        if probe.returncode == 0:
            break
        if time.time() > deadline or process.poll() is not None:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"head node did not come up: {open(log.name).read()[-2000:]}")
        time.sleep(2)
    yield address, env
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def _ray_job(address, env, *args, timeout_s=600):
    return subprocess.run(
        [os.path.join(BIN, "ray"), "job", *args, "--address", address],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s,
    )


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _job_id(submit_output: str) -> str:
    match = re.search(r"Job '([^']+)' submitted successfully", submit_output)
    assert match, submit_output
    return match.group(1)


@pytest.mark.slow
def test_app_module_submitted_through_the_cli_succeeds(head_node):
    address, env = head_node
    submitted = subprocess.run(
        [os.path.join(BIN, "ray"), "job", "submit", "--address", address, "--working-dir", ".",
         "--", "python", "-m", "runtime.demo", "--only", "data"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-3000:]
    job_id = _job_id(output)
    status = _ray_job(address, env, "status", job_id)
    assert "succeeded" in _plain(status.stdout + status.stderr).lower()
    logs = _ray_job(address, env, "logs", job_id).stdout
    assert "Strata demo summary" in logs
    assert re.search(r"data\s+ok", logs), logs[-2000:]
    assert "joined" in logs  # the app joined the submitted-to cluster instead of starting its own


@pytest.mark.slow
def test_failing_job_is_failed_with_traceback_in_logs(head_node):
    address, env = head_node
    submitted = subprocess.run(
        [os.path.join(BIN, "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--no-wait",
         "--", "python", "-m", "runtime.demo", "--only", "data", "--require-nodes", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    job_id = _job_id(submitted.stdout + submitted.stderr)
    deadline = time.time() + 180
    while time.time() < deadline:
        status = _ray_job(address, env, "status", job_id)
        text = _plain(status.stdout + status.stderr).lower()
        if "failed" in text or "succeeded" in text:
            break
        time.sleep(2)
    assert "failed" in text, text
    logs = _ray_job(address, env, "logs", job_id).stdout
    assert "Traceback (most recent call last)" in logs
    assert "RuntimeError: --require-nodes 3: the cluster has only 1 alive node(s)" in logs


@pytest.mark.slow
def test_serve_deploy_of_the_pd_config(head_node, tmp_path):
    """`serve deploy` of the shipped PD YAML (only the HTTP port changed, to a free one) answers over HTTP."""
    import httpx
    import yaml

    address, env = head_node
    with open(os.path.join(REPO, "cluster_configs", "serve", "llm_pd.yaml")) as file:
        config = yaml.safe_load(file)
    http_port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    path = tmp_path / "llm_pd.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = os.path.join(BIN, "serve")
    deployed = subprocess.run([serve, "deploy", str(path), "--address", address], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    try:
        deadline = time.time() + 300
        while True:
            status = subprocess.run([serve, "status", "--address", address], env=env, capture_output=True, text=True)
            if "status: RUNNING" in status.stdout and "DEPLOY_FAILED" not in status.stdout:
                break
            assert "DEPLOY_FAILED" not in status.stdout, status.stdout
            assert time.time() < deadline, status.stdout
            time.sleep(3)
        base = f"http://127.0.0.1:{http_port}"
        models = httpx.get(f"{base}/v1/models", timeout=30).json()
        assert [model["id"] for model in models["data"]] == ["strata-tiny"]
        body = {"model": "strata-tiny", "prompt": [5, 6, 7, 8] * 10, "max_tokens": 6, "temperature": 0}
        answer = httpx.post(f"{base}/v1/completions", json=body, timeout=120).json()
        assert answer["usage"]["completion_tokens"] == 6, answer
    finally:
        subprocess.run([serve, "shutdown", "-y", "--address", address], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_app_too_big_for_the_cluster_fails_at_once_in_one_line(head_node):
    """The 4-CPU head has no autoscaler: 4 engine replicas at 1 CPU + the ingress cannot be placed, and
    the job says so instead of waiting forever for a fifth CPU."""
    address, env = head_node
    submitted = subprocess.run(
        [os.path.join(BIN, "ray"), "job", "submit", "--address", address, "--working-dir", ".",
         "--", "python", "-m", "serve_apps.llm", "--model", env["STRATA_MODEL_DIR"], "--num-prefill", "2",
         "--num-decode", "2", "--port", str(free_port())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    output = _plain(submitted.stdout + submitted.stderr)
    assert submitted.returncode != 0, output[-3000:]
    assert ("python -m serve_apps.llm: 5 replicas (OpenAiIngress 0.25, Prefill:strata-tiny 2x1, Decode:strata-tiny "
            "2x1 CPU) need 4.25 CPUs but the cluster has 4 and no autoscaler can add nodes; lower "
            "--num-cpus-per-replica, or add nodes") in output, output[-3000:]
