"""Robot data formats, each a streaming reader (Ray Data datasource) and/or writer.

`lerobot` (LeRobot v3.0, read and write), `mcap` (ROS 2 MCAP), `rosbag` (ROS 1 / ROS 2 bags),
`hdf5` (robomimic-style episode files), `pointcloud_files` (PCD, PLY, KITTI .bin, LAS/LAZ).
Import the submodule you need; this package imports nothing eagerly.
"""
