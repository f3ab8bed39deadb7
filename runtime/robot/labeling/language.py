"""Language instructions per episode: templated from the task (and phases), or written by Strata's
served LLM through a Serve handle when that application is running.

The LLM path finds the application by name. When it is Strata's LLM app (serve_apps.llm), it streams
from the app's `LLMServer:<model>` (or `Decode:<model>`) deployment with the servers' request shape;
for any other app it calls `serve.get_app_handle(app_name)` with `method_name(prompt: str) -> str`.
When no such application is running the stage says so once and uses templates (the label source
says which one produced each instruction).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import uuid

import pyarrow as pa

from runtime.robot import schema as S

logger = logging.getLogger(__name__)

TEMPLATES = (
    "{task}.",
    "Please {task}.",
    "Robot, {task}.",
    "Your job: {task}.",
)
TEMPLATE_VERSION = "1"
PROMPT = "Write one short imperative instruction for a robot episode. Task: {task}. Phases: {phases}.\nInstruction:"


class InstructionLabeler:
    """Episode-scope `instruction` label. mode: "template", "llm" (fail if no app) or "auto"."""

    def __init__(self, mode: str = "auto", *, app_name: str = "llm", method_name: str = "generate_text",
                 templates: tuple[str, ...] = TEMPLATES, timeout_s: float = 30.0):
        if mode not in ("template", "llm", "auto"):
            raise ValueError(f"instructions.mode must be 'template', 'llm' or 'auto', got {mode!r}")
        self.templates = templates
        self.timeout_s = timeout_s
        self.handle = None
        self.app_name = app_name
        if mode != "template":
            self.handle = _app_handle(app_name, method_name)
            if self.handle is None and mode == "llm":
                raise ValueError(f"instructions.mode='llm' but no Serve application {app_name!r} is running")

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for episode in S.episode_tables(batch):
            text, source, version = self.instruction(episode)
            label = S.Label(name="instruction", value=text, source=source, version=version, scope="episode")
            out.append(S.with_labels(episode, [[label]] * episode.num_rows))
        return pa.concat_tables(out, promote_options="permissive") if out else batch

    def instruction(self, episode: pa.Table) -> tuple[str, str, str]:
        task = (episode.column(S.TASK)[0].as_py() or "do the task").strip().rstrip(".")
        if self.handle is not None:
            prompt = PROMPT.format(task=task, phases=", ".join(_phases(episode)) or "unknown")
            text = self.handle(prompt, self.timeout_s)
            return str(text).strip(), f"llm:{self.app_name}", "1"
        key = episode.column(S.EPISODE_SOURCE)[0].as_py() if S.EPISODE_SOURCE in episode.column_names else None
        digest = int(hashlib.sha1(str(key or task).encode()).hexdigest(), 16)
        template = self.templates[digest % len(self.templates)]
        text = template.format(task=task)
        return text[0].upper() + text[1:], "template", TEMPLATE_VERSION


def _phases(episode: pa.Table) -> list[str]:
    for label in S.labels_from_json(episode.column(S.LABELS)[0].as_py() if S.LABELS in episode.column_names else None):
        if label.name == "phase_segments":
            return [segment[0] for segment in label.value]
    return []


SERVER_PREFIXES = ("LLMServer:", "Decode:")  # serve_apps.llm deployments that generate


def _app_handle(app_name: str, method_name: str):
    """A `(prompt, timeout_s) -> text` caller for the app, or None when Serve or the app is not running."""
    from ray import serve

    try:
        status = serve.status()
    except Exception as error:  # Serve not started on this cluster: no LLM to ask
        logger.info("Serve is not running (%s); instructions come from templates", error)
        return None
    app = status.applications.get(app_name)
    if app is None or str(app.status) not in ("RUNNING", "ApplicationStatus.RUNNING"):
        logger.warning("Serve application %r is not running; instructions come from templates", app_name)
        return None
    servers = sorted(name for name in app.deployments if name.startswith(SERVER_PREFIXES))
    if servers:
        server = min(servers, key=lambda name: SERVER_PREFIXES.index(name.split(":")[0] + ":"))
        handle = serve.get_deployment_handle(server, app_name=app_name).options(stream=True)
        return functools.partial(_generate_from_server, handle, server.split(":", 1)[1])
    handle = serve.get_app_handle(app_name).options(method_name=method_name)
    return lambda prompt, timeout_s: handle.remote(prompt).result(timeout_s=timeout_s)


def _generate_from_server(handle, model: str, prompt: str, timeout_s: float, max_tokens: int = 48) -> str:
    """Stream one greedy completion from a serve_apps.llm server deployment and join its text."""
    request = {"request_id": f"strata-label-{uuid.uuid4().hex}", "model": model, "prompt": prompt,
               "sampling": {"max_tokens": max_tokens, "temperature": 0.0}}
    parts = []
    deadline = time.monotonic() + timeout_s
    for chunk in handle.generate.remote(request):
        if "error" in chunk:
            raise RuntimeError(f"LLM server {model} failed: {chunk['error']}")
        parts += [out["text"] for out in chunk.get("outputs", ()) if out.get("index", 0) == 0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"LLM server {model} took more than {timeout_s} s")
    return "".join(parts).strip().splitlines()[0] if "".join(parts).strip() else ""
