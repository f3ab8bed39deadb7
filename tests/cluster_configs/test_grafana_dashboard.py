"""The Grafana dashboard only plots metrics that Strata code actually records."""

import json
import os
import re
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARD = os.path.join(ROOT, "cluster_configs", "grafana", "strata_dashboard.json")


def _recorded_metric_names() -> set[str]:
    sources = subprocess.run(
        ["git", "grep", "-hoE", r"strata_[a-z0-9_]+", "--", "runtime", "serve_apps", "train_apps", "data_apps"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return set(sources.split())


def test_every_panel_metric_is_recorded_somewhere():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    recorded = _recorded_metric_names()
    plotted = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in re.findall(r"ray_(strata_[a-z0-9_]+)", target["expr"]):
                plotted.add(re.sub(r"_bucket$", "", name))
    assert plotted, "dashboard plots nothing"
    missing = sorted(plotted - recorded)
    assert not missing, f"dashboard plots metrics no code records: {missing}"


def test_panels_have_unique_ids_and_titles():
    with open(DASHBOARD) as f:
        panels = json.load(f)["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert all(p["title"] for p in panels)
