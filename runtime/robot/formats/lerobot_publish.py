"""Publish a LeRobot dataset built aside so that it appears at once and a crash leaves the previous one.

Readers find everything through `meta/`: info.json's path templates and the episodes metadata, which
names each episode's data and video chunk. So a new version writes its data and videos under chunk
indices no earlier version uses (`next_chunk_index`), they are moved beside the old ones (nothing
references them yet), and then `meta/` is exchanged with the new one in one step: Linux's
renameat2(RENAME_EXCHANGE), which swaps two directories atomically (a plain rename cannot replace a
non-empty directory). Last, chunks no longer referenced are removed. A kill before the exchange
leaves the previous version whole (plus unreferenced chunks, removed by the next publish); a kill
after it leaves the new one.

Where RENAME_EXCHANGE is missing (not Linux, or a filesystem without it) the old meta/ is renamed
aside and the new one renamed in; a kill between the two renames is undone by `prepare_build`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from runtime.robot.formats.lerobot_layout import EPISODES_DIR

_CHUNK_DIR = re.compile(r"chunk-(\d+)")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_directories(first: Path, second: Path) -> None:
    """Swap two existing directories in one atomic step (renameat2 RENAME_EXCHANGE)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(first), None, str(second))


def _aside(build: Path) -> Path:
    return build.parent / "meta-previous"


def prepare_build(root: Path, work: Path) -> Path:
    """An empty build directory under `work`, after undoing a fallback publish cut between its renames."""
    build = work / "build"
    aside = _aside(build)
    if aside.exists():
        if not (root / "meta").exists():
            os.rename(aside, root / "meta")
        else:
            shutil.rmtree(aside)
    shutil.rmtree(build, ignore_errors=True)
    return build


def _chunk_dirs(root: Path) -> list[tuple[Path, int]]:
    parents = [root / "data", *sorted(path for path in (root / "videos").glob("*") if path.is_dir())]
    found = []
    for parent in parents:
        for path in parent.glob("chunk-*"):
            match = _CHUNK_DIR.fullmatch(path.name)
            if match and path.is_dir():
                found.append((path, int(match.group(1))))
    return found


def next_chunk_index(root: str | Path) -> int:
    """A chunk index above every chunk present under `root` (published or left by a cut publish)."""
    return max((index for _, index in _chunk_dirs(Path(root))), default=-1) + 1


def _referenced_chunks(root: Path) -> set[tuple[str, int]]:
    """(directory under root, chunk index) of every chunk the published meta/ refers to."""
    referenced = set()
    for path in sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet")):
        table = pq.read_table(path)
        for name in table.column_names:
            if name == "data/chunk_index":
                referenced |= {("data", int(i)) for i in table.column(name).to_pylist()}
            elif name.startswith("videos/") and name.endswith("/chunk_index"):
                directory = name.removesuffix("/chunk_index")
                referenced |= {(directory, int(i)) for i in table.column(name).drop_null().to_pylist()}
    return referenced


def _swap_meta(build: Path, root: Path) -> None:
    if not (root / "meta").exists():
        os.rename(build / "meta", root / "meta")
        return
    try:
        exchange_directories(build / "meta", root / "meta")
    except OSError as error:
        if error.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        os.rename(root / "meta", _aside(build))
        os.rename(build / "meta", root / "meta")
        shutil.rmtree(_aside(build))


def publish(build: Path, root: Path) -> None:
    """Make the dataset finished under `build` the one at `root` (see the module docstring)."""
    for path, _ in _chunk_dirs(build):
        target = root / path.relative_to(build)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)  # a fresh chunk index: nothing is there yet
    _swap_meta(build, root)
    shutil.rmtree(build)  # holds the previous meta/ now
    referenced = _referenced_chunks(root)
    for path, index in _chunk_dirs(root):
        if (str(path.parent.relative_to(root)), index) not in referenced:
            shutil.rmtree(path)
    for path in (root / "videos").glob("*"):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
