"""`python -m serve_apps.policy` on a 1-CPU embedded cluster: default replicas shrink to fit and serve;
a --num-cpus-per-replica that cannot fit is refused at once in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from helpers.robot_loop_policies import constant_policy

from runtime.cluster import free_port

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    env.update(STRATA_DASHBOARD="0", PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow
def test_three_default_replicas_fit_one_cpu_and_serve(tmp_path):
    checkpoint = constant_policy(tmp_path / "v1", 0.5, version="v1")
    port = free_port()
    log_path = tmp_path / "policy.log"
    command = [sys.executable, "-m", "serve_apps.policy", "--checkpoint", str(checkpoint), "--port", str(port),
               "--num-replicas", "3", "--num-cpus", "1"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not re.search(r"policy served at (\S+)", log_path.read_text()):
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(2)
        body = {"observation": {"state": [0.0] * 28}}
        answer = httpx.post(f"http://127.0.0.1:{port}/policy", json=body, timeout=60).json()
        assert answer["version"] == "v1"
        assert "placement: fitted 3 replicas into 1 CPUs (asked 1.5): Policy 3x0.3 CPU" in log_path.read_text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_given_num_cpus_per_replica_that_cannot_fit_is_refused(tmp_path):
    checkpoint = constant_policy(tmp_path / "v1", 0.5, version="v1")
    command = [sys.executable, "-m", "serve_apps.policy", "--checkpoint", str(checkpoint), "--port", str(free_port()),
               "--num-replicas", "2", "--num-cpus-per-replica", "1", "--num-cpus", "1"]
    completed = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    last = completed.stderr.strip().splitlines()[-1]
    assert last == ("python -m serve_apps.policy: 2 replicas (Policy 2x1 CPU) need 2 CPUs but the embedded cluster "
                    "has 1 and --num-cpus-per-replica is kept as given; lower --num-cpus-per-replica, or give it "
                    "more CPUs with --num-cpus"), completed.stderr[-3000:]
