"""Every command in README.md's "Running the apps on a real cluster" block, run as written on a 2-CPU
embedded cluster, as a new user on a laptop would: it serves (answers /v1/models, then stops on
SIGTERM) or it finishes with exit code 0.

The commands are parsed from the README, so a changed or new command changes (or fails) this test.
Only what cannot be run as written here is changed: the `ray job submit --working-dir . --` prefix
is dropped (the command then starts an embedded cluster; tests/runtime/test_runtime_job_submit.py
submits to a `ray start` head), `/tmp/...` paths become the test's temp paths, HTTP ports are free
ones, and `/tmp/strata-lm` for the serve commands is a tiny model. Each runs in a temp working dir
that holds what its relative paths name (logs/run1.mcap, cluster_configs/serve/llm_pd.yaml).
Commands that take many minutes as written are sized down with their app's own flags or knobs
(SIZE_FLAGS, DEMO_KNOBS); STRATA_README_AS_WRITTEN=1 runs them exactly as written.

Measured on this 2-core machine while other jobs loaded it (load 7-15), sized / as written:
demo 406 s / 1218 s, lm_pretrain 69 s / 1309 s, loop 232 s / 1084 s, serve_apps.llm 94 s,
serve run 36 s, convert 23 s, the refused serve_apps.llm 16 s.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from runtime.cluster import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECTION = "## Running the apps on a real cluster"
SUBMIT_PREFIX = ["ray", "job", "submit", "--working-dir", ".", "--"]
SERVING = re.compile(r"serving .* at (http://\S+)")
# Commands that take many minutes as written get their app's own size flags appended (argparse: the
# last value wins; every flag as written still applies); STRATA_README_AS_WRITTEN=1 runs them bare.
AS_WRITTEN = os.environ.get("STRATA_README_AS_WRITTEN") == "1"
SIZE_FLAGS = {
    "train_apps.lm_pretrain": ["--preset", "tiny", "--max-steps", "20"],
    "data_apps.loop": ["--quick", "--num-episodes", "6", "--eval-episodes", "4", "--train-steps", "60"],
}
# The demo's own knobs (environment, so the command stays as written): a short training and robot stage.
DEMO_KNOBS = {"STRATA_DEMO_LM_PRESET": "tiny", "STRATA_DEMO_LM_STEPS": "40", "STRATA_DEMO_KILL_AT_STEP": "20",
              "STRATA_DEMO_ROBOT_EPISODES": "8"}


def readme_commands() -> dict[str, str]:
    """The block's app commands by what they run ("runtime.demo", "serve run"), comments dropped."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md lost its section {SECTION!r}"
    block = re.search(r"```bash\n(.*?)```", text.split(SECTION, 1)[1], re.S)
    assert block, f"no ```bash block under {SECTION!r}"
    commands = {}
    for line in block.group(1).splitlines():
        line = line.split(" #", 1)[0].strip()
        words = shlex.split(line) if line and not line.startswith("#") else []
        if "-m" in words and "python" in words:
            commands[words[words.index("-m") + 1]] = line
        elif "serve" in words and words[words.index("serve") + 1:][:1] == ["run"]:
            commands["serve run"] = line
    return commands


COMMANDS = readme_commands()


def test_the_readme_block_has_the_commands_this_file_runs():
    assert set(COMMANDS) == {"runtime.demo", "train_apps.lm_pretrain", "serve_apps.llm", "data_apps.convert",
                             "data_apps.loop", "serve run"}, COMMANDS


