import re

import numpy as np
import pytest
from fakes import robot_logs as F
from helpers.tolerances import assert_within, dtype_steps_rtol, rounding_tolerance, unit_roundoff
from numpy.testing import assert_allclose

from runtime.robot import schema as S
from runtime.robot.formats import mcap
from runtime.robot.formats.errors import CorruptRecordingError
from runtime.robot.formats.ros_messages import TopicMapping, pointcloud_array

FLOAT32_STORE = unit_roundoff(np.float32)  # float64 sources stored once as float32


def _check_episode(table, seed, num_frames, source):
    assert table.num_rows == num_frames
    assert table.column(S.FRAME_INDEX).to_pylist() == list(range(num_frames))
    assert set(table.column(S.EPISODE_SOURCE).to_pylist()) == {source}
    assert table.column(S.DONE).to_pylist()[-1] is True
    timestamps = table.column(S.TIMESTAMP).to_numpy()  # integer ns over 1e9: two float64 roundings apart
    assert_within(np.diff(timestamps), 1 / F.FPS, rounding_tolerance(np.float64, timestamps.max(), 2))
    for i in (0, num_frames // 2, num_frames - 1):
        values = F.frame_values(seed, i, num_frames)
        assert_allclose(table.column(S.STATE)[i].as_py(), values["state"], rtol=FLOAT32_STORE, atol=0)
        assert_allclose(table.column(S.ACTION)[i].as_py(), values["action"], rtol=FLOAT32_STORE, atol=0)
        assert np.array_equal(S.decode_image(table.column(S.image_key("front"))[i].as_py()), values["image"])
        assert np.array_equal(S.decode_image(table.column(S.image_key("wrist"))[i].as_py()), values["image"][::-1])
        depth_mm = S.decode_depth(table.column(S.depth_key("front"))[i].as_py()) * 1000  # stored in metres
        assert_allclose(depth_mm, values["depth"], rtol=dtype_steps_rtol(np.float32, 1), atol=0)
        fields = table.column(S.POINTCLOUD_FIELDS)[i].as_py()
        assert fields == "x,y,z,intensity"
        assert np.array_equal(S.unpack_pointcloud(table.column(S.POINTCLOUD)[i].as_py(), fields), values["points"])


def test_mcap_episode_with_custom_topic_mapping(tmp_path):
    path = F.write_mcap(tmp_path / "ep.mcap", episode_seed=3, num_frames=9)
    mapping = TopicMapping.from_dict(F.mapping_dict(task="stack"))
    (table,) = mcap.read_episodes(str(path), mapping=mapping)
    _check_episode(table, 3, 9, str(path))
    assert set(table.column(S.TASK).to_pylist()) == {"stack"}
    assert list(mcap.read_episodes(str(path), frozenset({str(path)}), mapping=mapping)) == []


def test_mcap_topics_are_detected_from_message_types(tmp_path):
    path = F.write_mcap(tmp_path / "ep.mcap", num_frames=4)
    (table,) = mcap.read_episodes(str(path))
    assert S.cameras_of(table.schema) == ["camera_front_image_raw", "camera_wrist_image_raw_compressed"]
    assert S.depth_cameras_of(table.schema) == ["camera_front_depth"]
    assert table.column(S.ACTION).null_count == 4  # the custom action topic needs a mapping


def test_truncated_mcap_raises_instead_of_returning_a_short_episode(tmp_path):
    path = F.truncate(F.write_mcap(tmp_path / "ep.mcap", num_frames=12), 0.6)
    with pytest.raises(CorruptRecordingError, match=rf"^{re.escape(str(path))}: MCAP file is truncated or corrupt \("):
        list(mcap.read_episodes(str(path), mapping=TopicMapping.from_dict(F.mapping_dict())))


def test_topic_mapping_rejects_unknown_keys_and_missing_clock():
    with pytest.raises(ValueError, match="unknown keys"):
        TopicMapping.from_dict({"state": "/js", "camera": "/x"})
    with pytest.raises(ValueError, match="clock"):
        TopicMapping(images={"a": "/a"})


class _Field:
    def __init__(self, name, offset, datatype):
        self.name, self.offset, self.datatype, self.count = name, offset, datatype, 1


class _Cloud:
    """A PointCloud2 with packed rgb and padding, the layout RealSense drivers publish."""

    def __init__(self, xyz, rgb):
        self.fields = [_Field("x", 0, 7), _Field("y", 4, 7), _Field("z", 8, 7), _Field("rgb", 16, 7)]
        self.point_step, self.height, self.width, self.is_bigendian = 32, 1, len(xyz), False
        record = np.zeros(len(xyz), dtype=np.dtype({"names": ["xyz", "rgb"], "formats": [("<f4", 3), "<u4"],
                                                    "offsets": [0, 16], "itemsize": 32}))
        record["xyz"] = xyz
        record["rgb"] = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
        self.data = record.tobytes()


def test_pointcloud2_rgb_and_nan_points():
    xyz = np.array([[1, 2, 3], [np.nan, 0, 0], [4, 5, 6]], np.float32)
    rgb = np.array([[255, 0, 10], [1, 2, 3], [0, 128, 255]], np.uint8)
    points, fields = pointcloud_array(_Cloud(xyz, rgb))
    assert fields == "x,y,z,r,g,b"
    assert np.array_equal(points[:, :3], xyz[[0, 2]])
    assert_allclose(points[:, 3:] * 255, rgb[[0, 2]], rtol=dtype_steps_rtol(np.float32, 1), atol=0)  # rgb / 255 in float32
