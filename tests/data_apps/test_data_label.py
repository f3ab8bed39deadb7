import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_apps import label
from runtime.robot import schema as S
from runtime.robot.formats.lerobot import LeRobotDataset, LeRobotWriter


def _pick_episode(reward_at_end):
    ee_x = [0.0, 0.1, 0.2, 0.2, 0.3, 0.4, 0.4, 0.5]
    gripper = [0.04, 0.04, 0.04, 0.0, 0.0, 0.0, 0.04, 0.04]
    return S.frames_to_table([
        {S.EPISODE_INDEX: 0, S.FRAME_INDEX: i, S.TIMESTAMP: i / 10, S.TASK: "place the cube in the bin",
         S.STATE: np.array([x, 0, 0, g], np.float32), S.ACTION: np.zeros(2, np.float32),
         S.REWARD: reward_at_end if i == 7 else 0.0,
         S.image_key("front"): S.encode_image(np.full((8, 8, 3), i * 20, np.uint8))}
        for i, (x, g) in enumerate(zip(ee_x, gripper))
    ])


@pytest.mark.slow
def test_label_app_writes_labeled_lerobot_and_round_trips_human_labels(tmp_path, ray_local, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    writer = LeRobotWriter(src, fps=10)
    for reward in (1.0, 0.0, 1.0):
        writer.add_episode(_pick_episode(reward))
    writer.finalize()
    source_of_episode_1 = f"{src.resolve()}#000001"
    (tmp_path / "human.jsonl").write_text(json.dumps(
        {"episode_source": source_of_episode_1, "frame_index": None, "name": "quality", "value": "bad",
         "source": "human:bob", "version": "1", "scope": "episode"}) + "\n")
    exported = tmp_path / "labels.jsonl"
    assert label.main(["--src", str(src), "--dst", str(dst), "--success-rule", "reward", "--gripper-index", "3",
                       "--instructions", "template", "--human-labels", str(tmp_path / "human.jsonl"),
                       "--export-labels", str(exported)]) == 0
    assert "3 in dataset" in capsys.readouterr().out
    dataset = LeRobotDataset(dst)
    successes = []
    for index in range(3):
        episode = dataset.episode_table(index, decode_videos=False)
        labels = [S.labels_from_json(text) for text in episode.column(S.LABELS).to_pylist()]
        by_name = {lab.name: lab for lab in labels[0]}
        successes.append(by_name["success"].value)
        assert by_name["instruction"].source == "template"
        assert [next(lab.value for lab in row if lab.name == "phase") for row in labels][:4] == [
            "approach", "approach", "approach", "grasp"]
        has_human = any(lab.source == "human:bob" for lab in labels[0])
        assert has_human == (episode.column(S.EPISODE_SOURCE)[0].as_py() == source_of_episode_1)
    assert successes == [True, False, True]
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    assert {r["name"] for r in records} == {"success", "phase", "phase_segments", "instruction", "quality"}
    assert all(r["source"] and r["version"] for r in records)
    assert "labels" in pq.read_schema(next(dst.glob("data/*/*.parquet"))).names
