"""Sampling defaults from a model's `generation_config.json`, as vLLM's `--generation-config` reads them.

The server applies them only to the fields a request leaves unset. Like vLLM (`ModelConfig.get_diff_sampling_param`)
this takes `temperature`, `top_p`, `top_k`, `min_p`, `repetition_penalty` and `max_new_tokens` (as `max_tokens`),
every value the file writes (transformers >= 5 no longer drops values equal to its own defaults), and ignores
every other key. That includes `do_sample`: a file with `do_sample: false` and `temperature: 0.7` samples at 0.7,
as vLLM does, where transformers' `generate` would decode greedily; a model meant to be greedy says
`temperature: 0`, or the server runs with `--generation-config vllm`.
"""

from __future__ import annotations

import json
import os
from typing import Any

GENERATION_CONFIG_FILE = "generation_config.json"
# generation_config.json key -> SamplingParams field
SAMPLING_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}
INTEGER_KEYS = frozenset({"top_k", "max_new_tokens"})


def generation_defaults(model_dir: str, setting: str = "auto") -> dict[str, Any]:
    """SamplingParams-named defaults: setting "auto" reads model_dir's file ({} when it has none), "vllm" ignores
    it ({}), any other value is a folder whose generation_config.json must exist."""
    if setting == "vllm":
        return {}
    folder = model_dir if setting == "auto" else os.path.expanduser(setting)
    path = os.path.join(folder, GENERATION_CONFIG_FILE)
    if not os.path.isfile(path):
        if setting == "auto":
            return {}
        raise ValueError(f"generation_config {setting!r}: no {GENERATION_CONFIG_FILE} in that folder ({path}); "
                         "give a folder that has one, 'auto' (the model's) or 'vllm' (none)")
    with open(path) as file:
        try:
            config = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
    defaults = {}
    for key, field in SAMPLING_KEYS.items():
        value = config.get(key)
        if value is None:
            continue
        numeric = int if key in INTEGER_KEYS else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            kind = "an integer" if key in INTEGER_KEYS else "a number"
            raise ValueError(f"{path}: {key} must be {kind}, got {value!r}")
        defaults[field] = value
    return defaults
