"""The platform's main job: every pillar once on one shared Ray cluster, then a summary table.

    python -m runtime.demo                      # embedded local cluster (what `make demo` runs)
    ray job submit --working-dir . -- python -m runtime.demo
    python -m runtime.demo --only data,train    # a subset of stages

Stages run in order on the same cluster (one object store). Apps are run as their own modules
(`python -m <app>`) joined to this cluster through RAY_ADDRESS, exactly as a user would submit them,
so the demo never imports an app.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from runtime import cluster
from runtime.demo_app_stages import APP_STAGES
from runtime.demo_stages import SMOKE_STAGES, StageResult

logger = logging.getLogger("strata.demo")
STAGES = {**SMOKE_STAGES, **APP_STAGES}


def _print_table(results: list[StageResult]) -> None:
    rows = [("stage", "status", "seconds", "result")]
    rows += [(r.name, r.status, f"{r.seconds:.1f}", r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print("\n== Strata demo summary ==")
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(STAGES)}")
    parser.add_argument("--workdir", default="", help="where stages write artifacts (default: a temp dir)")
    # Logical CPUs: more than the cores of a laptop on purpose, since Ray Train's workers and the Ray
    # Data reads inside them each hold one, and the stages' actors are light.
    parser.add_argument("--num-cpus", type=int, default=6, help="logical CPUs of an embedded cluster")
    parser.add_argument("--require-nodes", type=int, default=1, help="fail unless the cluster has this many nodes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    selected = [name.strip() for name in args.only.split(",") if name.strip()] or list(STAGES)
    unknown = [name for name in selected if name not in STAGES]
    if unknown:
        parser.error(f"--only: unknown stage(s) {unknown}; choose from {list(STAGES)}")

    info = cluster.connect(num_cpus=args.num_cpus)
    print(
        f"strata demo: cluster {info.address} ({'embedded' if info.embedded else 'joined'}), "
        f"{info.num_nodes} node(s), {info.num_cpus:g} CPUs, dashboard {info.dashboard_url or 'off'}"
    )
    if info.num_nodes < args.require_nodes:
        raise RuntimeError(f"--require-nodes {args.require_nodes}: the cluster has only {info.num_nodes} alive node(s)")
    workdir = args.workdir or _temp_workdir()
    os.makedirs(workdir, exist_ok=True)
    results = []
    for name in selected:
        start = time.perf_counter()
        print(f"-- stage {name} ...", flush=True)
        try:
            detail = STAGES[name](workdir=workdir, gcs_address=info.address)
            status = "ok"
        except Exception as error:  # the summary names the failing stage; the traceback is logged
            logger.exception("stage %s failed", name)
            detail, status = f"{type(error).__name__}: {error}"[:200], "FAILED"
        results.append(StageResult(name=name, status=status, seconds=time.perf_counter() - start, detail=detail))
    _print_table(results)
    return 0 if all(r.status == "ok" for r in results) else 1


def _temp_workdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="strata-demo-")


if __name__ == "__main__":
    sys.exit(main())
