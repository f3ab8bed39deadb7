"""Human labels as JSONL, one label a line: export for annotation tools, import back into datasets.

Line format: {"episode_source": str, "frame_index": int | null, "name": str, "value": any,
"source": "human:<annotator>", "version": str, "scope": "frame" | "episode"}.
Episode-scope labels have frame_index null and apply to every frame of the episode.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from runtime.robot import schema as S


def label_records(table: pa.Table) -> list[dict]:
    """JSONL records for every label of a table (episode-scope ones once per episode)."""
    records = []
    seen_episode_labels = set()
    sources = table.column(S.EPISODE_SOURCE).to_pylist()
    frames = table.column(S.FRAME_INDEX).to_pylist()
    for source, frame, text in zip(sources, frames, table.column(S.LABELS).to_pylist()):
        for label in S.labels_from_json(text):
            record = {"episode_source": source, "frame_index": frame, **asdict(label)}
            if label.scope == "episode":
                key = (source, label.name, label.source)
                if key in seen_episode_labels:
                    continue
                seen_episode_labels.add(key)
                record["frame_index"] = None
            records.append(record)
    return records


def export_labels(tables: Iterable[pa.Table], path: str | Path) -> int:
    """Write every label of `tables` to a JSONL file; returns the number of lines."""
    count = 0
    with open(path, "w") as handle:
        for table in tables:
            for record in label_records(table):
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
                count += 1
    return count


def load_labels(path: str | Path) -> dict[str, list[dict]]:
    """episode_source -> label records, validated."""
    by_episode: dict[str, list[dict]] = defaultdict(list)
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        missing = {"episode_source", "name", "value", "source", "version"} - set(record)
        if missing:
            raise ValueError(f"{path}:{number}: label line lacks {sorted(missing)}")
        by_episode[record["episode_source"]].append(record)
    return dict(by_episode)


class HumanLabelImporter:
    """Ray Data stage merging labels from a JSONL file into the rows they name."""

    def __init__(self, path: str | Path):
        self.labels = load_labels(path)

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = batch.column(S.EPISODE_SOURCE).to_pylist()
        frames = batch.column(S.FRAME_INDEX).to_pylist()
        per_row = []
        for source, frame in zip(sources, frames):
            row = []
            for record in self.labels.get(source, ()):
                scope = record.get("scope") or ("episode" if record.get("frame_index") is None else "frame")
                if scope == "episode" or record.get("frame_index") == frame:
                    row.append(S.Label(name=record["name"], value=record["value"], source=record["source"],
                                       version=str(record["version"]), scope=scope))
            per_row.append(row)
        return S.with_labels(batch, per_row)
