"""`--model` / `model_source` as a directory or a Hugging Face id resolved offline from a fake local cache."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from serve_apps.llm.config import LLMConfig, LLMServingArgs
from serve_apps.llm.model_source import cached_model_id, hf_hub_cache, hf_model_id, resolve_model_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _cache_model(cache, repo: str, refs: dict[str, str], config: bool = True) -> dict[str, str]:
    """A huggingface_hub cache entry: refs/<name> holds a commit, snapshots/<commit>/ the files."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshots = {}
    for ref, commit in refs.items():
        (repo_dir / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
        snapshot = repo_dir / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        if config:
            (snapshot / "config.json").write_text("{}")
        snapshots[ref] = str(snapshot)
    return snapshots


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_cache_location_follows_hf_hub_cache_then_hf_home_then_xdg(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hf_hub_cache() == str(tmp_path / "home" / ".cache" / "huggingface" / "hub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_hub_cache() == str(tmp_path / "xdg" / "huggingface" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_hub_cache() == str(tmp_path / "hf" / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hf_hub_cache() == str(tmp_path / "direct")


def test_an_id_resolves_to_its_main_snapshot_and_a_revision_to_its_ref(hub_cache):
    snapshots = _cache_model(hub_cache, "Qwen/Qwen3-0.6B", {"main": COMMIT, "v2": OTHER_COMMIT})
    assert resolve_model_source("Qwen/Qwen3-0.6B") == snapshots["main"]
    assert resolve_model_source("Qwen/Qwen3-0.6B@v2") == snapshots["v2"]
    assert resolve_model_source(f"Qwen/Qwen3-0.6B@{OTHER_COMMIT}") == snapshots["v2"]  # a commit names its snapshot


def test_hf_home_is_used_when_hf_hub_cache_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshots = _cache_model(tmp_path / "hf" / "hub", "org/name", {"main": COMMIT})
    assert resolve_model_source("org/name") == snapshots["main"]


def test_an_existing_directory_is_returned_as_given_even_when_shaped_like_an_id(hub_cache, tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("org/name") == "org/name"
    assert hf_model_id("org/name") is None
    assert resolve_model_source(str(tmp_path / "org")) == str(tmp_path / "org")


def test_an_id_missing_from_the_cache_says_where_it_looked_and_how_to_get_it(hub_cache):
    with pytest.raises(ValueError) as error:
        resolve_model_source("org/absent")
    message = str(error.value)
    assert str(hub_cache / "models--org--absent") in message
    assert "huggingface-cli download org/absent" in message and "HF_HOME" in message


def test_a_missing_revision_or_config_is_named(hub_cache):
    _cache_model(hub_cache, "org/name", {"main": COMMIT})
    with pytest.raises(ValueError, match=r"revision 'v9' is not in the local cache .*cached refs: \['main'\]"):
        resolve_model_source("org/name@v9")
    _cache_model(hub_cache, "org/partial", {"main": COMMIT}, config=False)
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_model_source("org/partial")


def test_a_path_that_does_not_exist_says_so(hub_cache, tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        resolve_model_source(str(tmp_path / "absent"))
    assert hf_model_id("org/name@../../etc") is None  # a revision never climbs out of the cache


def test_llm_config_resolves_an_id_and_serves_it_under_that_id(hub_cache):
    snapshots = _cache_model(hub_cache, "org/name", {"main": COMMIT, "v2": OTHER_COMMIT})
    config = LLMConfig(model_source="org/name@v2")
    assert (config.model_source, config.model_id) == (snapshots["v2"], "org/name")
    assert LLMConfig(model_source="org/name", model_id="mine").model_id == "mine"
    # replicas validate the dumped config again: the snapshot path and the id stay as they are
    again = LLMConfig.model_validate(config.model_dump())
    assert (again.model_source, again.model_id) == (snapshots["v2"], "org/name")
    assert LLMConfig(model_source=snapshots["main"]).model_id == "org/name"  # a snapshot path given directly


def test_a_yaml_config_gets_the_same_resolution_and_error(hub_cache, monkeypatch):
    snapshots = _cache_model(hub_cache, "org/name", {"main": COMMIT})
    monkeypatch.setenv("MODEL", "org/name")
    args = LLMServingArgs.model_validate({"llm_configs": [{"model_source": "$MODEL"}]})
    assert args.llm_configs[0].model_source == snapshots["main"]
    with pytest.raises(ValidationError, match=r"llm_configs.0.model_source\n.*huggingface-cli download org/other"):
        LLMServingArgs.model_validate({"llm_configs": [{"model_source": "org/other"}]})


def test_a_directory_path_is_left_for_the_replica_to_read(hub_cache):
    # the head of a multi-node cluster may not mount the model; the engine names a missing dir where it reads it
    config = LLMConfig(model_source="/models/not-on-this-node/")
    assert (config.model_source, config.model_id) == ("/models/not-on-this-node/", "not-on-this-node")
    assert os.path.isdir(config.model_source) is False
    assert cached_model_id("/models/not-on-this-node") is None
