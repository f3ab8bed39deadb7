import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


@pytest.mark.slow
def test_dataset_four_times_the_object_store_streams_through_with_bounded_store(tmp_path):
    """320 MB of episodes (generated in read tasks) through an 80 MB object store, in its own cluster."""
    store_mb, total_mb = 80, 320
    out = tmp_path / "robot_memory.json"
    ray_tmp = tempfile.mkdtemp(prefix="rm", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(REPO))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.robot_memory", "--total-mb", str(total_mb), "--object-store-mb",
             str(store_mb), "--episode-mb", "8", "--num-cpus", "2", "--no-baseline", "--out", str(out)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    streaming = json.loads(out.read_text())["streaming"]
    assert streaming["processed_bytes"] >= 4 * store_mb * MB * 0.95
    assert len(streaming["samples"]) > 0
    assert streaming["peak_store_used_bytes"] <= store_mb * MB
    # Streaming keeps the working set in the store: nothing like the whole dataset gets spilled.
    assert streaming["peak_spilled_bytes"] < streaming["processed_bytes"] / 4
