"""Tiny random-weight Hugging Face checkpoints for tests and smoke runs (no downloads).

`build_tiny_model(dir, family="llama")` writes config.json, model.safetensors (or shards plus an
index), tokenizer.json (a byte-level BPE trained on the fly) and tokenizer_config.json with a chat
template. Needs `transformers` (a dev dependency) to build the reference model.
"""

from __future__ import annotations

import json
import os

FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3")
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Strata runs training, serving and robot data on one Ray cluster.",
    "Paged attention keeps the KV cache in fixed-size blocks.",
    "héllo wörld, naïve café, São Paulo, Zürich, 東京 and 世界, emoji 🙂🚀 and ñ.",
    "def add(a, b):\n    return a + b\n",
    "1 2 3 4 5 6 7 8 9 10 100 1000 3.14159",
]


def train_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    return tokenizer


def _config(family: str, **overrides):
    import transformers

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1)
    if family == "llama":
        cls, extra = transformers.LlamaConfig, {}
    elif family == "llama3":
        cls, extra = transformers.LlamaConfig, dict(rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
    elif family == "mistral":
        cls, extra = transformers.MistralConfig, dict(sliding_window=None)
    elif family == "qwen2":
        cls, extra = transformers.Qwen2Config, dict(tie_word_embeddings=True)
    elif family == "qwen3":
        cls, extra = transformers.Qwen3Config, dict(head_dim=32)
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return cls(**{**common, **extra, **overrides})


def build_tiny_model(path: str, family: str = "llama", *, seed: int = 0, max_shard_size: str | None = None,
                     dtype: str = "float32", **overrides) -> str:
    """Write a tiny random-weight model of `family` to `path` (config overrides as kwargs); returns path."""
    import torch
    import transformers

    os.makedirs(path, exist_ok=True)
    tokenizer = train_tokenizer()
    overrides.setdefault("vocab_size", tokenizer.get_vocab_size())
    config = _config(family, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                   "model_max_length": config.max_position_embeddings, "chat_template": CHAT_TEMPLATE,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    return path
