import json

import numpy as np
import pyarrow as pa
import pytest

from runtime.robot import schema as S
from runtime.robot.formats.lerobot import LeRobotDataset
from runtime.robot.manifest import EpisodeManifest, Quarantine, commit_block, finalize_lerobot


def _episode(source, num_frames, task="pick"):
    return S.frames_to_table([
        {S.EPISODE_INDEX: 0, S.FRAME_INDEX: i, S.TIMESTAMP: i / 5, S.TASK: task,
         S.STATE: np.full(3, i, np.float32), S.ACTION: np.full(2, len(source), np.float32),
         S.EPISODE_SOURCE: source, **S.pack_pointcloud(np.zeros((i + 1, 3)))}
        for i in range(num_frames)
    ])


def test_commit_is_idempotent_per_source_and_survives_a_torn_journal_line(tmp_path):
    manifest = EpisodeManifest(tmp_path)
    entry = manifest.commit(_episode("a.mcap", 3))
    assert entry["num_frames"] == 3 and entry["num_points"] == 6
    manifest.commit(_episode("a.mcap", 3))  # a retried task commits the same episode again
    manifest.commit(_episode("b.mcap", 2))
    with open(manifest.journal, "a") as handle:
        handle.write('{"source": "c.mcap", "fi')  # killed mid-append
    committed = manifest.committed()
    assert sorted(committed) == ["a.mcap", "b.mcap"]
    assert len(list(manifest.staging.glob("*.parquet"))) == 2
    assert not list(manifest.staging.glob("*.tmp-*"))
    assert [source for source, _ in manifest.iter_committed()] == ["a.mcap", "b.mcap"]


def test_commit_rejects_partial_or_mixed_episodes(tmp_path):
    manifest = EpisodeManifest(tmp_path)
    with pytest.raises(ValueError, match="incomplete"):
        manifest.commit(_episode("a", 4).slice(1))
    mixed = pa.concat_tables([_episode("a", 2), _episode("b", 2)])
    with pytest.raises(ValueError, match="one episode_source"):
        manifest.commit(mixed)
    assert [e["source"] for e in commit_block(tmp_path, mixed)] == ["a", "b"]


def test_quarantine_copies_the_file_and_keeps_one_entry_per_source(tmp_path):
    bad = tmp_path / "in" / "bad.mcap"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89MCAP0\r\n garbage")
    quarantine = Quarantine(tmp_path / "out")
    quarantine.add(str(bad), "ValueError: first")
    quarantine.add(str(bad), "ValueError: again")
    quarantine.add("/data/ds#000003", "KeyError: x")
    entries = quarantine.entries()
    assert [(e["source"], e["reason"]) for e in entries] == [("/data/ds#000003", "KeyError: x"),
                                                              (str(bad), "ValueError: again")]
    copied = entries[1]["copied_to"]
    assert copied.startswith(str(tmp_path / "out" / "quarantine")) and open(copied, "rb").read() == bad.read_bytes()
    lines = (tmp_path / "out" / "quarantine" / "quarantine.jsonl").read_text().splitlines()
    assert all(json.loads(line)["reason"] for line in lines)


def test_finalize_assembles_committed_episodes_in_source_order_and_can_rerun(tmp_path):
    manifest = EpisodeManifest(tmp_path)
    for source, length in [("c", 2), ("a", 4), ("b", 3)]:
        manifest.commit(_episode(source, length))
    totals = finalize_lerobot(tmp_path, robot_type="fake")
    assert totals == {"episodes": 3, "frames": 9}
    totals = finalize_lerobot(tmp_path, robot_type="fake")  # a rerun after a kill during finalize
    dataset = LeRobotDataset(tmp_path)
    assert dataset.fps == 5  # estimated from the timestamps
    assert [dataset.episode_table(i).column(S.EPISODE_SOURCE)[0].as_py() for i in range(3)] == ["a", "b", "c"]
    assert dataset.episodes.column("length").to_pylist() == [4, 3, 2]
