import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.tolerances import (
    assert_within,
    max_magnitude,
    reduction_tolerance,
    sqrt_tolerance,
    unit_roundoff,
)

from runtime.robot import schema as S
from runtime.robot.formats.lerobot import LeRobotDataset, LeRobotWriter, read_lerobot, write_lerobot

LENGTHS = [5, 7, 3, 6]


def _episode(episode, num_frames):
    rng = np.random.default_rng(episode)
    return S.frames_to_table([
        {
            S.EPISODE_INDEX: episode, S.FRAME_INDEX: i, S.TIMESTAMP: i / 10, S.TASK: f"task {episode % 2}",
            S.STATE: rng.normal(size=3).astype(np.float32), S.ACTION: np.full(2, episode * 100 + i, np.float32),
            S.DONE: i == num_frames - 1,
            S.image_key("front"): S.encode_image(np.full((18, 23, 3), 20 * episode + 8 * i, np.uint8)),
            S.depth_key("front"): S.encode_depth(np.full((6, 8), 0.001 * (episode + i), np.float32)),
            **S.pack_pointcloud(rng.normal(size=(4 + i, 3))),
        }
        for i in range(num_frames)
    ])


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot") / "ds"
    episodes = [_episode(e, n) for e, n in enumerate(LENGTHS)]
    # tiny file limits force several data files and chunks (chunks_size=2 files per chunk)
    writer = LeRobotWriter(root, fps=10, robot_type="fake", chunks_size=2, data_files_size_in_mb=1e-4)
    for episode in episodes:
        writer.add_episode(episode)
    writer.finalize()
    return root, episodes


def test_info_and_metadata_follow_the_v3_layout(written):
    root, _ = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == len(LENGTHS) and info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 2
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["features"]["observation.images.front"]["dtype"] == "video"
    assert info["features"]["observation.images.front"]["shape"] == [18, 23, 3]
    assert info["features"]["observation.state"] == {"dtype": "float32", "shape": [3], "names": None}
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in info["features"]
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == LENGTHS
    assert [e["dataset_from_index"] for e in episodes] == list(np.cumsum([0] + LENGTHS[:-1]))
    assert [e["dataset_to_index"] for e in episodes] == list(np.cumsum(LENGTHS))
    assert {(e["data/chunk_index"], e["data/file_index"]) for e in episodes} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert (root / "data/chunk-001/file-001.parquet").exists()
    starts = [e["videos/observation.images.front/from_timestamp"] for e in episodes]
    np.testing.assert_array_equal(starts, np.cumsum([0] + LENGTHS[:-1]) / 10)  # frames / fps: one float64 division
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pandas()
    assert tasks.index.name == "task" and tasks.loc["task 1", "task_index"] == 1
    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats["action"]["count"] == [sum(LENGTHS)]
    all_actions = np.concatenate([np.stack(e.column(S.ACTION).to_numpy(zero_copy_only=False)) for e in written[1]])
    actions = all_actions.astype(np.float64)
    # Per-episode float64 stats merged by count: sums of (frames + episodes) terms in float64. The std
    # comes from E[x^2] - mean^2, which cancels at the scale of x^2, then a square root.
    num_terms = len(actions) + len(LENGTHS)
    assert_within(stats["action"]["mean"], actions.mean(axis=0), reduction_tolerance(num_terms, max_magnitude(actions), np.float64))
    variance_tolerance = reduction_tolerance(num_terms, max_magnitude(actions) ** 2, np.float64)
    assert_within(stats["action"]["std"], actions.std(axis=0), sqrt_tolerance(actions.var(axis=0), variance_tolerance))


def test_episode_slicing_by_index_returns_exactly_that_episode(written):
    """LeRobot's rule: the rows of episode e are data rows with dataset_from_index <= index < dataset_to_index."""
    root, episodes = written
    data = pq.ParquetDataset(sorted(str(p) for p in root.glob("data/*/*.parquet"))).read()
    meta = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    index = data.column("index").to_numpy()
    assert np.array_equal(np.sort(index), np.arange(sum(LENGTHS)))
    for row in meta:
        mask = (index >= row["dataset_from_index"]) & (index < row["dataset_to_index"])
        assert set(data.column("episode_index").to_numpy()[mask]) == {row["episode_index"]}
        assert mask.sum() == row["length"]
    dataset = LeRobotDataset(root)
    for e, original in enumerate(episodes):
        table = dataset.episode_table(e)
        assert table.column(S.FRAME_INDEX).to_pylist() == list(range(LENGTHS[e]))
        assert table.column(S.ACTION).to_pylist() == original.column(S.ACTION).to_pylist()
        assert table.column(S.TASK).to_pylist() == original.column(S.TASK).to_pylist()
        frames = dataset.video_frames("observation.images.front", e)
        expected = np.stack([S.decode_image(b) for b in original.column(S.image_key("front")).to_pylist()])
        assert frames.shape == expected.shape
        assert np.abs(frames.astype(int) - expected).max() <= 6  # lossy video, per-frame colour kept
        depth = S.decode_depth(table.column(S.depth_key("front"))[1].as_py())
        np.testing.assert_allclose(depth, (e + 1) / 1000, rtol=unit_roundoff(np.float32))  # mm / 1000, rounded once
        assert table.column(S.POINTCLOUD).to_pylist() == original.column(S.POINTCLOUD).to_pylist()


def test_writer_rejects_bad_config_and_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        LeRobotWriter(tmp_path / "a", fps=0)
    writer = LeRobotWriter(tmp_path / "b", fps=10)
    writer.add_episode(_episode(0, 2))
    bad = _episode(1, 2)
    bad = bad.set_column(bad.column_names.index(S.STATE), S.STATE, bad.column(S.ACTION))
    with pytest.raises(ValueError, match="observation.state"):
        writer.add_episode(bad)


def test_read_lerobot_streams_every_frame_through_ray_data(written, ray_local, tmp_path):
    root, episodes = written
    dataset = read_lerobot(root)
    copy = LeRobotDataset(write_lerobot(dataset, tmp_path / "copy", fps=10))
    # Every episode arrives whole; the streaming sink commits them in arrival order (episode lengths are
    # distinct, so a length names its episode).
    copied_lengths = copy.episodes.column("length").to_pylist()
    assert sorted(copied_lengths) == sorted(LENGTHS), copied_lengths
    same = copied_lengths.index(LENGTHS[2])
    assert copy.episode_table(same).column(S.ACTION).to_pylist() == episodes[2].column(S.ACTION).to_pylist()
    rows = dataset.select_columns([S.EPISODE_SOURCE, S.FRAME_INDEX, S.ACTION]).take_all()
    assert len(rows) == sum(LENGTHS)
    per_episode = {}
    for row in rows:
        per_episode.setdefault(row[S.EPISODE_SOURCE], []).append(row[S.FRAME_INDEX])
    assert sorted(len(v) for v in per_episode.values()) == sorted(LENGTHS)
