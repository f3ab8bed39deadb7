"""Point-cloud ops benchmark: points/s of each op against naive numpy (and Open3D when it imports), one
core, in one run; then end-to-end frames/s of 128x128 depth -> cloud -> crop -> voxel -> FPS(512)
through Ray Data on 2 CPUs against the same ops called frame by frame in one process; peak memory.

    python -m benchmarks.pointcloud_ops [--quick]
    ray job submit --working-dir . -- python -m benchmarks.pointcloud_ops --quick

Writes benchmarks/results/pointcloud_ops.json and pointcloud_ops.png. Op timings are the best of
several repeats of process CPU time (robust to other load on the machine); wall times are kept too.
"""

from __future__ import annotations

import os

for _knob in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before numpy
    os.environ.setdefault(_knob, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime.robot.pointcloud import ground, outliers, projection, sampling, transforms, voxel  # noqa: E402
from runtime.robot.pointcloud.pipeline import PointCloudPipelineConfig, SyntheticDepth  # noqa: E402

RESULTS = Path(__file__).parent / "results"
INTRINSICS = projection.CameraIntrinsics.from_fov(width=256, height=256, fov_y_deg=60)


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(best CPU seconds, best wall seconds) over repeats, after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall)


# Naive numpy baselines: the straightforward first implementation of each op.
def naive_depth(depth, k):
    v, u = np.meshgrid(np.arange(depth.shape[0]), np.arange(depth.shape[1]), indexing="ij")
    z = depth * 0.001
    pts = np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], axis=-1).reshape(-1, 3)
    return pts[pts[:, 2] > 0]


def naive_crop(points, low, high):
    return points[np.all((points[:, :3] >= low) & (points[:, :3] <= high), axis=1)]


def naive_voxel(points, size):
    keys = np.floor(points / size).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), points.shape[1]))
    np.add.at(sums, inverse.ravel(), points)
    return sums / counts[:, None]


def naive_sor(points, k, ratio):
    dist = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    mean_k = np.partition(dist, k, axis=1)[:, 1 : k + 1].mean(1)
    return points[mean_k <= mean_k.mean() + ratio * mean_k.std()]


def naive_ransac(points, threshold, iterations, seed=0):
    rng, best, best_count = np.random.default_rng(seed), None, -1
    for _ in range(iterations):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        if np.linalg.norm(normal) < 1e-12:
            continue
        normal /= np.linalg.norm(normal)
        count = int((np.abs((points - a) @ normal) <= threshold).sum())
        if count > best_count:
            best, best_count = normal, count
    return best


def naive_fps(points, k):
    picked, dist = [0], np.full(len(points), np.inf)
    for _ in range(k - 1):
        dist = np.minimum(dist, ((points - points[picked[-1]]) ** 2).sum(1))
        picked.append(int(dist.argmax()))
    return np.array(picked)


def naive_normalize(points):
    centered = points - points.mean(0)
    return centered / np.linalg.norm(centered, axis=1).max()


def open3d_ops(o3d, data):
    """Open3D equivalents (None where Open3D has no such op)."""
    cloud = lambda pts: o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))  # noqa: E731
    clouds = {name: cloud(pts) for name, pts in data["clouds"].items()}
    depth_image = o3d.geometry.Image(data["depth"])
    camera = o3d.camera.PinholeCameraIntrinsic(
        256, 256, INTRINSICS.fx, INTRINSICS.fy, INTRINSICS.cx, INTRINSICS.cy
    )
    box = o3d.geometry.AxisAlignedBoundingBox(np.full(3, -0.5), np.full(3, 0.5))
    return {
        "depth_to_points": lambda: [
            o3d.geometry.PointCloud.create_from_depth_image(depth_image, camera) for _ in range(1)
        ],
        "crop_box": lambda: clouds["large"].crop(box),
        "voxel_downsample": lambda: clouds["large"].voxel_down_sample(data["voxel_size"]),
        "statistical_outliers": lambda: clouds["sor"].remove_statistical_outlier(20, 2.0),
        "ransac_ground": lambda: clouds["ransac"].segment_plane(0.01, 3, 100),
        "fps": lambda: clouds["fps"].farthest_point_down_sample(1024),
        "normalize": None,
    }


