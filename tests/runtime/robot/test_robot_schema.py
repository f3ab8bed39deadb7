import numpy as np
import pyarrow as pa
import pytest

from runtime.robot import schema as S


def _frames(num_frames=3, camera="front"):
    return [
        {
            S.EPISODE_INDEX: 0, S.FRAME_INDEX: i, S.TIMESTAMP: i / 10, S.TASK: "pick",
            S.STATE: np.arange(4, dtype=np.float32) + i, S.ACTION: np.ones(2, np.float32),
            S.DONE: i == num_frames - 1, S.image_key(camera): S.encode_image(np.full((4, 6, 3), i, np.uint8)),
            **S.pack_pointcloud(np.full((i + 1, 4), i, np.float32), "x,y,z,intensity"),
        }
        for i in range(num_frames)
    ]


def test_frames_to_table_builds_the_schema_with_cameras_and_variable_clouds():
    table = S.frames_to_table(_frames())
    assert table.schema.field(S.STATE).type == pa.list_(pa.float32())
    assert S.cameras_of(table.schema) == ["front"]
    assert table.column(S.POINTCLOUD_NUM_POINTS).to_pylist() == [1, 2, 3]
    cloud = S.unpack_pointcloud(table.column(S.POINTCLOUD)[2].as_py(), table.column(S.POINTCLOUD_FIELDS)[2].as_py())
    assert cloud.shape == (3, 4) and np.all(cloud == 2)
    assert table.column(S.LABELS).null_count == 3  # absent columns are nulls


def test_image_and_depth_encodings_round_trip():
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(S.decode_image(S.encode_image(rgb)), rgb)
    depth_m = np.array([[0.5, 1.25], [np.nan, 3.0]], np.float32)
    decoded = S.decode_depth(S.encode_depth(depth_m))
    np.testing.assert_array_equal(decoded, [[0.5, 1.25], [0.0, 3.0]])  # mm / 1000 is exact for these


def test_conform_adds_missing_columns_and_rejects_missing_required():
    table = pa.table({S.EPISODE_INDEX: [0], S.FRAME_INDEX: [0], S.TIMESTAMP: [0.0]})
    conformed = S.conform(table)
    assert conformed.schema.names == S.episode_schema(pointcloud=False).names
    assert S.conform(table, S.EPISODE_SCHEMA).column(S.POINTCLOUD).null_count == 1
    with pytest.raises(ValueError, match="frame_index"):
        S.conform(pa.table({S.EPISODE_INDEX: [0]}))


def test_labels_merge_by_name_and_source_and_validate():
    table = S.frames_to_table(_frames(2))
    first = S.Label(name="success", value=False, source="rule", version="1", scope="episode")
    table = S.with_labels(table, [[first], [first]])
    newer = S.Label(name="success", value=True, source="rule", version="2", scope="episode")
    human = S.Label(name="success", value=False, source="human:ann", version="1", scope="episode")
    table = S.with_labels(table, [[newer, human], []])
    labels = S.labels_from_json(table.column(S.LABELS)[0].as_py())
    assert [(label.source, label.value, label.version) for label in labels] == [("rule", True, "2"),
                                                                                  ("human:ann", False, "1")]
    with pytest.raises(ValueError, match="label.scope"):
        S.Label(name="x", value=1, source="s", version="1", scope="dataset")


def test_episode_tables_splits_and_orders_frames():
    a = S.frames_to_table(_frames(3))
    b = S.frames_to_table(_frames(2))
    a = a.set_column(a.column_names.index(S.EPISODE_SOURCE), S.EPISODE_SOURCE, pa.array(["a"] * 3))
    b = b.set_column(b.column_names.index(S.EPISODE_SOURCE), S.EPISODE_SOURCE, pa.array(["b"] * 2))
    mixed = pa.concat_tables([a.slice(2), b, a.slice(0, 2)])
    episodes = S.episode_tables(mixed)
    assert [e.column(S.FRAME_INDEX).to_pylist() for e in episodes] == [[0, 1, 2], [0, 1]]
