"""Sampling defaults from generation_config.json, named as SamplingParams names them (vLLM's `--generation-config`)."""

from __future__ import annotations

import json

import pytest

from serve_apps.llm.generation_defaults import generation_defaults

# Qwen3's generation_config.json, as published
QWEN3 = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
         "temperature": 0.6, "top_k": 20, "top_p": 0.95, "transformers_version": "4.51.0"}


def _write(folder, config) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "generation_config.json").write_text(text)
    return str(folder)


def test_auto_reads_the_sampling_keys_of_the_model_and_ignores_the_rest(tmp_path):
    model = _write(tmp_path / "model", QWEN3)
    assert generation_defaults(model) == {"temperature": 0.6, "top_k": 20, "top_p": 0.95}
    full = _write(tmp_path / "full", {"temperature": 0.7, "top_p": 0.8, "top_k": 40, "min_p": 0.05,
                                       "repetition_penalty": 1.1, "max_new_tokens": 256, "num_beams": 4})
    assert generation_defaults(full, "auto") == {"temperature": 0.7, "top_p": 0.8, "top_k": 40, "min_p": 0.05,
                                                 "repetition_penalty": 1.1, "max_tokens": 256}


def test_do_sample_false_is_ignored_as_vllm_ignores_it(tmp_path):
    model = _write(tmp_path / "model", {"do_sample": False, "temperature": 0.7, "top_p": None})
    assert generation_defaults(model) == {"temperature": 0.7}


def test_vllm_ignores_the_file_and_auto_without_one_gives_nothing(tmp_path):
    assert generation_defaults(_write(tmp_path / "model", QWEN3), "vllm") == {}
    (tmp_path / "bare").mkdir()
    assert generation_defaults(str(tmp_path / "bare")) == {}


def test_a_folder_setting_reads_that_folder_and_must_hold_the_file(tmp_path):
    model = _write(tmp_path / "model", QWEN3)
    other = _write(tmp_path / "other", {"temperature": 0.2})
    assert generation_defaults(model, other) == {"temperature": 0.2}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no generation_config.json in that folder .*'auto'.*'vllm'"):
        generation_defaults(model, str(tmp_path / "empty"))


def test_a_broken_file_is_named(tmp_path):
    broken = _write(tmp_path / "broken", "{temperature: 0.6")
    with pytest.raises(ValueError, match=r"broken/generation_config.json is not valid JSON"):
        generation_defaults(broken)
    wrong = _write(tmp_path / "wrong", {"top_k": 2.5})
    with pytest.raises(ValueError, match=r"wrong/generation_config.json: top_k must be an integer, got 2.5"):
        generation_defaults(wrong)
    with pytest.raises(ValueError, match="must hold a JSON object"):
        generation_defaults(_write(tmp_path / "list", "[1]"))


def test_the_defaults_are_sampling_params_fields(tmp_path):
    from runtime.engine import SamplingParams

    full = _write(tmp_path / "full", {"temperature": 0.7, "top_p": 0.8, "top_k": 40, "min_p": 0.05,
                                       "repetition_penalty": 1.1, "max_new_tokens": 256})
    params = SamplingParams(**generation_defaults(full))
    assert (params.max_tokens, params.top_k, params.repetition_penalty) == (256, 40, 1.1)
