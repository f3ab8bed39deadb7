"""Ray Data pipelines for robot data, each a module run as `python -m data_apps.<name>`.

convert (one format -> LeRobot v3), ingest (a directory of mixed robot logs -> LeRobot v3),
label (episodes -> labels), pointcloud, collect, loop. Apps share code only through `runtime/`
and `data_apps.common`.
"""
