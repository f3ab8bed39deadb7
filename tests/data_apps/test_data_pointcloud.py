"""data_apps.pointcloud end to end on Ray: synthetic frames and a directory of depth PNGs, with output."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_apps import pointcloud
from runtime.robot import schema
from runtime.robot.pointcloud.pipeline import SyntheticDepth


def test_synthetic_run_prints_summary(ray_local, capsys):
    assert (
        pointcloud.main(
            ["--src", "synthetic", "--num-frames", "24", "--num-samples", "64", "--batch-size", "8"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{") : printed.index("}") + 1])
    assert summary["frames"] == 24
    assert summary["points_out"] == 24 * 64
    assert summary["points_in"] > 24 * 10_000
    assert summary["frames_per_s"] > 0


def test_depth_png_directory_to_parquet(ray_local, tmp_path):
    src = tmp_path / "depth"
    src.mkdir()
    render = SyntheticDepth(height=32, width=40)
    for frame in range(5):
        (src / f"{frame:04d}.png").write_bytes(schema.encode_depth(render.render(frame)))
    out = tmp_path / "clouds"
    args = pointcloud.parse_args(
        ["--src", str(src), "--height", "32", "--width", "40", "--num-samples", "32", "--output", str(out)]
    )
    summary = pointcloud.run(args)
    assert summary.frames == 5 and summary.points_out == 5 * 32
    table = pq.read_table(sorted(str(path) for path in out.glob("*.parquet")))
    clouds = np.stack([np.asarray(c).reshape(32, 3) for c in table.column(schema.POINTCLOUD).to_pylist()])
    assert clouds.shape == (5, 32, 3)
    assert (clouds[..., 2] > 0.3).all() and (clouds[..., 2] < 1.2).all()  # inside the crop box
    assert json.loads((out / "summary.json").read_text())["frames"] == 5
    with pytest.raises(ValueError, match="--output"):
        pointcloud.run(args)  # a second run must not mix into the first one's output
