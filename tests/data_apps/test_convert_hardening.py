"""Issue #15 items 11 and 12 through the real pipelines on Ray: episodes that do not fit the dataset
and bad depth frames are quarantined with their reasons while the rest is converted; a crafted LeRobot
input cannot make the converter read or write outside --src / --dst."""

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from fakes import robot_logs as F

from data_apps import convert, pointcloud
from runtime.robot import schema as S
from runtime.robot.formats.lerobot import LeRobotDataset
from runtime.robot.pointcloud.pipeline import SyntheticDepth


def _quarantined(dst):
    return {Path(e["source"].split("#")[0]).name: e["reason"]
            for e in map(json.loads, open(dst / "quarantine/quarantine.jsonl"))}


def test_convert_quarantines_episodes_that_do_not_fit_and_a_rerun_is_idempotent(tmp_path, ray_local, capsys):
    src, dst = tmp_path / "logs", tmp_path / "out"
    src.mkdir()
    F.write_robomimic(src / "a_good.hdf5", num_demos=2, num_frames=5)
    with h5py.File(F.write_robomimic(src / "b_extra_joints.hdf5", num_demos=1, num_frames=5), "r+") as handle:
        obs = handle["data/demo_0/obs"]
        joints = obs["robot0_joint_pos"][()]
        del obs["robot0_joint_pos"]
        obs["robot0_joint_pos"] = np.concatenate([joints, joints[:, :2]], axis=1)  # two more joints
    with h5py.File(F.write_robomimic(src / "c_camera.hdf5", num_demos=1, num_frames=5), "r+") as handle:
        obs = handle["data/demo_0/obs"]
        del obs["agentview_image"]
        obs["agentview_image"] = np.zeros((5, 48, 64, 3), np.uint8)  # another camera resolution
    args = ["--src", str(src), "--src-format", "hdf5", "--dst", str(dst), "--fps", "10", "--task", "lift"]
    assert convert.main(args) == 0
    assert "quarantined       2" in capsys.readouterr().out
    reasons = _quarantined(dst)
    assert sorted(reasons) == ["b_extra_joints.hdf5", "c_camera.hdf5"]
    state_dim = F.STATE_DIM
    assert f"'observation.state': expected float32 [{state_dim}], found float32 [{state_dim + 2}]" in \
        reasons["b_extra_joints.hdf5"]
    height, width = F.IMAGE_HW
    assert f"'observation.images.agentview': expected image [{height}, {width}, 3], found image [48, 64, 3]" in \
        reasons["c_camera.hdf5"]
    dataset = LeRobotDataset(dst)
    assert dataset.num_episodes == 2 and dataset.num_frames == 10

    info_before = (dst / "meta/info.json").read_text()
    assert convert.main(args) == 0  # the rerun: the same dataset, the same two reasons
    assert "quarantined       2" in capsys.readouterr().out
    assert _quarantined(dst) == reasons and (dst / "meta/info.json").read_text() == info_before
    summary = json.loads((dst / ".strata/summary.json").read_text())
    assert (summary["episodes_this_run"], summary["episodes_total"]) == (0, 2)


def _lerobot_input(root, tmp_path):
    path = F.write_robomimic(tmp_path / "demos.hdf5", num_demos=3, num_frames=5)
    convert.main(["--src", str(path), "--src-format", "hdf5", "--dst", str(root), "--fps", "10", "--task", "lift"])
    return root


def test_convert_lerobot_quarantines_an_episode_with_a_frame_index_gap(tmp_path, ray_local):
    src = _lerobot_input(tmp_path / "in", tmp_path)
    (data_file,) = src.glob("data/*/*.parquet")
    data = pq.read_table(data_file)
    in_episode_1 = pc.equal(data.column("episode_index"), 1).to_numpy(zero_copy_only=False)
    frame_index = data.column("frame_index").to_numpy().copy()
    frame_index[in_episode_1 & (frame_index >= 2)] += 1  # episode 1 has frames 0, 1, 3, 4, 5
    pq.write_table(data.set_column(data.column_names.index("frame_index"), "frame_index",
                                   pc.cast(frame_index, data.schema.field("frame_index").type)), data_file)
    dst = tmp_path / "out"
    assert convert.main(["--src", str(src), "--src-format", "lerobot", "--dst", str(dst)]) == 0
    (entry,) = map(json.loads, open(dst / "quarantine/quarantine.jsonl"))
    assert entry["source"].endswith("#000001") and "frame_index jumps from 1 to 3" in entry["reason"], entry
    assert "not_copied" in entry  # one episode: the input dataset stays where it is
    assert LeRobotDataset(dst).num_episodes == 2


@pytest.mark.parametrize("crafted", ["feature_key", "data_path"])
def test_convert_refuses_a_crafted_lerobot_input(tmp_path, ray_local, crafted):
    src = _lerobot_input(tmp_path / "deep" / "in", tmp_path)
    info = json.loads((src / "meta/info.json").read_text())
    if crafted == "feature_key":
        bad = "observation.images.cam/../../../../X"
        info["features"][bad] = info["features"].pop("observation.images.agentview")
        expected = r"'observation\.images\.cam/\.\./\.\./\.\./\.\./X'"
    else:
        info["data_path"] = "../../" + info["data_path"]
        expected = r"data_path '\.\./\.\./data/.*' points outside"
    (src / "meta/info.json").write_text(json.dumps(info))
    dst = tmp_path / "deep" / "out"
    with pytest.raises(ValueError, match=expected):
        convert.main(["--src", str(src), "--src-format", "lerobot", "--dst", str(dst)])
    assert not (tmp_path / "X").exists() and not (tmp_path / "deep" / "X").exists()
    assert not (dst / "meta").exists()


def test_pointcloud_quarantines_bad_depth_frames_and_processes_the_rest(tmp_path, ray_local):
    src = tmp_path / "depth"
    src.mkdir()
    render = SyntheticDepth(height=32, width=40)
    for frame in range(4):
        (src / f"{frame:04d}.png").write_bytes(S.encode_depth(render.render(frame)))
    (src / "0004.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    (src / "0005.png").write_bytes(S.encode_depth(SyntheticDepth(height=16, width=40).render(5)))
    out = tmp_path / "clouds"
    args = pointcloud.parse_args(
        ["--src", str(src), "--height", "32", "--width", "40", "--num-samples", "16", "--output", str(out)]
    )
    summary = pointcloud.run(args)
    assert summary.frames == 4 and summary.points_out == 4 * 16
    reasons = {Path(e["source"]).name: e["reason"] for e in summary.quarantined}
    assert sorted(reasons) == ["0004.png", "0005.png"]
    assert reasons["0004.png"].startswith("not a readable depth frame")
    assert "shape [16, 40], expected [32, 40]" in reasons["0005.png"]
    assert all(Path(e["copied_to"]).read_bytes() == (src / Path(e["source"]).name).read_bytes()
               for e in summary.quarantined)
    assert json.loads((out / "summary.json").read_text())["quarantined"] == summary.quarantined
