"""Architecture registry: config.json's `architectures` -> model class. A family registers itself."""

from __future__ import annotations

from collections.abc import Callable

_MODELS: dict[str, type] = {}


def register_model(*architectures: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        for name in architectures:
            _MODELS[name] = cls
        return cls
    return wrap


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def resolve_model_class(hf_config: dict, config_path: str) -> type:
    architectures = hf_config.get("architectures") or []
    for name in architectures:
        if name in _MODELS:
            return _MODELS[name]
    raise ValueError(
        f"{config_path}: architectures {architectures} not supported; "
        f"supported: {', '.join(supported_architectures())}"
    )
