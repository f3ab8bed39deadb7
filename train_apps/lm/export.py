"""Export a checkpoint's weights as a Hugging Face model directory that transformers and the engine load.

Writes `config.json` (LlamaForCausalLM), `generation_config.json`, `model.safetensors` (the state
dict as is: names already match HF Llama), `tokenizer.json`, `tokenizer_config.json` (with a chat
template) and `special_tokens_map.json`.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from train_apps.lm.model import LlamaConfig
from train_apps.lm.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, save_hf_tokenizer


def export_hf(weights: dict[str, torch.Tensor], model_config: LlamaConfig, tokenizer_path: str,
              output_dir: str, *, training_info: dict | None = None) -> str:
    """Write the HF directory; returns output_dir."""
    tokenizer = Tokenizer.from_file(tokenizer_path)
    if tokenizer.get_vocab_size() > model_config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens but model.vocab_size is {model_config.vocab_size}"
        )
    os.makedirs(output_dir, exist_ok=True)
    bos_id, eos_id, pad_id = (tokenizer.token_to_id(token) for token in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN))
    hf_config = model_config.to_hf_config(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    with open(os.path.join(output_dir, "config.json"), "w") as handle:
        json.dump(hf_config, handle, indent=2)
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, "do_sample": False}
    with open(os.path.join(output_dir, "generation_config.json"), "w") as handle:
        json.dump(generation, handle, indent=2)
    tensors = {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in weights.items()}
    save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
    save_hf_tokenizer(tokenizer, output_dir, model_max_length=model_config.max_position_embeddings)
    if training_info:
        with open(os.path.join(output_dir, "training_info.json"), "w") as handle:
            json.dump(training_info, handle, indent=2)
    return output_dir
