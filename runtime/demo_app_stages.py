"""Demo stages that run Strata's apps as their own drivers on the demo's cluster (no app imports)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import ray

from runtime.cluster import free_port


def run_app(module: str, args: list[str], *, gcs_address: str, timeout_s: float = 900) -> str:
    """Run an app module as its own driver on this cluster (as `ray job submit` would); return stdout."""
    env = {**os.environ, "RAY_ADDRESS": gcs_address, "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    sys.stdout.write(completed.stdout[-4000:])
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-4000:])
        raise RuntimeError(f"python -m {module} exited {completed.returncode}")
    return completed.stdout


def lm_stage(*, workdir: str, gcs_address: str) -> str:
    """Train a small Llama (DeepSpeed ZeRO-2, 2 workers) under the elastic supervisor, SIGKILL one of its
    workers mid-run from this driver (as a chaos drill would), let it heal, export it in HF format."""
    from runtime.chaos.inject import kill_worker
    from runtime.elastic.run import find_supervisors

    output = os.path.join(workdir, "lm")
    kill_at_step = int(os.environ.get("STRATA_DEMO_KILL_AT_STEP", "30"))
    env = {**os.environ, "RAY_ADDRESS": gcs_address, "PYTHONUNBUFFERED": "1"}
    log_path = os.path.join(workdir, "lm_pretrain.log")
    with open(log_path, "w") as log:
        trainer = subprocess.Popen(
            [sys.executable, "-m", "train_apps.lm_pretrain", "--output", output,
             "--preset", os.environ.get("STRATA_DEMO_LM_PRESET", "default"),
             "--max-steps", os.environ.get("STRATA_DEMO_LM_STEPS", "120"),
             "--checkpoint-every-steps", "10", "--num-workers", "2", "--zero-stage", "2"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        injected = None
        while trainer.poll() is None:
            time.sleep(1.0)
            if injected is not None:
                continue
            for supervisor in find_supervisors("lm_pretrain"):
                status = ray.get(supervisor.status.remote())
                if (status.get("step") or 0) >= kill_at_step:
                    kill_worker(supervisor, rank=1)
                    injected = status["step"]
                    print(f"chaos: SIGKILL of rank 1 at step {injected}", flush=True)
    with open(log_path) as f:
        output_text = f.read()
    if trainer.returncode != 0:
        sys.stdout.write(output_text[-4000:])
        raise RuntimeError(f"python -m train_apps.lm_pretrain exited {trainer.returncode} (log {log_path})")
    decisions = [line for line in output_text.splitlines() if line.startswith("fault ")]
    exported = [line for line in output_text.splitlines() if line.startswith("exported step")]
    print("\n".join(decisions + exported))
    healed = f"killed rank 1 at step {injected}; " + ("; ".join(decisions) or "no decision logged")
    return f"{exported[-1] if exported else 'no export line'} | {healed}"


def _http_json(url: str, body: dict | None = None, timeout_s: float = 120) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def llm_stage(*, workdir: str, gcs_address: str) -> str:
    """Serve the trained LM with prefill and decode in separate replica groups; ask it twice over HTTP."""
    model_dir = os.path.join(workdir, "lm")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise RuntimeError(f"no model at {model_dir}: run the lm stage first")
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": gcs_address, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "serve_apps.llm", "--model", model_dir, "--model-id", "strata-demo",
         "--mode", "pd", "--num-prefill", "1", "--num-decode", "1", "--num-cpus-per-replica", "0.5",
         "--min-pd-prompt-tokens", "8", "--port", str(port), "--name", "strata-demo-llm"],
        env=env, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 300
        while True:
            try:
                models = _http_json(f"{base}/models", timeout_s=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"model API did not come up (exit code {server.poll()})") from None
                time.sleep(2)
        prompt = "def read_config(path):\n    \"\"\"Read the configuration file and"
        completion = _http_json(f"{base}/completions", {
            "model": "strata-demo", "prompt": prompt, "max_tokens": 32, "temperature": 0.0})
        chat = _http_json(f"{base}/chat/completions", {
            "model": "strata-demo", "messages": [{"role": "user", "content": "Write a docstring."}],
            "max_tokens": 24, "temperature": 0.0})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        # Serve's replicas are detached: make sure the app is gone even if the server died before its
        # own clean-up, so later stages get their CPUs back.
        from ray import serve

        if "strata-demo-llm" in serve.status().applications:
            serve.delete("strata-demo-llm")
    text = completion["choices"][0]["text"]
    print(f"completion for {prompt!r}:\n{prompt}{text}\nchat: {chat['choices'][0]['message']['content']!r}")
    usage = completion["usage"]
    return (f"{[m['id'] for m in models['data']]} prefill/decode split; {usage['prompt_tokens']} prompt + "
            f"{usage['completion_tokens']} generated tokens; text {text[:40]!r}")


def robot_stage(*, workdir: str, gcs_address: str) -> str:
    """The closed robot loop, short: collect -> label -> train -> deploy -> evaluate in MuJoCo."""
    run_app(
        "data_apps.loop",
        ["--workdir", os.path.join(workdir, "robot"), "--rounds", "1", "--quick",
         "--num-episodes", os.environ.get("STRATA_DEMO_ROBOT_EPISODES", "30"), "--eval-episodes", "10"],
        gcs_address=gcs_address,
    )
    report_path = os.path.join(workdir, "robot", "loop_report.json")
    with open(report_path) as f:
        report = json.load(f)
    rounds = report["rounds"] if isinstance(report, dict) else report
    last = rounds[-1]
    return (f"{last['episodes_total']} episodes, label F1 {last['label_phase_f1']:.2f}, "
            f"policy success {last['success_rate']:.0%} on unseen seeds")


APP_STAGES = {
    "lm": lm_stage,
    "llm": llm_stage,
    "robot": robot_stage,
}
