"""Episode-level commit with a manifest, and quarantine of corrupt inputs.

A pipeline run killed at any point and started again must end with every episode exactly once.
Ray Data retries tasks but has no notion of "this episode is already on disk", so each episode is
committed on its own: written under a temporary name, fsynced, renamed to a name derived from its
`episode_source` (a retry overwrites, never duplicates), then recorded by one appended line in
`manifest.jsonl`. On restart the manifest's sources are skipped at read time. The final dataset is
assembled from the committed episodes in source order, so it is the same whatever the interruptions.

Work layout under the output directory:
    .strata/manifest.jsonl      one JSON line per committed episode
    .strata/staging/*.parquet   committed episodes (runtime.robot.schema rows)
    .strata/features.json       the dataset's feature spec, fixed by the first finalize
    quarantine/quarantine.jsonl one JSON line per rejected input: source and reason
    quarantine/<file>           a copy of each rejected input file

An episode is checked before commit (runtime.robot.formats.episode_checks): safe feature keys, a
frame_index without gaps and, once a finalize has fixed it, the dataset's feature spec. One that
fails is quarantined with the reason instead of being committed; finalize checks every episode again
(the first in source order fixes the spec), so none can fail `finalize_lerobot` on every rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import Datasink

from runtime.robot import schema as S
from runtime.robot.formats.episode_checks import episode_problems, spec_mismatches

logger = logging.getLogger(__name__)

WORK_DIR = ".strata"
QUARANTINE_DIR = "quarantine"


def _append_line(path: Path, record: dict) -> None:
    """Append one JSON line atomically enough for concurrent writers (O_APPEND, one write, fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill mid-write: that commit never happened
            continue
    return records


class Quarantine:
    """Rejected inputs of a pipeline run under `<root>/quarantine/`."""

    def __init__(self, root: str | Path):
        self.dir = Path(root) / QUARANTINE_DIR
        self.journal = self.dir / "quarantine.jsonl"

    def add(self, source: str, reason: str) -> None:
        """Record `source` as rejected for `reason` and copy its input file (or bag directory) here.

        The copy never moves or changes the source. When it fails (a full disk, an unreadable part of
        a bag), the failure is logged and recorded with the entry, and the job goes on."""
        copied_to, not_copied = self._copy(Path(source.split("#", 1)[0]))
        record = {"source": source, "reason": reason, "copied_to": copied_to, "time": time.time()}
        if not_copied is not None:
            record["not_copied"] = not_copied
        _append_line(self.journal, record)

    def _copy(self, path: Path) -> tuple[str | None, str | None]:
        """(where the copy went, why there is none)."""
        if not path.exists():
            return None, None
        if path.is_dir() and (path / "meta" / "info.json").exists():
            return None, f"an episode of the LeRobot dataset {path}; the dataset is not copied"
        name = f"{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}-{path.name}"
        target, partial = self.dir / name, self.dir / f".partial-{os.getpid()}-{name}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, partial, symlinks=False)
                shutil.rmtree(target, ignore_errors=True)  # an older copy of the same source
            else:
                shutil.copy2(path, partial)
            os.replace(partial, target)  # a copy is either whole under its name or not there
        except OSError as error:  # shutil.Error is an OSError too
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)
            logger.warning("quarantine: could not copy %s to %s: %s", path, target, error)
            return None, f"copy failed: {type(error).__name__}: {error}"
        return str(target), None

    def entries(self) -> list[dict]:
        """One entry per source (the latest), in source order."""
        latest = {record["source"]: record for record in _read_lines(self.journal)}
        return [latest[source] for source in sorted(latest)]


