"""The worker side of chaos: directives a HealthAgent wrote for this process, applied once per step.

`report_step` calls `apply_directives` in every supervised worker. A directive file
/tmp/strata_chaos/<pid>.json (written by `HealthAgent.set_chaos`) can slow the worker down
(straggler) or make it raise; the check is one `os.stat` per step when no directive exists.
"""

from __future__ import annotations

import json
import os
import time

from runtime.health.agent import CHAOS_DIR

_state: dict = {"mtime": None, "directive": {}}


def apply_directives(rank: int, step: int) -> None:
    path = os.path.join(CHAOS_DIR, f"{os.getpid()}.json")
    try:
        mtime = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return
    if mtime != _state["mtime"]:
        with open(path) as file:
            _state["directive"] = json.load(file)
        _state["mtime"] = mtime
    directive = _state["directive"]
    if directive.get("sleep_s"):
        time.sleep(float(directive["sleep_s"]))
    if directive.get("raise_message"):
        raise RuntimeError(directive["raise_message"])
