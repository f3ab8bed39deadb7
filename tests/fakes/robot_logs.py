"""Fake robot logs written by the real libraries: MCAP (mcap-ros2), ROS 1/2 bags (rosbags), HDF5.

Each episode is synthetic but deterministic (`expected_episode` gives what a reader must return):
7 joint positions whose last one is the gripper (open, closed, open), a custom action topic
(std_msgs/Float64MultiArray), an RGB camera, a 16-bit depth camera and an x,y,z,intensity cloud.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

STATE_DIM = 7
ACTION_DIM = 4
IMAGE_HW = (24, 32)
NUM_POINTS = 64
FPS = 10
TOPICS = {"state": "/joint_states", "action": "/cmd", "image": "/camera/front/image_raw",
          "compressed": "/camera/wrist/image_raw/compressed", "depth": "/camera/front/depth",
          "pointcloud": "/lidar/points"}


def frame_values(episode_seed: int, index: int, num_frames: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(episode_seed * 10_000 + index)
    state = np.sin(np.arange(STATE_DIM) + 0.1 * index + episode_seed).astype(np.float64)
    closed = 0.4 * num_frames <= index < 0.8 * num_frames
    state[-1] = 0.0 if closed else 0.04
    action = np.cos(np.arange(ACTION_DIM) + 0.1 * index).astype(np.float64)
    image = np.zeros((*IMAGE_HW, 3), np.uint8)
    image[..., 0] = (index * 10 + episode_seed) % 256
    image[..., 1] = np.arange(IMAGE_HW[1], dtype=np.uint8)[None, :] * 4
    depth = np.full(IMAGE_HW, 500 + index, np.uint16)
    points = rng.normal(size=(NUM_POINTS, 4)).astype(np.float32)
    return {"state": state, "action": action, "image": image, "depth": depth, "points": points}


def _stamp(time_ns: int) -> dict:
    return {"sec": time_ns // 1_000_000_000, "nanosec": time_ns % 1_000_000_000}


def _messages(episode_seed: int, num_frames: int):
    """(topic, msgtype, time_ns, message dict) in time order."""
    from runtime.robot.schema import encode_image

    for index in range(num_frames):
        values = frame_values(episode_seed, index, num_frames)
        t = 1_000_000_000 + index * (1_000_000_000 // FPS)
        header = {"stamp": _stamp(t), "frame_id": "base"}
        height, width = IMAGE_HW
        yield TOPICS["action"], "std_msgs/msg/Float64MultiArray", t, {
            "layout": {"dim": [], "data_offset": 0}, "data": values["action"].tolist()}
        yield TOPICS["image"], "sensor_msgs/msg/Image", t, {
            "header": header, "height": height, "width": width, "encoding": "rgb8", "is_bigendian": 0,
            "step": width * 3, "data": values["image"].tobytes()}
        yield TOPICS["compressed"], "sensor_msgs/msg/CompressedImage", t, {
            "header": header, "format": "png", "data": encode_image(values["image"][::-1])}
        yield TOPICS["depth"], "sensor_msgs/msg/Image", t, {
            "header": header, "height": height, "width": width, "encoding": "16UC1", "is_bigendian": 0,
            "step": width * 2, "data": values["depth"].astype("<u2").tobytes()}
        yield TOPICS["pointcloud"], "sensor_msgs/msg/PointCloud2", t, {
            "header": header, "height": 1, "width": NUM_POINTS,
            "fields": [{"name": n, "offset": 4 * k, "datatype": 7, "count": 1} for k, n in
                       enumerate(["x", "y", "z", "intensity"])],
            "is_bigendian": False, "point_step": 16, "row_step": 16 * NUM_POINTS,
            "data": values["points"].tobytes(), "is_dense": True}
        # state last: it is the clock, so each frame sees this instant's camera and cloud
        yield TOPICS["state"], "sensor_msgs/msg/JointState", t + 1, {
            "header": header, "name": [f"joint{j}" for j in range(STATE_DIM)],
            "position": values["state"].tolist(), "velocity": [], "effort": []}


def mapping_dict(task: str = "pick the cube") -> dict:
    """The TopicMapping (as a dict) matching these logs, custom action topic included."""
    return {"state": TOPICS["state"], "action": TOPICS["action"], "fields": {TOPICS["action"]: "data"},
            "images": {"front": TOPICS["image"], "wrist": TOPICS["compressed"]},
            "depth": {"front": TOPICS["depth"]}, "pointcloud": TOPICS["pointcloud"], "task": task}


def write_mcap(path: str | Path, episode_seed: int = 0, num_frames: int = 12) -> Path:
    from mcap_ros2.writer import Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_HUMBLE)
    path = Path(path)
    schemas = {}
    with open(path, "wb") as stream:
        writer = Writer(stream)
        for topic, msgtype, time_ns, message in _messages(episode_seed, num_frames):
            if msgtype not in schemas:
                schemas[msgtype] = writer.register_msgdef(msgtype, typestore.generate_msgdef(msgtype, ros_version=2)[0])
            writer.write_message(topic, schemas[msgtype], message, log_time=time_ns, publish_time=time_ns)
        writer.finish()
    return path


def _typed(typestore, msgtype: str, value):
    """A message dict -> the typestore's dataclass (recursively)."""
    cls = typestore.types[msgtype]
    kwargs = {}
    for name, (kind, detail) in typestore.fielddefs[msgtype][1]:
        raw = value.get(name, 0)  # ROS 1 headers have a `seq` the dicts leave out
        if kind == 2:  # NAME: nested message
            kwargs[name] = _typed(typestore, detail, raw)
        elif kind == 4:  # SEQUENCE
            inner_kind, inner = detail[0]
            if inner_kind == 1 and inner[0] != "string":
                kwargs[name] = np.frombuffer(raw, np.uint8).copy() if isinstance(raw, bytes) else np.asarray(
                    raw, dtype={"float64": np.float64, "uint8": np.uint8}.get(inner[0], np.float64))
            elif inner_kind == 2:
                kwargs[name] = [_typed(typestore, inner, item) for item in raw]
            else:
                kwargs[name] = list(raw)
        else:
            kwargs[name] = raw
    return cls(**kwargs)