def bench_ops(quick: bool) -> dict:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n_large = 1_000_000
    large = (rng.random((n_large, 3), dtype=np.float32) * 2 - 1).astype(np.float32)
    plane = np.c_[rng.uniform(-5, 5, (100_000, 2)), rng.normal(0, 0.003, 100_000)].astype(np.float32)
    plane[::5, 2] += rng.uniform(0.1, 1.0, len(plane[::5])).astype(np.float32)  # 20% objects above ground
    sor = rng.normal(0, 1, (5_000 if quick else 10_000, 3)).astype(np.float32)
    fps = rng.random((100_000, 3), dtype=np.float32)
    depth = (rng.uniform(500, 2500, (256, 256))).astype(np.uint16)
    depth_batch = np.repeat(depth[None], 4 if quick else 16, axis=0)
    voxel_size = 0.05  # ~64k occupied voxels of ~15 points for 1M points in the 2 m cube
    low, high = np.full(3, -0.5, np.float32), np.full(3, 0.5, np.float32)
    ops = {
        "depth_to_points": (
            depth_batch.size,
            lambda: projection.depth_to_points_batch(depth_batch, INTRINSICS, depth_scale=0.001),
            lambda: [naive_depth(d, INTRINSICS) for d in depth_batch],
        ),
        "crop_box": (
            len(large),
            lambda: transforms.crop_box(large, low, high),
            lambda: naive_crop(large, low, high),
        ),
        "voxel_downsample": (
            len(large),
            lambda: voxel.voxel_downsample(large, voxel_size),
            lambda: naive_voxel(large, voxel_size),
        ),
        "statistical_outliers": (
            len(sor),
            lambda: outliers.remove_statistical_outliers(sor, num_neighbors=20),
            lambda: naive_sor(sor[:3000], 20, 2.0),
        ),
        "ransac_ground": (
            len(plane),
            lambda: ground.segment_plane(plane, distance_threshold=0.01, num_iterations=100),
            lambda: naive_ransac(plane, 0.01, 100),
        ),
        "fps": (len(fps), lambda: sampling.farthest_point_sample(fps, 1024), lambda: naive_fps(fps, 1024)),
        "normalize": (len(large), lambda: transforms.normalize_points(large), lambda: naive_normalize(large)),
    }
    naive_sizes = {"statistical_outliers": 3000}  # the naive N x N matrix does not fit at full size
    try:
        import open3d as o3d

        o3d_ops = open3d_ops(
            o3d,
            {
                "clouds": {"large": large, "sor": sor, "ransac": plane, "fps": fps},
                "depth": depth,
                "voxel_size": voxel_size,
            },
        )
        o3d_version = o3d.__version__
    except ImportError as error:
        o3d_ops, o3d_version = {}, f"unavailable: {error}"
    results = {}
    for name, (num_points, ours, naive) in ops.items():
        repeats = 3 if name in ("fps", "statistical_outliers", "ransac_ground") else 5
        cpu, wall = best_time(ours, repeats)
        naive_cpu, _ = best_time(naive, 1 if name in ("fps", "ransac_ground", "statistical_outliers") else 3)
        naive_points = naive_sizes.get(name, num_points)
        entry = {
            "num_points": num_points,
            "strata_s": cpu,
            "strata_wall_s": wall,
            "strata_points_per_s": num_points / cpu,
            "naive_points": naive_points,
            "naive_s": naive_cpu,
            "naive_points_per_s": naive_points / naive_cpu,
        }
        entry["speedup_vs_naive"] = entry["strata_points_per_s"] / entry["naive_points_per_s"]
        if o3d_ops.get(name):
            o3d_cpu, _ = best_time(o3d_ops[name], repeats)
            o3d_points = 256 * 256 if name == "depth_to_points" else num_points
            entry["open3d_s"] = o3d_cpu
            entry["open3d_points_per_s"] = o3d_points / o3d_cpu
            entry["speedup_vs_open3d"] = entry["strata_points_per_s"] / entry["open3d_points_per_s"]
        results[name] = entry
        print(
            f"{name:22s} {entry['strata_points_per_s'] / 1e6:8.2f} M pts/s  x{entry['speedup_vs_naive']:.1f} vs naive"
            + (f"  x{entry['speedup_vs_open3d']:.2f} vs open3d" if "speedup_vs_open3d" in entry else "")
        )
    return {"ops": results, "open3d": o3d_version}


