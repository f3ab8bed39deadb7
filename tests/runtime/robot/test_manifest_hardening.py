"""Issue #15 item 11: an episode that does not fit the dataset is quarantined before commit (never a
crash loop in finalize_lerobot), and a failing quarantine copy neither loses the source nor stops the job."""

import errno
import json
import shutil

import numpy as np

from runtime.robot import schema as S
from runtime.robot.formats.lerobot import LeRobotDataset
from runtime.robot.manifest import EpisodeCommitSink, EpisodeManifest, Quarantine, finalize_lerobot


def _episode(source, num_frames=4, *, state_dim=3, image_hw=(18, 23), frame_indices=None):
    frame_indices = list(range(num_frames)) if frame_indices is None else frame_indices
    return S.frames_to_table([
        {S.EPISODE_INDEX: 0, S.FRAME_INDEX: f, S.TIMESTAMP: f / 5, S.TASK: "pick",
         S.STATE: np.full(state_dim, f, np.float32), S.ACTION: np.full(2, f, np.float32), S.EPISODE_SOURCE: source,
         S.image_key("front"): S.encode_image(np.full((*image_hw, 3), 10 * f, np.uint8)),
         **S.pack_pointcloud(np.zeros((f + 1, 3)))}
        for f in frame_indices
    ])


def _bad_episodes():
    return {
        "c-extra-joints": _episode("c-extra-joints", state_dim=5),
        "d-camera": _episode("d-camera", image_hw=(20, 23)),
        "e-gap": _episode("e-gap", frame_indices=[0, 1, 3, 4]),
    }


def _commit(root, tables):
    """What the pipeline's commit stage does with a stream of blocks (one episode per block)."""
    sink = EpisodeCommitSink(root)
    sink.on_write_complete(type("WriteResult", (), {"write_returns": [sink.write(tables, None)]})())
    return sink.entries


def _reasons(root):
    return {entry["source"]: entry["reason"] for entry in Quarantine(root).entries()}


def test_mismatched_episodes_are_quarantined_with_reason_and_the_rest_finalizes(tmp_path):
    good = [_episode("a"), _episode("b", 3)]
    entries = _commit(tmp_path, [good[0], *_bad_episodes().values(), good[1]])
    assert "e-gap" not in {entry["source"] for entry in entries}  # the gap is the episode's own problem
    # the first finalize fixes the spec from the first episode in source order, "a"
    assert finalize_lerobot(tmp_path, robot_type="fake") == {"episodes": 2, "frames": 7}
    reasons = _reasons(tmp_path)
    assert sorted(reasons) == ["c-extra-joints", "d-camera", "e-gap"]
    assert "'observation.state'" in reasons["c-extra-joints"]
    assert "[3]" in reasons["c-extra-joints"] and "[5]" in reasons["c-extra-joints"], reasons
    assert "'observation.images.front'" in reasons["d-camera"]
    assert "[18, 23, 3]" in reasons["d-camera"] and "[20, 23, 3]" in reasons["d-camera"], reasons
    assert "frame_index" in reasons["e-gap"] and "1 to 3" in reasons["e-gap"], reasons
    dataset = LeRobotDataset(tmp_path)
    assert [dataset.episode_table(i).column(S.EPISODE_SOURCE)[0].as_py() for i in range(2)] == ["a", "b"]

    # a rerun reads the inputs not committed again: now quarantined before commit, the same reasons and dataset
    journal_before = EpisodeManifest(tmp_path).journal.read_text()
    assert _commit(tmp_path, list(_bad_episodes().values())) == []
    assert EpisodeManifest(tmp_path).journal.read_text() == journal_before
    assert _reasons(tmp_path) == reasons
    assert finalize_lerobot(tmp_path, robot_type="fake") == {"episodes": 2, "frames": 7}


def test_mismatched_episodes_committed_before_the_check_are_quarantined_by_finalize(tmp_path):
    """Outputs of earlier runs hold such episodes already; finalize sets them aside instead of failing."""
    manifest = EpisodeManifest(tmp_path)
    manifest.commit(_episode("a"))
    manifest.commit(_episode("c-extra-joints", state_dim=5))
    manifest.commit(_episode("d-camera", image_hw=(20, 23)))
    for _ in range(2):  # every rerun ends the same way
        assert finalize_lerobot(tmp_path, robot_type="fake") == {"episodes": 1, "frames": 4}
        assert sorted(_reasons(tmp_path)) == ["c-extra-joints", "d-camera"]
        assert sorted(manifest.committed()) == ["a"]


def test_unsafe_feature_key_is_quarantined_naming_the_key(tmp_path):
    bad = _episode("x")
    bad = bad.rename_columns([S.image_key("cam/../../../X") if n == S.image_key("front") else n
                              for n in bad.column_names])
    assert [entry["source"] for entry in _commit(tmp_path, [_episode("a"), bad])] == ["a"]
    assert "'observation.images.cam/../../../X'" in _reasons(tmp_path)["x"]
    finalize_lerobot(tmp_path, robot_type="fake")
    assert not (tmp_path.parent / "X").exists() and not (tmp_path / "X").exists()


def test_a_failing_quarantine_copy_keeps_the_source_and_is_recorded(tmp_path, monkeypatch):
    bag = tmp_path / "in" / "bag2"  # a ROS 2 bag directory holding a dangling link: copytree fails
    bag.mkdir(parents=True)
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {}")
    (bag / "gone.db3").symlink_to(tmp_path / "in" / "missing.db3")
    quarantine = Quarantine(tmp_path / "out")
    quarantine.add(str(bag), "CorruptRecordingError: truncated")
    (entry,) = quarantine.entries()
    assert entry["copied_to"] is None and "gone.db3" in entry["not_copied"], entry
    assert (bag / "metadata.yaml").exists() and (bag / "gone.db3").is_symlink()  # the source is untouched

    single = tmp_path / "in" / "a.mcap"
    single.write_bytes(b"\x89MCAP0\r\n cut short")

    def disk_full(src, dst, **kwargs):
        with open(dst, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copy2", disk_full)
    quarantine.add(str(single), "CorruptRecordingError: truncated")
    entry = {e["source"]: e for e in quarantine.entries()}[str(single)]
    assert entry["copied_to"] is None and "No space left" in entry["not_copied"]
    assert single.read_bytes() == b"\x89MCAP0\r\n cut short"
    leftovers = [p.name for p in quarantine.dir.iterdir() if p.name != "quarantine.jsonl"]
    assert leftovers == [], leftovers  # no half copy that looks like a real one
    assert all(json.loads(line)["reason"] for line in quarantine.journal.read_text().splitlines())


def test_episode_of_a_lerobot_dataset_is_quarantined_without_copying_the_whole_dataset(tmp_path):
    from runtime.robot.formats.lerobot import LeRobotWriter

    source_root = tmp_path / "src"
    writer = LeRobotWriter(source_root, fps=5)
    writer.add_episode(_episode("a"))
    writer.finalize()
    quarantine = Quarantine(tmp_path / "out")
    quarantine.add(f"{source_root}#000000", "ValueError: frame_index jumps")
    (entry,) = quarantine.entries()
    assert entry["copied_to"] is None and "episode of" in entry["not_copied"]
    assert [p.name for p in quarantine.dir.iterdir()] == ["quarantine.jsonl"]