def write_rosbag(path: str | Path, ros_version: int = 2, episode_seed: int = 0, num_frames: int = 12) -> Path:
    """A ROS 1 `.bag` file (ros_version=1) or a ROS 2 bag directory (sqlite3 storage)."""
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if ros_version == 1:
        from rosbags.rosbag1 import Writer

        typestore = get_typestore(Stores.ROS1_NOETIC)
        writer, serialize = Writer(path), typestore.serialize_ros1
    else:
        from rosbags.rosbag2 import Writer

        typestore = get_typestore(Stores.ROS2_HUMBLE)
        writer, serialize = Writer(path, version=9), typestore.serialize_cdr
    connections = {}
    with writer:
        for topic, msgtype, time_ns, message in _messages(episode_seed, num_frames):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            writer.write(connections[topic], time_ns, serialize(_typed(typestore, msgtype, message), msgtype))
    return path


def write_robomimic(path: str | Path, num_demos: int = 3, num_frames: int = 12, first_seed: int = 0) -> Path:
    """robomimic layout: data/demo_N/{obs/<key>, actions, rewards, dones}, success on the last frame."""
    path = Path(path)
    with h5py.File(path, "w") as handle:
        data = handle.create_group("data")
        data.attrs["env_args"] = '{"env_name": "Lift", "type": 1, "env_kwargs": {}}'
        total = 0
        for demo in range(num_demos):
            values = [frame_values(first_seed + demo, i, num_frames) for i in range(num_frames)]
            group = data.create_group(f"demo_{demo}")
            group.attrs["num_samples"] = num_frames
            obs = group.create_group("obs")
            obs["robot0_joint_pos"] = np.stack([v["state"][:-1] for v in values])
            obs["robot0_gripper_qpos"] = np.stack([v["state"][-1:] for v in values])
            obs["agentview_image"] = np.stack([v["image"] for v in values])
            obs["agentview_depth"] = np.stack([v["depth"][..., None] / 1000.0 for v in values]).astype(np.float32)
            group["actions"] = np.stack([v["action"] for v in values])
            rewards = np.zeros(num_frames)
            rewards[-1] = 1.0
            group["rewards"] = rewards
            group["dones"] = (np.arange(num_frames) == num_frames - 1).astype(np.int64)
            total += num_frames
        data.attrs["total"] = total
    return path


def truncate(path: str | Path, keep_fraction: float = 0.5) -> Path:
    """Cut a file short, as a crashed recorder leaves it."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path
