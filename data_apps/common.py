"""What the robot data pipelines share: Ray Data setup, sources per format, commit + summary, metrics.

Operators' view: Ray Data's progress bars show each stage; committed rows, points and episodes are
exported as Ray metrics (`strata_data_*`, tagged by pipeline) from the workers that commit them;
rows/s and points/s gauges are set by the driver; the summary is printed and saved as
`<dst>/.strata/summary.json`.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.data

from runtime import metrics
from runtime.cluster import connect, place
from runtime.placement_fit import ReplicaGroup
from runtime.robot.formats.datasource import EpisodeDatasource
from runtime.robot.manifest import EpisodeCommitSink, EpisodeManifest, Quarantine, finalize_lerobot

FORMATS = ("lerobot", "mcap", "rosbag", "hdf5")
_MIN_BLOCK_BYTES = 256 * 1024 * 1024  # one episode per block: do not let Ray Data split an episode


# A pipeline makes progress once one Ray Data task (reads and writes ask for 1 CPU each) is scheduled.
DATA_TASK = ReplicaGroup(name="Ray Data task", count=1, num_cpus=1.0, fixed=True)


def connect_cluster(num_cpus: int | None = None, *, pipeline: str) -> None:
    """Join RAY_ADDRESS when set (ray job submit), else start an embedded cluster of `num_cpus`; exit
    with one line when the cluster has no CPU for a Ray Data task (it would wait forever)."""
    connect(num_cpus=num_cpus)
    place([DATA_TASK], prog=f"python -m data_apps.{pipeline}", embedded_flag="--num-cpus")


def setup_data_context() -> ray.data.DataContext:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = True
    context.target_max_block_size = max(context.target_max_block_size or 0, _MIN_BLOCK_BYTES)
    return context


def discover_sources(src: str | Path, src_format: str) -> list[str]:
    """Input units of a format under `src` (a file, a bag directory or a directory of them)."""
    src = Path(src)
    if src_format not in FORMATS:
        raise ValueError(f"src_format must be one of {FORMATS}, got {src_format!r}")
    if not src.exists():
        raise ValueError(f"src {src} does not exist")
    if src_format == "lerobot":
        from runtime.robot.formats.lerobot_read import episode_sources

        return episode_sources(src)
    if src.is_file() or (src_format == "rosbag" and (src / "metadata.yaml").exists()):
        return [str(src.resolve())]
    patterns = {"mcap": ["*.mcap"], "hdf5": ["*.hdf5", "*.h5"], "rosbag": ["*.bag"]}[src_format]
    found = {path.resolve() for pattern in patterns for path in src.rglob(pattern)}
    if src_format == "rosbag":
        found |= {path.parent.resolve() for path in src.rglob("metadata.yaml")}
    return sorted(str(path) for path in found)


def reader_for(src_format: str, *, topic_mapping: str | None = None, fps: float | None = None, task: str | None = None):
    """The `read_episodes(source, skip)` function of a format, configured."""
    if src_format in ("mcap", "rosbag"):
        from runtime.robot.formats import mcap, rosbag
        from runtime.robot.formats.ros_messages import TopicMapping

        mapping = TopicMapping.from_file(topic_mapping) if topic_mapping else None
        if mapping is not None and task is not None:
            mapping.task = task
        module = mcap if src_format == "mcap" else rosbag
        return functools.partial(module.read_episodes, mapping=mapping)
    if src_format == "hdf5":
        from runtime.robot.formats import hdf5

        return functools.partial(hdf5.read_episodes, mapping=hdf5.HDF5Mapping(fps=fps or 20.0, task=task))
    from runtime.robot.formats import lerobot_read

    return lerobot_read.read_episodes


def read_sources(sources: list[str], read_episodes, *, dst: str | Path, name: str) -> ray.data.Dataset | None:
    """A streaming dataset of the episodes not yet committed under `dst` (None when nothing is left)."""
    committed = set(EpisodeManifest(dst).committed())
    pending = [source for source in sources if source not in committed]
    if not pending:
        return None
    datasource = EpisodeDatasource(pending, read_episodes, skip_sources=committed, quarantine_dir=dst, name=name)
    return read_episode_datasource(datasource)


def read_episode_datasource(datasource: EpisodeDatasource) -> ray.data.Dataset:
    """One read task (and block stream) per source group; blocks stay whole episodes."""
    return ray.data.read_datasource(datasource, override_num_blocks=datasource.num_read_tasks())


def _count_committed(pipeline: str, entries: list[dict]) -> None:
    """Runs in the committing worker: exports rows, points and episodes as Ray counters."""
    tags = {"pipeline": pipeline}
    counts = {
        "strata_data_rows_total": ("frame rows committed", sum(e["num_frames"] for e in entries)),
        "strata_data_points_total": ("point-cloud points committed", sum(e["num_points"] for e in entries)),
        "strata_data_episodes_total": ("episodes committed", len(entries)),
    }
    for name, (description, value) in counts.items():
        if value > 0:  # Ray counters take positive increments only
            metrics.counter(name, description, ("pipeline",)).inc(value, tags)


@dataclass(kw_only=True, slots=True)
class Summary:
    pipeline: str
    output: str
    episodes_total: int = 0
    episodes_this_run: int = 0
    episodes_resumed: int = 0
    frames_total: int = 0
    frames_this_run: int = 0
    points_this_run: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    rows_per_s: float = 0.0
    points_per_s: float = 0.0

    def render(self) -> str:
        lines = [
            f"== {self.pipeline} summary ==",
            f"output            {self.output}",
            f"episodes          {self.episodes_total} in dataset ({self.episodes_this_run} this run, "
            f"{self.episodes_resumed} already committed)",
            f"frames            {self.frames_total} in dataset ({self.frames_this_run} this run)",
            f"points this run   {self.points_this_run}",
            f"wall time         {self.wall_s:.1f} s  ({self.rows_per_s:.1f} rows/s, {self.points_per_s:.0f} points/s)",
            f"quarantined       {len(self.quarantined)}",
        ]
        lines += [f"  {entry['source']}: {entry['reason']}" for entry in self.quarantined]
        return "\n".join(lines)


def commit_and_finalize(
    dataset: ray.data.Dataset | None, *, dst: str | Path, pipeline: str, started_s: float, fps: float | None = None,
    **writer_kwargs: Any,
) -> Summary:
    """Commit every episode of `dataset` under `dst`, assemble the LeRobot dataset, summarize."""
    manifest = EpisodeManifest(dst)
    resumed = len(manifest.committed())
    entries: list[dict] = []
    if dataset is not None:
        sink = EpisodeCommitSink(dst, on_commit=functools.partial(_count_committed, pipeline))
        dataset.write_datasink(sink)
        entries = sink.entries
    totals = finalize_lerobot(dst, fps=fps, **writer_kwargs)
    committed = manifest.committed()
    wall_s = time.perf_counter() - started_s
    frames = sum(e["num_frames"] for e in entries)
    points = sum(e["num_points"] for e in entries)
    summary = Summary(
        pipeline=pipeline, output=str(dst), episodes_total=totals["episodes"], episodes_this_run=len(entries),
        episodes_resumed=resumed, frames_total=totals["frames"], frames_this_run=frames, points_this_run=points,
        quarantined=[{"source": e["source"], "reason": e["reason"]} for e in Quarantine(dst).entries()
                     if e["source"] not in committed],  # a source fixed and converted since is no longer out
        wall_s=wall_s, rows_per_s=frames / wall_s, points_per_s=points / wall_s,
    )
    tags = {"pipeline": pipeline}
    metrics.gauge("strata_data_rows_per_s", "frame rows per second, last run", ("pipeline",)).set(
        summary.rows_per_s, tags)
    metrics.gauge("strata_data_points_per_s", "point-cloud points per second, last run", ("pipeline",)).set(
        summary.points_per_s, tags)
    (manifest.work / "summary.json").parent.mkdir(parents=True, exist_ok=True)
    (manifest.work / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
