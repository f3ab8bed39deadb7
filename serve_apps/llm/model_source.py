"""A model given as a directory or as a Hugging Face id (`org/name[@revision]`), found offline in the local cache.

Nothing is downloaded: an id resolves to its snapshot in the cache `huggingface-cli download` fills
(`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache` by default), laid out as
huggingface_hub does: `models--org--name/refs/<revision>` holds a commit hash, `.../snapshots/<hash>/` is the model.
"""

from __future__ import annotations

import os
import re

# Hub repo names: letters, digits, '-', '_', '.'; the revision is a branch, tag or commit ('refs/pr/1' has '/').
HF_MODEL_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w.-]+(?:/[\w.-]+)*))?")
COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
DEFAULT_REVISION = "main"


def hf_hub_cache() -> str:
    """The cache directory huggingface_hub uses, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "huggingface", "hub")


def hf_model_id(value: str) -> str | None:
    """`org/name` when value names a Hugging Face model rather than an existing directory, else None."""
    match = HF_MODEL_ID.fullmatch(value)
    if match is None or os.path.isdir(value):
        return None
    if ".." in (match["revision"] or "").split("/"):
        return None
    return match["repo"]


def cached_model_id(path: str) -> str | None:
    """`org/name` when path is a snapshot in a Hugging Face cache (`.../models--org--name/snapshots/<hash>`)."""
    snapshots, _ = os.path.split(os.path.normpath(path))
    repo_dir, parent = os.path.split(snapshots)
    name = os.path.basename(repo_dir)
    if parent != "snapshots" or not name.startswith("models--") or name.count("--") != 2:
        return None
    return name.removeprefix("models--").replace("--", "/")


def resolve_model_source(value: str) -> str:
    """The model directory value names: an existing directory as given (`~` expanded), or the cached snapshot of
    a Hugging Face id. Raises ValueError saying what is missing and how to get it."""
    path = os.path.expanduser(value)
    if os.path.isdir(path):
        return path
    repo = hf_model_id(value)
    if repo is None:
        raise ValueError(f"model {value!r}: no such directory (give a model directory or a Hugging Face id org/name)")
    revision = HF_MODEL_ID.fullmatch(value)["revision"] or DEFAULT_REVISION
    cache = hf_hub_cache()
    repo_dir = os.path.join(cache, "models--" + repo.replace("/", "--"))
    how = (f"download it on a machine with internet (`huggingface-cli download {repo}`) and copy that cache here, "
           "or set HF_HOME / HF_HUB_CACHE to the cache that holds it; nothing is downloaded at serve time")
    if not os.path.isdir(repo_dir):
        raise ValueError(f"model {value!r} is not a directory, and Hugging Face model {repo!r} is not in the local "
                         f"cache (looked for {repo_dir}): {how}")
    snapshot = _snapshot(repo_dir, revision)
    if snapshot is None:
        refs_dir = os.path.join(repo_dir, "refs")
        cached = sorted(os.listdir(refs_dir)) if os.path.isdir(refs_dir) else []
        raise ValueError(f"model {value!r}: revision {revision!r} is not in the local cache {repo_dir} "
                         f"(cached refs: {cached or 'none'}): {how}")
    if not os.path.isfile(os.path.join(snapshot, "config.json")):
        raise ValueError(f"model {value!r}: cached snapshot {snapshot} has no config.json (an incomplete download?): "
                         f"{how}")
    return snapshot


def _snapshot(repo_dir: str, revision: str) -> str | None:
    """The snapshot directory of revision: a commit hash names it directly, a branch or tag through refs/."""
    if COMMIT_HASH.fullmatch(revision):
        commit = revision
    else:
        ref = os.path.join(repo_dir, "refs", revision)
        if not os.path.isfile(ref):
            return None
        with open(ref) as file:
            commit = file.read().strip()
    snapshot = os.path.join(repo_dir, "snapshots", commit)
    return snapshot if os.path.isdir(snapshot) else None