class PeakMemory:
    """Samples the summed RSS of this driver and its descendants (the embedded cluster's raylet and
    workers; other Ray clusters on the machine are not counted) in a background thread."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self._psutil, self.interval_s, self.peak_bytes = psutil, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = self._psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except self._psutil.NoSuchProcess:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cluster_cpu_seconds() -> float:
    """User + system CPU seconds of this driver and all its descendants (raylet, GCS, workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def bench_pipeline(num_frames: int) -> dict:
    import ray

    from runtime.cluster import connect
    from runtime.robot.pointcloud.pipeline import build_pointcloud_pipeline, synthetic_depth_frames

    config = PointCloudPipelineConfig()  # 128x128, crop, voxel 1 cm, FPS 512, batch 32
    render, intrinsics = SyntheticDepth(), config.intrinsics()
    config_no_metrics = PointCloudPipelineConfig(record_metrics=False)

    def one_frame(index: int) -> np.ndarray:
        points = projection.depth_to_points(
            render.render(index), intrinsics, depth_scale=0.001, max_depth=3.0
        )
        points = voxel.voxel_downsample(
            transforms.crop_box(points, config.crop_min, config.crop_max), config.voxel_size
        )
        return points[sampling.farthest_point_sample(points, config.num_samples)]

    baseline_frames = max(num_frames // 8, 32)
    started = time.perf_counter()
    for index in range(baseline_frames):
        one_frame(index)
    baseline_fps = baseline_frames / (time.perf_counter() - started)
    # CPU cost per frame of the batched stages in this process (no Ray): capacity per core, load-independent.
    stages = build_pointcloud_pipeline(_StageList(), config_no_metrics).stages
    batch = {"id": np.arange(config.batch_size)}
    cpu_started = time.process_time()
    for _ in range(4):
        out = render({"id": batch["id"]})
        for stage in stages:
            out = stage(out)
    stage_cpu_s_per_frame = (time.process_time() - cpu_started) / (4 * config.batch_size)

    connect(num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    columns = ["num_points.depth", "num_points.sampled"]
    warmup = build_pointcloud_pipeline(synthetic_depth_frames(64), config).select_columns(columns)
    for _ in warmup.iter_batches(batch_size=None):
        pass
    frames = points_in = 0
    with PeakMemory() as memory:
        cpu_before = cluster_cpu_seconds()
        started = time.perf_counter()
        clouds = build_pointcloud_pipeline(
            synthetic_depth_frames(num_frames, batch_size=config.batch_size), config
        )
        for batch in clouds.select_columns(columns).iter_batches(batch_size=None, batch_format="numpy"):
            frames += len(batch["num_points.depth"])
            points_in += int(batch["num_points.depth"].sum())
        wall_s = time.perf_counter() - started
        cluster_cpu_s = cluster_cpu_seconds() - cpu_before
    ray_cpus = ray.cluster_resources().get("CPU", 0)
    return {
        "frames": frames,
        "ray_cpus": ray_cpus,
        "frames_per_s": frames / wall_s,
        "points_per_s": points_in / wall_s,
        "wall_s": wall_s,
        "baseline_in_process_frames_per_s": baseline_fps,
        "batched_stages_cpu_s_per_frame": stage_cpu_s_per_frame,
        "capacity_frames_per_s_per_core_from_cpu_time": 1.0 / stage_cpu_s_per_frame,
        "speedup_vs_in_process": frames / wall_s / baseline_fps,
        "peak_rss_bytes_driver_plus_workers": memory.peak_bytes,
        # Load-independent view: all CPU the run cost (Ray overhead included), and what 2 dedicated CPUs give.
        "cluster_cpu_s_per_frame": cluster_cpu_s / frames,
        "projected_frames_per_s_on_2_dedicated_cpus": 2 * frames / cluster_cpu_s,
        "config": {
            "height": config.height,
            "width": config.width,
            "voxel_size": config.voxel_size,
            "num_samples": config.num_samples,
            "batch_size": config.batch_size,
        },
    }


class _StageList:
    """Stands in for a Dataset to collect the stages build_pointcloud_pipeline adds."""

    def __init__(self) -> None:
        self.stages = []

    def map_batches(self, stage, **_):
        self.stages.append(stage)
        return self


def plot(ops: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ops)
    series = [
        ("strata", "strata_points_per_s"),
        ("naive numpy", "naive_points_per_s"),
        ("open3d", "open3d_points_per_s"),
    ]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.27
    for offset, (label, key) in enumerate(series):
        values = [ops[name].get(key, 0) / 1e6 for name in names]
        ax.bar(np.arange(len(names)) + (offset - 1) * width, values, width, label=label)
    ax.set_yscale("log")
    ax.set_ylabel("M points/s (one core, CPU time)")
    ax.set_xticks(np.arange(len(names)), names, rotation=20)
    ax.legend()
    ax.set_title("point-cloud ops: strata vs naive numpy vs open3d")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer frames (~1 minute)")
    parser.add_argument("--frames", type=int, help="frames through the Ray Data pipeline")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    report = {"benchmark": "pointcloud_ops", "quick": args.quick, "cpu_count": os.cpu_count()}
    report.update(bench_ops(args.quick))
    if not args.skip_pipeline:
        report["pipeline"] = bench_pipeline(args.frames or (512 if args.quick else 4000))
        print(
            f"pipeline: {report['pipeline']['frames_per_s']:.1f} frames/s on {report['pipeline']['ray_cpus']:.0f} "
            f"CPUs (in-process baseline {report['pipeline']['baseline_in_process_frames_per_s']:.1f})"
        )
    ops = report["ops"]
    report["targets"] = {
        "voxel_downsample_points_per_s_per_core>=30M": ops["voxel_downsample"]["strata_points_per_s"] >= 30e6,
        "fps_1024_of_100k_s<=0.020": ops["fps"]["strata_s"] <= 0.020,
        "pipeline_frames_per_s>=80": report.get("pipeline", {}).get("frames_per_s", 0) >= 80,
        "pipeline_projected_frames_per_s_on_2_dedicated_cpus>=80": report.get("pipeline", {}).get(
            "projected_frames_per_s_on_2_dedicated_cpus", 0
        )
        >= 80,
    }
    report["load_average_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    report["driver_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pointcloud_ops.json").write_text(json.dumps(report, indent=2))
    plot(ops, RESULTS / "pointcloud_ops.png")
    print(json.dumps(report["targets"], indent=2), f"\nload average {report['load_average_1_5_15']}")
    return report


if __name__ == "__main__":
    main()
