import h5py
import numpy as np
import pytest
from fakes import robot_logs as F
from helpers.tolerances import dtype_steps_rtol, unit_roundoff

from runtime.robot import schema as S
from runtime.robot.formats import hdf5


def test_robomimic_demos_become_episodes(tmp_path):
    path = F.write_robomimic(tmp_path / "demos.hdf5", num_demos=3, num_frames=5)
    mapping = hdf5.HDF5Mapping(state_keys=["robot0_joint_pos", "robot0_gripper_qpos"], fps=10)
    episodes = list(hdf5.read_episodes(str(path), frozenset({f"{path}#demo_1"}), mapping=mapping))
    assert [e.column(S.EPISODE_SOURCE)[0].as_py() for e in episodes] == [f"{path}#demo_0", f"{path}#demo_2"]
    episode = episodes[1]
    assert episode.column(S.TASK)[0].as_py() == "Lift"  # from data.attrs["env_args"]
    np.testing.assert_array_equal(episode.column(S.TIMESTAMP).to_numpy(), np.arange(5) / 10)  # same float64 division
    for i in range(5):
        values = F.frame_values(2, i, 5)
        # float64 sources stored as list<float32>: one rounding, half a float32 step
        np.testing.assert_allclose(episode.column(S.STATE)[i].as_py(), values["state"], rtol=unit_roundoff(np.float32))
        np.testing.assert_allclose(episode.column(S.ACTION)[i].as_py(), values["action"], rtol=unit_roundoff(np.float32))
        assert np.array_equal(S.decode_image(episode.column(S.image_key("agentview"))[i].as_py()), values["image"])
        # integer millimetres -> float32 metres (mm / 1000) -> * 1000 here: two roundings, one float32 step
        np.testing.assert_allclose(S.decode_depth(episode.column(S.depth_key("agentview"))[i].as_py()) * 1000,
                                   values["depth"], rtol=dtype_steps_rtol(np.float32, 1))
    assert episode.column(S.SUCCESS).to_pylist() == [False] * 4 + [True]
    assert episode.column(S.DONE).to_pylist() == [False] * 4 + [True]


def test_file_without_data_group_is_rejected(tmp_path):
    path = tmp_path / "other.hdf5"
    with h5py.File(path, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="'data' group"):
        list(hdf5.read_episodes(str(path)))
    with pytest.raises(ValueError, match="fps"):
        hdf5.HDF5Mapping(fps=0)
