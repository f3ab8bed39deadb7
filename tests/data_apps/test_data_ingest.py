import json

import pytest
from fakes import robot_logs as F

from data_apps import ingest
from runtime.robot import schema as S
from runtime.robot.formats.lerobot import LeRobotDataset


@pytest.mark.slow
def test_ingest_mixed_logs_labels_and_quarantines(tmp_path, ray_local, capsys):
    src = tmp_path / "logs"
    (src / "bags").mkdir(parents=True)
    F.write_mcap(src / "a.mcap", 0, 6)
    F.write_rosbag(src / "bags" / "b.bag", 1, episode_seed=1, num_frames=5)
    F.write_rosbag(src / "bags" / "c", 2, episode_seed=2, num_frames=4)
    F.truncate(F.write_rosbag(src / "bags" / "bad.bag", 1, episode_seed=3, num_frames=5), 0.4)
    (tmp_path / "map.json").write_text(json.dumps(F.mapping_dict(task="pick the cube")))
    dst = tmp_path / "out"
    assert ingest.main(["--src", str(src), "--dst", str(dst), "--topic-map", str(tmp_path / "map.json")]) == 0
    assert "bad.bag" in capsys.readouterr().out
    dataset = LeRobotDataset(dst)
    assert sorted(dataset.episodes.column("length").to_pylist()) == [4, 5, 6]
    episode = dataset.episode_table(0, decode_videos=False)
    names = {label.name for label in S.labels_from_json(episode.column(S.LABELS)[0].as_py())}
    assert {"phase", "phase_segments", "instruction"} <= names
