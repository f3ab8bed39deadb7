"""Issue #15 items 12 and 13: LeRobot paths never leave their root (crafted meta/info.json, feature
keys), a finished dataset appears at once and a crash in finalize leaves the previous one readable,
the reader handles gaps in episode indices and reads the episodes metadata once."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from runtime.robot import schema as S
from runtime.robot.formats import lerobot_publish, lerobot_read
from runtime.robot.formats.lerobot import LeRobotDataset, LeRobotWriter
from runtime.robot.manifest import EpisodeManifest, finalize_lerobot

REPO = Path(__file__).resolve().parents[3]
CAMERA = S.image_key("front")


def _episode(source, num_frames=4, *, camera=CAMERA):
    return S.frames_to_table([
        {S.EPISODE_INDEX: 0, S.FRAME_INDEX: f, S.TIMESTAMP: f / 5, S.TASK: "pick",
         S.STATE: np.full(3, f, np.float32), S.ACTION: np.full(2, len(source), np.float32), S.EPISODE_SOURCE: source,
         camera: S.encode_image(np.full((16, 24, 3), 12 * f + len(source), np.uint8))}
        for f in range(num_frames)
    ])


def _write(root, sources=("a", "b", "c", "d")):
    writer = LeRobotWriter(root, fps=5)
    for source in sources:
        writer.add_episode(_episode(source))
    writer.finalize()
    return root


def _edit_info(root, edit):
    info = json.loads((root / "meta/info.json").read_text())
    edit(info)
    (root / "meta/info.json").write_text(json.dumps(info))


# item 12: reading -------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["data_path", "video_path"])
def test_reader_rejects_path_templates_that_leave_the_dataset(tmp_path, template):
    root = _write(tmp_path / "ds")
    outside = tmp_path / "outside"
    original = json.loads((root / "meta/info.json").read_text())[template]
    for path in [p for p in root.glob(("data" if template == "data_path" else "videos") + "/**/*") if p.is_file()]:
        target = outside / path.relative_to(root)  # a copy outside the dataset a crafted template would read
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    _edit_info(root, lambda info: info.update({template: "../outside/" + original}))
    with pytest.raises(ValueError, match=f"{template}.*outside"):
        LeRobotDataset(root).episode_table(0)


def test_reader_rejects_an_unsafe_feature_key(tmp_path):
    root = _write(tmp_path / "ds")
    bad_key = "observation.images.cam/../../X"
    _edit_info(root, lambda info: info["features"].update({bad_key: info["features"].pop(CAMERA)}))
    with pytest.raises(ValueError, match=r"'observation\.images\.cam/\.\./\.\./X'"):
        LeRobotDataset(root)


# item 12: writing -------------------------------------------------------------------------------


def test_writer_rejects_an_unsafe_feature_key_and_writes_nothing_outside(tmp_path):
    root = tmp_path / "deep" / "er" / "ds"
    bad_key = S.image_key("cam/../../../../X")
    writer = LeRobotWriter(root, fps=5)
    with pytest.raises(ValueError, match=r"'observation\.images\.cam/\.\./\.\./\.\./\.\./X'"):
        writer.add_episode(_episode("a", camera=bad_key))
    assert not (tmp_path / "X").exists() and not (tmp_path / "deep" / "X").exists()


# item 13: reader --------------------------------------------------------------------------------


def _drop_episode(root, episode_index):
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    keep = [i for i, e in enumerate(table.column("episode_index").to_pylist()) if e != episode_index]
    pq.write_table(table.take(keep), path)


def test_reader_handles_gaps_in_episode_indices(tmp_path):
    root = _write(tmp_path / "ds")
    _drop_episode(root, 2)  # episodes 0, 1, 3
    sources = lerobot_read.episode_sources(root)
    assert [s.rpartition("#")[2] for s in sources] == ["000000", "000001", "000003"]
    read = [next(lerobot_read.read_episodes(source)) for source in sources]
    assert [t.column(S.ACTION)[0].as_py()[0] for t in read] == [1.0, 1.0, 1.0]
    assert [t.column(S.EPISODE_SOURCE)[0].as_py() for t in read] == sources
    assert len(list(LeRobotDataset(root).iter_episodes(decode_videos=False))) == 3


def test_reader_reads_the_episodes_metadata_once_for_all_episodes(tmp_path, monkeypatch):
    root = _write(tmp_path / "ds", sources=[f"e{i}" for i in range(6)])
    reads = []
    real_read_table = lerobot_read.pq.read_table

    def counting_read_table(path, *args, **kwargs):
        reads.append(str(path))
        return real_read_table(path, *args, **kwargs)

    monkeypatch.setattr(lerobot_read.pq, "read_table", counting_read_table)
    sources = lerobot_read.episode_sources(root)
    for source in sources:  # what one read task does with its share of the sources
        next(lerobot_read.read_episodes(source))
    episode_reads = [path for path in reads if "meta/episodes" in path]
    assert len(episode_reads) == 1, episode_reads


# item 13: atomic publish ------------------------------------------------------------------------


def _assert_reads_back_fully(root, sources):
    dataset = LeRobotDataset(root)
    assert dataset.num_episodes == len(sources) == json.loads((root / "meta/info.json").read_text())["total_episodes"]
    for i, source in enumerate(sources):
        table = dataset.episode_table(i)
        assert table.column(S.EPISODE_SOURCE)[0].as_py() == source
        assert table.num_rows == 4 and table.column(CAMERA).null_count == 0


def _committed(root, sources):
    manifest = EpisodeManifest(root)
    for source in sources:
        manifest.commit(_episode(source))


class _Crash(Exception):
    pass


class _CrashAtStep:
    """Wraps the filesystem steps finalize takes; the `crash_at`-th call raises instead of running."""

    STEPS = [(os, "replace"), (os, "rename"), (shutil, "rmtree"), (shutil, "move"),
             (lerobot_publish, "exchange_directories")]

    def __init__(self, monkeypatch, crash_at):
        self.crash_at, self.calls = crash_at, 0
        for module, name in self.STEPS:
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name)))

    def _wrap(self, real):
        def step(*args, **kwargs):
            self.calls += 1
            if self.calls == self.crash_at:
                raise _Crash(f"killed at step {self.crash_at}")
            return real(*args, **kwargs)
        return step


def test_a_crash_at_any_step_of_finalize_leaves_a_whole_dataset(tmp_path, monkeypatch):
    """Each filesystem step of finalize fails in turn (as a kill there would stop it); the dataset
    left behind is always the previous version or the new one, read back whole."""
    root = tmp_path / "out"
    _committed(root, ["a", "b"])
    finalize_lerobot(root)
    _committed(root, ["c"])
    crash_at, crashed = 0, True
    while crashed:
        crash_at += 1
        with monkeypatch.context() as patch:
            _CrashAtStep(patch, crash_at)
            try:
                finalize_lerobot(root)
                crashed = False
            except _Crash:
                crashed = True
        total = json.loads((root / "meta/info.json").read_text())["total_episodes"]
        _assert_reads_back_fully(root, ["a", "b", "c"][:total])
    assert crash_at > 3
    finalize_lerobot(root)
    _assert_reads_back_fully(root, ["a", "b", "c"])
    video_chunks = list(root.glob("videos/*/chunk-*"))
    assert len(list(root.glob("data/chunk-*"))) == 1 and len(video_chunks) == 1  # older versions cleaned up


def test_a_killed_finalize_subprocess_leaves_a_whole_dataset(tmp_path):
    root = tmp_path / "out"
    old = [f"e{i:02d}" for i in range(6)]
    _committed(root, old)
    script = f"from runtime.robot.manifest import finalize_lerobot; finalize_lerobot({str(root)!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True, timeout=300)
    full_run_s = time.monotonic() - started
    new = old + [f"f{i:02d}" for i in range(6)]
    _committed(root, new[6:])
    rng = random.Random(0)
    for _ in range(4):
        process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env)
        time.sleep(rng.uniform(0.3, 1.0) * full_run_s)
        process.send_signal(signal.SIGKILL)
        process.wait()
        total = json.loads((root / "meta/info.json").read_text())["total_episodes"]
        _assert_reads_back_fully(root, new[:total])
    finalize_lerobot(root)
    _assert_reads_back_fully(root, new)