def _argv(command: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The command as argv for this machine, and the VAR=value assignments in front of it."""
    words = shlex.split(command)
    if words[:len(SUBMIT_PREFIX)] == SUBMIT_PREFIX:
        words = words[len(SUBMIT_PREFIX):]
    env = {}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    # the README's /tmp/ paths become the test's; then the program (this venv may itself live under /tmp)
    words = [str(tmp_path / word[len("/tmp/"):]) if word.startswith("/tmp/") else word for word in words]
    programs = {"python": sys.executable, "serve": str(BIN / "serve")}
    words[0] = programs[words[0]]
    env = {name: str(tmp_path / value[len("/tmp/"):]) if value.startswith("/tmp/") else value
           for name, value in env.items()}
    return words, env


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    env.update(
        STRATA_LOCAL_NUM_CPUS="2",  # a 2-core laptop, whatever this machine has
        STRATA_DASHBOARD="0",  # its port is the one thing two embedded clusters here would share
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PYTHONUNBUFFERED="1",
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _run_to_completion(command: str, tmp_path: Path, *, timeout_s: float, env: dict[str, str] | None = None,
                       extra_args: list[str] | None = None) -> tuple[str, float]:
    argv, assigned = _argv(command, tmp_path)
    argv += [] if AS_WRITTEN else extra_args or []
    started = time.monotonic()
    completed = subprocess.run(argv, cwd=tmp_path, env=_environment({**assigned, **(env or {})}),
                               capture_output=True, text=True, timeout=timeout_s, start_new_session=True)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"{command}\n exited {completed.returncode}:\n{output[-4000:]}"
    return output, time.monotonic() - started


def _serve_until_models_answer(argv: list[str], env: dict[str, str], cwd: Path, base_url: str | None,
                               timeout_s: float = 420) -> list[str]:
    """Start a blocking serve command, wait for its API, list the models, SIGTERM it; returns model ids."""
    log_path = cwd / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            output = log_path.read_text()
            assert process.poll() is None, f"{argv} exited {process.returncode}:\n{output[-4000:]}"
            assert time.monotonic() < deadline, f"{argv} did not serve within {timeout_s}s:\n{output[-4000:]}"
            url = base_url or (match.group(1) if (match := SERVING.search(output)) else None)
            if url:
                try:
                    answer = httpx.get(f"{url.rstrip('/')}/models", timeout=10)
                    if answer.status_code == 200:
                        return [model["id"] for model in answer.json()["data"]]
                except httpx.TransportError:
                    pass
            time.sleep(2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from runtime.engine.testing import build_tiny_model

    return Path(build_tiny_model(str(tmp_path_factory.mktemp("models") / "strata-lm"), max_position_embeddings=256))


@pytest.mark.slow
def test_serve_llm_pd_serves_on_two_cpus(tmp_path, tiny_model):
    """`serve_apps.llm --mode pd --num-prefill 1 --num-decode 1` fits ingress + prefill + decode into
    2 CPUs and serves (the issue: it waited forever for a third CPU)."""
    argv, assigned = _argv(COMMANDS["serve_apps.llm"], tmp_path)
    argv = [str(tiny_model) if word == str(tmp_path / "strata-lm") else word for word in argv]
    argv += ["--port", str(free_port())]
    models = _serve_until_models_answer(argv, _environment(assigned), tmp_path, base_url=None)
    assert models == ["strata-lm"]
    log = (tmp_path / "serve.log").read_text()
    assert "placement: fitted 3 replicas into 2 CPUs" in log


@pytest.mark.slow
def test_serve_llm_with_cpus_that_cannot_fit_says_why_in_one_line(tmp_path, tiny_model):
    """Two models at --num-cpus-per-replica 0.5 need 2.25 CPUs: refused at once, naming the flag."""
    argv, assigned = _argv(COMMANDS["serve_apps.llm"], tmp_path)
    argv = [str(tiny_model) if word == str(tmp_path / "strata-lm") else word for word in argv]
    argv += ["--model", str(tiny_model), "--model-id", "a", "--model-id", "b", "--num-cpus-per-replica", "0.5",
             "--port", str(free_port())]
    completed = subprocess.run(argv, cwd=tmp_path, env=_environment(assigned), capture_output=True, text=True,
                               timeout=180, start_new_session=True)
    assert completed.returncode == 1
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m serve_apps.llm: 5 replicas"), completed.stderr[-3000:]
    assert "need 2.25 CPUs but the embedded cluster has 2" in last and "--num-cpus-per-replica" in last


@pytest.mark.slow
def test_serve_run_of_the_pd_yaml_serves_on_two_cpus(tmp_path, tiny_model):
    """`STRATA_MODEL_DIR=... serve run cluster_configs/serve/llm_pd.yaml` (its port made a free one)."""
    argv, assigned = _argv(COMMANDS["serve run"], tmp_path)
    config_path = next(word for word in argv if word.endswith(".yaml"))
    config = yaml.safe_load((REPO / config_path).read_text())
    port = free_port()
    config["http_options"] = {**config["http_options"], "host": "127.0.0.1", "port": port}
    (tmp_path / config_path).parent.mkdir(parents=True)
    (tmp_path / config_path).write_text(yaml.safe_dump(config))
    assigned["STRATA_MODEL_DIR"] = str(tiny_model)
    models = _serve_until_models_answer(argv, _environment(assigned), tmp_path, base_url=f"http://127.0.0.1:{port}/v1")
    assert models == [config["applications"][0]["args"]["llm_configs"][0]["model_id"]]


@pytest.mark.slow
def test_convert_of_an_mcap_log(tmp_path):
    """`data_apps.convert --src logs/run1.mcap --src-format mcap --dst /tmp/lerobot`."""
    from fakes.robot_logs import write_mcap

    from runtime.robot.formats.lerobot_read import LeRobotDataset

    src = next(word for word in shlex.split(COMMANDS["data_apps.convert"]) if word.endswith(".mcap"))
    (tmp_path / src).parent.mkdir(parents=True)
    write_mcap(tmp_path / src, episode_seed=0, num_frames=12)
    output, _ = _run_to_completion(COMMANDS["data_apps.convert"], tmp_path, timeout_s=600)
    assert "== convert summary ==" in output and "placement: 1 replica needs 1 of 2 CPUs" in output
    assert LeRobotDataset(tmp_path / "lerobot").num_episodes == 1


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_lm_pretrain_two_workers_zero2(tmp_path):
    """`train_apps.lm_pretrain --output /tmp/strata-lm --num-workers 2 --zero-stage 2` (2 workers, ZeRO-2 kept;
    the tiny preset for 20 steps instead of the default preset's 400)."""
    extra = SIZE_FLAGS["train_apps.lm_pretrain"]
    output, _ = _run_to_completion(COMMANDS["train_apps.lm_pretrain"], tmp_path, timeout_s=3500, extra_args=extra)
    assert f"exported step {400 if AS_WRITTEN else extra[-1]}" in output, output[-3000:]
    assert "placement: 2 replicas need 2 of 2 CPUs (train worker 2x1 CPU)" in output
    assert (tmp_path / "strata-lm" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_robot_loop_two_rounds(tmp_path):
    """`data_apps.loop --workdir /tmp/robot-loop --rounds 2` (2 rounds kept, episodes and steps made few)."""
    output, _ = _run_to_completion(COMMANDS["data_apps.loop"], tmp_path, timeout_s=7000,
                                   extra_args=SIZE_FLAGS["data_apps.loop"])
    assert "loop done: 2 rounds" in output, output[-3000:]
    assert "placement: 5 replicas need 3.5 of 4 CPUs" in output


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_demo(tmp_path):
    """`runtime.demo` as written; the demo's own knobs make its training and robot stages short."""
    output, _ = _run_to_completion(COMMANDS["runtime.demo"], tmp_path, timeout_s=3500,
                                   env={} if AS_WRITTEN else DEMO_KNOBS)
    assert "== Strata demo summary ==" in output, output[-3000:]
    assert re.search(r"llm\s+ok", output) and re.search(r"robot\s+ok", output), output[-3000:]
