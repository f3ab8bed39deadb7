"""Loading fails early with errors that name the file and the tensor; only safetensors are read."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

from runtime.engine import LLMEngine


@pytest.fixture
def model_copy(llama_dir, tmp_path) -> str:
    path = tmp_path / "model"
    shutil.copytree(llama_dir, path)
    return str(path)


def test_unknown_architecture_names_config(model_copy):
    config_path = os.path.join(model_copy, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["architectures"] = ["GPT2LMHeadModel"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"config.json.*GPT2LMHeadModel.*LlamaForCausalLM"):
        LLMEngine(model_copy)


def test_mismatched_shape_names_file_and_tensor(model_copy):
    path = os.path.join(model_copy, "model.safetensors")
    tensors = load_file(path)
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"model.safetensors: tensor '{name}' has shape"):
        LLMEngine(model_copy)


def test_missing_tensor_is_named(model_copy):
    path = os.path.join(model_copy, "model.safetensors")
    tensors = load_file(path)
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.layers.0.self_attn.k_proj.weight"):
        LLMEngine(model_copy)


def test_missing_shard_named_by_index(tiny_model_factory, tmp_path):
    sharded = str(tmp_path / "sharded")
    shutil.copytree(tiny_model_factory("llama", max_shard_size="100KB"), sharded)
    with open(os.path.join(sharded, "model.safetensors.index.json")) as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[-1]
    os.remove(os.path.join(sharded, shard))
    with pytest.raises(FileNotFoundError, match=shard):
        LLMEngine(sharded)


def test_pickle_checkpoints_are_not_loaded(model_copy):
    os.rename(os.path.join(model_copy, "model.safetensors"), os.path.join(model_copy, "pytorch_model.bin"))
    with pytest.raises(FileNotFoundError, match="pickle"):
        LLMEngine(model_copy)


def test_missing_config_and_tokenizer_are_named(model_copy):
    os.remove(os.path.join(model_copy, "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        LLMEngine(model_copy)
    os.remove(os.path.join(model_copy, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        LLMEngine(model_copy)


@pytest.mark.parametrize("field,value", [("role", "mixed"), ("dtype", "int4"), ("quantization", "awq"),
                                         ("kv_cache_dtype", "fp4"), ("block_size", 0), ("max_num_seqs", 0),
                                         ("max_num_batched_tokens", 1)])
def test_config_errors_name_the_field(llama_dir, field, value):
    with pytest.raises(ValueError, match=field):
        LLMEngine(llama_dir, **{field: value})