class EpisodeManifest:
    """Committed episodes of one output directory (see the module docstring for the layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.work = self.root / WORK_DIR
        self.staging = self.work / "staging"
        self.journal = self.work / "manifest.jsonl"
        self.spec_path = self.work / "features.json"

    def committed(self) -> dict[str, dict]:
        """episode_source -> manifest entry, for every committed episode whose file is present."""
        entries = {}
        for record in _read_lines(self.journal):
            if (self.staging / record["file"]).exists():
                entries[record["source"]] = record
        return entries

    def staged_path(self, source: str) -> Path:
        return self.staging / (hashlib.sha1(source.encode()).hexdigest()[:20] + ".parquet")

    def feature_spec(self) -> dict[str, dict] | None:
        """The dataset's feature spec (runtime.robot.formats.episode_checks), None before the first commit."""
        return json.loads(self.spec_path.read_text()) if self.spec_path.exists() else None

    def fix_feature_spec(self, spec: dict[str, dict]) -> dict[str, dict]:
        """Make `spec` the dataset's unless one is already fixed; returns the dataset's spec.

        Commits run in parallel tasks: the first to link its file wins, the others read the winner's."""
        self.work.mkdir(parents=True, exist_ok=True)
        temporary = self.spec_path.with_suffix(f".tmp-{os.getpid()}-{time.monotonic_ns()}")
        temporary.write_text(json.dumps(spec, sort_keys=True))
        try:
            os.link(temporary, self.spec_path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
        return self.feature_spec()

    def admission_problems(self, episode: pa.Table, *, fix_spec: bool = False) -> list[str]:
        """Why `episode` may not join this dataset (empty: it may).

        Until the spec is fixed only the episode's own problems count: commits run in parallel, so the
        first to commit is not a rule; finalize fixes it from the first episode in source order."""
        spec = self.feature_spec()
        found, problems = episode_problems(episode, spec)
        if spec is None and fix_spec and not problems:
            problems = spec_mismatches(self.fix_feature_spec(found), found)
        return problems

    def withdraw(self, source: str) -> None:
        """Take a committed episode back out (its journal line stays; committed() needs the file)."""
        self.staged_path(source).unlink(missing_ok=True)

    def commit(self, episode: pa.Table) -> dict[str, Any]:
        """Commit one complete episode; returns its manifest entry."""
        source = episode_source(episode)
        frame_index = episode.column(S.FRAME_INDEX).to_numpy()
        if not np.array_equal(np.sort(frame_index), np.arange(episode.num_rows)):
            raise ValueError(f"episode {source} is incomplete: frame_index is not 0..{episode.num_rows - 1}")
        final = self.staged_path(source)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_suffix(f".tmp-{os.getpid()}")
        pq.write_table(episode, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        entry = {"source": source, "file": final.name, "num_frames": episode.num_rows,
                 "num_points": _num_points(episode), "time": time.time()}
        _append_line(self.journal, entry)
        return entry

    def iter_committed(self) -> Iterator[tuple[str, pa.Table]]:
        """(source, episode table) for every committed episode, in source order, one at a time."""
        committed = self.committed()
        for source in sorted(committed):
            yield source, pq.read_table(self.staging / committed[source]["file"])


def episode_source(episode: pa.Table) -> str:
    sources = set(episode.column(S.EPISODE_SOURCE).to_pylist())
    if len(sources) != 1 or None in sources:
        raise ValueError(f"an episode to commit needs one episode_source, got {sorted(map(str, sources))}")
    return sources.pop()


def _num_points(table: pa.Table) -> int:
    if S.POINTCLOUD_NUM_POINTS not in table.column_names:
        return 0
    return int(pa.compute.sum(table.column(S.POINTCLOUD_NUM_POINTS)).as_py() or 0)


def commit_block(root: str | Path, block: pa.Table) -> list[dict[str, Any]]:
    """Commit every episode in a block (a block holds whole episodes) that fits the dataset; quarantine
    the others with their reasons. Returns the entries committed."""
    manifest = EpisodeManifest(root)
    entries = []
    for episode in S.episode_tables(block):
        problems = manifest.admission_problems(episode)
        if problems:
            Quarantine(root).add(episode_source(episode), "; ".join(problems))
        else:
            entries.append(manifest.commit(episode))
    return entries


def summarize(entries: Iterable[dict]) -> dict[str, int]:
    entries = list(entries)
    return {"episodes": len(entries), "frames": sum(e["num_frames"] for e in entries),
            "points": sum(e["num_points"] for e in entries)}


class EpisodeCommitSink(Datasink):
    """Ray Data sink committing each episode of each block to an EpisodeManifest.

    Blocks must hold whole episodes: the episode datasources yield one block per episode and the
    labeling stages map whole blocks (`batch_size=None`). `entries` holds what was committed.
    """

    def __init__(self, root: str | Path, on_commit=None):
        self.root = str(root)
        self.on_commit = on_commit
        self.entries: list[dict[str, Any]] = []

    def get_name(self) -> str:
        return "EpisodeCommit"

    def write(self, blocks: Iterable[pa.Table], ctx) -> list[dict[str, Any]]:
        entries = []
        for block in blocks:
            if not isinstance(block, pa.Table):
                block = pa.Table.from_pandas(block, preserve_index=False)
            committed = commit_block(self.root, block)
            if self.on_commit is not None:
                self.on_commit(committed)
            entries.extend(committed)
        return entries

    def on_write_complete(self, write_result) -> None:
        self.entries = [entry for entries in write_result.write_returns for entry in entries]


def finalize_lerobot(root: str | Path, *, fps: float | None = None, **writer_kwargs: Any) -> dict[str, int]:
    """Assemble every committed episode, in source order, into a LeRobot v3.0 dataset at `root`.

    Built under .strata/build and published at once (runtime.robot.formats.lerobot_publish): a kill
    here leaves the previous dataset readable, and running it again finishes the job. An episode that
    does not fit the dataset (committed before the checks existed) is quarantined and withdrawn.
    `fps` defaults to the rate of the first episode's timestamps. Returns totals.
    """
    from runtime.robot.formats import lerobot_publish
    from runtime.robot.formats.lerobot import LeRobotWriter

    root = Path(root)
    manifest = EpisodeManifest(root)
    build = lerobot_publish.prepare_build(root, manifest.work)
    first_chunk_index = lerobot_publish.next_chunk_index(root)
    writer = None
    for source, episode in manifest.iter_committed():
        problems = manifest.admission_problems(episode, fix_spec=True)
        if problems:
            Quarantine(root).add(source, "; ".join(problems))
            manifest.withdraw(source)
            continue
        if writer is None:
            fps = fps or estimate_fps(episode)
            writer = LeRobotWriter(build, fps=int(round(fps)), first_chunk_index=first_chunk_index, **writer_kwargs)
        writer.add_episode(episode)
    if writer is None:
        return {"episodes": 0, "frames": 0}
    writer.finalize()
    lerobot_publish.publish(build, root)
    return {"episodes": writer.num_episodes, "frames": writer.num_frames}


def estimate_fps(episode: pa.Table) -> float:
    timestamps = np.sort(episode.column(S.TIMESTAMP).to_numpy())
    steps = np.diff(timestamps)
    steps = steps[steps > 0]
    if len(steps) == 0:
        raise ValueError("cannot estimate fps from an episode with one timestamp; pass fps")
    return float(1.0 / np.median(steps))
