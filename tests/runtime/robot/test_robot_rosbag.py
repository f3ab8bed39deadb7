import re

import numpy as np
import pytest
from fakes import robot_logs as F
from helpers.tolerances import unit_roundoff
from numpy.testing import assert_allclose

from runtime.robot import schema as S
from runtime.robot.formats import rosbag
from runtime.robot.formats.errors import CorruptRecordingError
from runtime.robot.formats.ros_messages import TopicMapping

FLOAT32_STORE = unit_roundoff(np.float32)  # float64 sources stored once as float32


@pytest.mark.parametrize("ros_version", [1, 2])
def test_rosbag_episode_matches_what_was_recorded(tmp_path, ros_version):
    path = F.write_rosbag(tmp_path / ("ep.bag" if ros_version == 1 else "ep"), ros_version, episode_seed=2,
                          num_frames=6)
    (table,) = rosbag.read_episodes(str(path), mapping=TopicMapping.from_dict(F.mapping_dict()))
    assert table.num_rows == 6
    assert table.column(S.FRAME_INDEX).to_pylist() == list(range(6))
    for i in range(6):
        values = F.frame_values(2, i, 6)
        assert_allclose(table.column(S.STATE)[i].as_py(), values["state"], rtol=FLOAT32_STORE, atol=0)
        assert_allclose(table.column(S.ACTION)[i].as_py(), values["action"], rtol=FLOAT32_STORE, atol=0)
        assert np.array_equal(S.decode_image(table.column(S.image_key("front"))[i].as_py()), values["image"])
        cloud = S.unpack_pointcloud(table.column(S.POINTCLOUD)[i].as_py(), "x,y,z,intensity")
        assert np.array_equal(cloud, values["points"])  # float32 in, float32 out
    assert rosbag.topic_types(path)["/joint_states"].endswith("JointState")


def test_truncated_ros1_bag_raises(tmp_path):
    path = F.truncate(F.write_rosbag(tmp_path / "ep.bag", 1, num_frames=8), 0.5)
    with pytest.raises(CorruptRecordingError, match=rf"^{re.escape(str(path))}: ROS bag file is truncated or corrupt \("):
        list(rosbag.read_episodes(str(path), mapping=TopicMapping.from_dict(F.mapping_dict())))


def test_truncated_ros2_bag_raises(tmp_path):
    path = F.write_rosbag(tmp_path / "ep", 2, num_frames=8)
    F.truncate(path / "ep.db3", 0.5)
    with pytest.raises(CorruptRecordingError, match=rf"^{re.escape(str(path))}: ROS bag file is truncated or corrupt \("):
        list(rosbag.read_episodes(str(path), mapping=TopicMapping.from_dict(F.mapping_dict())))
