"""Engine test fixtures: tiny random-weight checkpoints, built once per session per family."""

from __future__ import annotations

import pytest
from fakes.engine_models import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """family -> model dir (built on first use, then shared by every test of the session)."""
    built: dict[tuple, str] = {}

    def get(family: str = "llama", **overrides) -> str:
        key = (family, tuple(sorted(overrides.items())))
        if key not in built:
            path = tmp_path_factory.mktemp(f"engine-{family}")
            built[key] = build_tiny_model(str(path), family, **overrides)
        return built[key]

    return get


@pytest.fixture(scope="session")
def llama_dir(tiny_model_factory) -> str:
    return tiny_model_factory("llama")
