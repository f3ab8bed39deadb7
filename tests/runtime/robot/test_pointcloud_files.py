"""Point-cloud files: round trips through every format, truncation errors, and the Ray Data source/sink."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from helpers.tolerances import max_magnitude, ulp

from runtime.robot import schema
from runtime.robot.formats.pointcloud_files import (
    PointCloudFileError,
    iter_pointcloud,
    read_pointcloud,
    read_pointclouds,
    write_pointcloud,
    write_pointclouds,
)
from runtime.robot.pointcloud.io_pcd import lzf_decompress, lzf_literal

FIELDS = ["x", "y", "z", "intensity"]


@pytest.fixture
def cloud():
    rng = np.random.default_rng(0)
    points = rng.uniform(-20, 20, size=(1000, 4)).astype(np.float32)
    points[:, 3] = rng.integers(0, 255, 1000)
    return points


@pytest.mark.parametrize(
    "name, encoding",
    [
        ("a.pcd", "ascii"),
        ("b.pcd", "binary"),
        ("c.pcd", "binary_compressed"),
        ("d.ply", "ascii"),
        ("e.ply", "binary_little_endian"),
        ("f.bin", None),
    ],
)
def test_round_trip_is_exact(tmp_path, cloud, name, encoding):
    path = str(tmp_path / name)
    write_pointcloud(path, cloud, FIELDS, encoding=encoding)
    points, fields = read_pointcloud(path)
    assert fields == FIELDS
    np.testing.assert_array_equal(points, cloud)


@pytest.mark.parametrize("name", ["g.las", "h.laz"])
def test_las_round_trip_at_millimetre_scale(tmp_path, cloud, name):
    path = str(tmp_path / name)
    write_pointcloud(path, cloud, FIELDS)
    points, fields = read_pointcloud(path)
    assert fields == FIELDS
    # LAS stores integers of 1 mm (the writer's scale): half a millimetre of rounding, plus one float32
    # step at the coordinates' magnitude when they are read back as float32
    np.testing.assert_allclose(points[:, :3], cloud[:, :3], rtol=0,
                               atol=0.001 / 2 + ulp(np.float32, max_magnitude(cloud[:, :3])))
    np.testing.assert_array_equal(points[:, 3], cloud[:, 3])
    if name.endswith(".laz"):  # really compressed
        write_pointcloud(str(tmp_path / "plain.las"), cloud, FIELDS)
        assert os.path.getsize(path) < os.path.getsize(str(tmp_path / "plain.las"))


def test_las_with_rgb(tmp_path):
    rng = np.random.default_rng(1)
    points = np.c_[rng.uniform(0, 5, (50, 3)), rng.integers(0, 65535, (50, 4))].astype(np.float32)
    fields = ["x", "y", "z", "intensity", "red", "green", "blue"]
    write_pointcloud(str(tmp_path / "rgb.laz"), points, fields)
    got, got_fields = read_pointcloud(str(tmp_path / "rgb.laz"))
    assert got_fields == fields
    np.testing.assert_array_equal(got[:, 3:], points[:, 3:])


def test_pcd_reads_pcl_style_header_with_mixed_types():
    header = (
        b"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z rgb label\nSIZE 4 4 4 4 2\nTYPE F F F U U\n"
        b"COUNT 1 1 1 1 1\nWIDTH 2\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA binary\n"
    )
    records = np.zeros(2, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"), ("label", "<u2")])
    records["x"], records["label"] = [1.5, -2.0], [7, 9]
    points, fields = read_pointcloud(io.BytesIO(header + records.tobytes()), file_format="pcd")
    assert fields == ["x", "y", "z", "rgb", "label"]
    np.testing.assert_array_equal(points[:, 0], [1.5, -2.0])
    np.testing.assert_array_equal(points[:, 4], [7, 9])


def test_ply_skips_faces_and_reads_big_endian():
    vertices = np.array(
        [(1.0, 2.0, 3.0, 200)], dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"), ("red", "u1")]
    )
    body = (
        b"ply\nformat binary_big_endian 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
        b"property float z\nproperty uchar red\nelement face 1\nproperty list uchar int vertex_indices\n"
        b"end_header\n" + vertices.tobytes() + b"\x03\x00\x00\x00\x00"
    )
    points, fields = read_pointcloud(io.BytesIO(body), file_format="ply")
    assert fields == ["x", "y", "z", "red"]
    np.testing.assert_array_equal(points, [[1, 2, 3, 200]])


def test_lzf_decompresses_back_references():
    # "abcabcabcX": literal "abc", then a 6-byte copy from 3 back, then literal "X".
    compressed = bytes([2]) + b"abc" + bytes([(4 << 5) | 0, 2]) + bytes([0]) + b"X"
    assert lzf_decompress(compressed, 10) == b"abcabcabcX"
    data = os.urandom(100)
    assert lzf_decompress(lzf_literal(data), 100) == data


@pytest.mark.parametrize("name", ["t.pcd", "t.ply", "t.bin", "t.las", "t.laz"])
def test_truncated_file_raises_naming_file_and_problem(tmp_path, cloud, name):
    path = str(tmp_path / name)
    write_pointcloud(path, cloud, FIELDS, encoding="binary" if name.endswith(".pcd") else None)
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size - 10)
    with pytest.raises(PointCloudFileError, match=rf"{name}: .*(truncated|unreadable)"):
        read_pointcloud(path)


def test_garbage_header_is_reported(tmp_path):
    path = tmp_path / "junk.ply"
    path.write_bytes(b"this is not a ply file\n")
    with pytest.raises(PointCloudFileError, match="junk.ply: not a PLY file"):
        read_pointcloud(str(path))
    with pytest.raises(ValueError, match="unknown point-cloud file extension"):
        read_pointcloud(str(tmp_path / "scan.xyz"))


def test_chunked_reads_stream_the_body(tmp_path, cloud):
    path = str(tmp_path / "big.pcd")
    write_pointcloud(path, cloud, FIELDS)
    chunks = [points for points, _ in iter_pointcloud(path, chunk_points=300)]
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.concatenate(chunks), cloud)


def test_ray_datasource_and_datasink_round_trip(ray_local, tmp_path, cloud):
    src = tmp_path / "src"
    src.mkdir()
    write_pointcloud(str(src / "a.pcd"), cloud[:400], FIELDS)
    write_pointcloud(str(src / "b.bin"), cloud[400:], FIELDS)
    write_pointcloud(str(src / "c.laz"), cloud[:10], FIELDS)
    ds = read_pointclouds(str(src), max_points_per_row=250)
    rows = sorted(ds.take_all(), key=lambda row: (row["path"], row["chunk_index"]))
    assert [(os.path.basename(r["path"]), r[schema.POINTCLOUD_NUM_POINTS]) for r in rows] == [
        ("a.pcd", 250),
        ("a.pcd", 150),
        ("b.bin", 250),
        ("b.bin", 250),
        ("b.bin", 100),
        ("c.laz", 10),
    ]
    assert rows[0][schema.POINTCLOUD_FIELDS] == "x,y,z,intensity"
    np.testing.assert_array_equal(np.asarray(rows[0][schema.POINTCLOUD]).reshape(-1, 4), cloud[:250])

    out = tmp_path / "out"
    write_pointclouds(read_pointclouds(str(src / "a.pcd")), str(out), file_format="ply")
    written = os.listdir(out)
    assert len(written) == 1 and written[0].endswith(".ply")
    points, fields = read_pointcloud(str(out / written[0]))
    assert fields == FIELDS
    np.testing.assert_array_equal(points, cloud[:400])
