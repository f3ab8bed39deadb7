import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fakes import robot_logs as F
from helpers.tolerances import unit_roundoff

from data_apps import convert
from runtime.robot import schema as S
from runtime.robot.formats.lerobot import LeRobotDataset

REPO = Path(__file__).resolve().parents[2]


def _mcap_inputs(directory: Path, num_good: int, num_frames: int = 6) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for seed in range(num_good):
        F.write_mcap(directory / f"ep{seed:03d}.mcap", seed, num_frames)
    (directory / "map.json").write_text(json.dumps(F.mapping_dict()))
    return directory / "map.json"


def _sources(root: Path) -> list[str]:
    dataset = LeRobotDataset(root)
    return [dataset.episode_table(i, decode_videos=False).column(S.EPISODE_SOURCE)[0].as_py()
            for i in range(dataset.num_episodes)]


def test_convert_mcap_quarantines_corrupt_files_and_resumes(tmp_path, ray_local, capsys):
    src, dst = tmp_path / "logs", tmp_path / "out"
    topic_map = _mcap_inputs(src, 3)
    F.truncate(F.write_mcap(src / "truncated.mcap", 7, 6), 0.5)
    (src / "garbage.mcap").write_bytes(b"not an mcap file at all")
    args = ["--src", str(src), "--src-format", "mcap", "--dst", str(dst), "--topic-map", str(topic_map)]
    assert convert.main(args) == 0
    printed = capsys.readouterr().out
    assert "quarantined       2" in printed and "truncated.mcap" in printed and "garbage.mcap" in printed
    dataset = LeRobotDataset(dst)
    assert dataset.num_episodes == 3 and dataset.num_frames == 18 and dataset.fps == F.FPS
    assert _sources(dst) == [str((src / f"ep{s:03d}.mcap").resolve()) for s in range(3)]
    episode = dataset.episode_table(1)
    values = F.frame_values(1, 2, 6)
    # float64 sources stored as list<float32>: one rounding, half a float32 step
    np.testing.assert_allclose(episode.column(S.STATE)[2].as_py(), values["state"], rtol=unit_roundoff(np.float32))
    np.testing.assert_allclose(episode.column(S.ACTION)[2].as_py(), values["action"], rtol=unit_roundoff(np.float32))
    assert episode.column(S.POINTCLOUD_NUM_POINTS)[2].as_py() == F.NUM_POINTS
    quarantined = {Path(e["source"]).name: e for e in map(json.loads, open(dst / "quarantine/quarantine.jsonl"))}
    assert set(quarantined) == {"truncated.mcap", "garbage.mcap"}
    assert all(Path(e["copied_to"]).exists() for e in quarantined.values())
    for name, entry in quarantined.items():  # the reason names the file and what is wrong with it
        assert entry["reason"].startswith(f"CorruptRecordingError: {src / name}: MCAP file is truncated or corrupt ("), entry
    summary = json.loads((dst / ".strata/summary.json").read_text())
    assert summary["episodes_this_run"] == 3 and summary["points_this_run"] == 18 * F.NUM_POINTS

    F.write_mcap(src / "ep003.mcap", 3, 6)  # new data arrives; the rerun adds only that
    assert convert.main(args) == 0
    summary = json.loads((dst / ".strata/summary.json").read_text())
    assert (summary["episodes_this_run"], summary["episodes_resumed"], summary["episodes_total"]) == (1, 3, 4)
    assert len(set(_sources(dst))) == 4


def test_convert_hdf5_then_lerobot_to_lerobot(tmp_path, ray_local):
    path = F.write_robomimic(tmp_path / "demos.hdf5", num_demos=2, num_frames=5)
    first, second = tmp_path / "first", tmp_path / "second"
    convert.main(["--src", str(path), "--src-format", "hdf5", "--dst", str(first), "--fps", "10", "--task", "lift"])
    convert.main(["--src", str(first), "--src-format", "lerobot", "--dst", str(second)])
    a, b = LeRobotDataset(first), LeRobotDataset(second)
    assert a.num_episodes == b.num_episodes == 2 and b.fps == 10
    for i in range(2):
        ta, tb = a.episode_table(i), b.episode_table(i)
        assert ta.column(S.STATE).to_pylist() == tb.column(S.STATE).to_pylist()
        assert tb.column(S.TASK).to_pylist() == ["lift"] * 5
        assert tb.column(S.SUCCESS).to_pylist()[-1] is True
    info = json.loads((second / "meta/info.json").read_text())
    assert info["features"]["observation.images.agentview"]["dtype"] == "video"


def test_convert_ros1_and_ros2_bags(tmp_path, ray_local):
    src = tmp_path / "bags"
    src.mkdir()
    F.write_rosbag(src / "a.bag", 1, episode_seed=0, num_frames=4)
    F.write_rosbag(src / "b", 2, episode_seed=1, num_frames=5)
    (tmp_path / "map.json").write_text(json.dumps(F.mapping_dict()))
    convert.main(["--src", str(src), "--src-format", "rosbag", "--dst", str(tmp_path / "out"),
                  "--topic-map", str(tmp_path / "map.json")])
    dataset = LeRobotDataset(tmp_path / "out")
    assert dataset.episodes.column("length").to_pylist() == [4, 5]


@pytest.mark.slow
def test_convert_killed_midway_and_rerun_has_no_missing_or_duplicate_episodes(tmp_path):
    num_episodes = 24
    src, dst = tmp_path / "logs", tmp_path / "out"
    topic_map = _mcap_inputs(src, num_episodes, num_frames=8)
    ray_tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths must fit
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(REPO))
        command = [sys.executable, "-m", "data_apps.convert", "--src", str(src), "--src-format", "mcap",
                   "--dst", str(dst), "--topic-map", str(topic_map), "--num-cpus", "1"]
        journal = dst / ".strata" / "manifest.jsonl"
        with open(tmp_path / "first.log", "w") as log:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and process.poll() is None:
                if journal.exists() and len(journal.read_text().splitlines()) >= 3:
                    break
                time.sleep(0.05)
            assert process.poll() is None, "the first run ended before it could be killed"
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        committed_at_kill = len(journal.read_text().splitlines())
        assert 3 <= committed_at_kill < num_episodes
        assert not (dst / "meta" / "info.json").exists()

        rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        summary = json.loads((dst / ".strata/summary.json").read_text())
        assert summary["episodes_resumed"] >= 3
        assert summary["episodes_resumed"] + summary["episodes_this_run"] == num_episodes
        sources = _sources(dst)
        assert sorted(sources) == sorted(str(p.resolve()) for p in src.glob("*.mcap"))  # none missing
        assert len(set(sources)) == len(sources) == num_episodes  # none duplicated
        data = pq.ParquetDataset(sorted(str(p) for p in dst.glob("data/*/*.parquet"))).read()
        assert data.num_rows == num_episodes * 8
    finally:
        _kill_leftover_ray_processes(ray_tmp)


def _kill_leftover_ray_processes(ray_tmp: str) -> None:
    """Ray's processes from the killed run die with their driver; make sure (by our temp dir only)."""
    import psutil

    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if ray_tmp in cmdline:
            try:
                process.kill()
            except psutil.Error:
                continue
    shutil.rmtree(ray_tmp, ignore_errors=True)
