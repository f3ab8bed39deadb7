"""Byte-level BPE tokenizer trained with `tokenizers`, with BOS/EOS and chat special tokens.

`tokenizer.json` prepends <|bos|> on encode (a TemplateProcessing post-processor) and the chat
template in `tokenizer_config.json` renders `<|bos|><|user|>\\n...<|eos|>\\n<|assistant|>\\n`, so chat
prompts are tokenized with special tokens off (as transformers' apply_chat_template does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
CHAT_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *CHAT_ROLE_TOKENS]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|eos|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def train_tokenizer(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    """A ByteLevel BPE tokenizer (any byte string encodes; no unknown tokens) trained on documents."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
        ),
    ])
    return tokenizer


def tokenizer_config(model_max_length: int) -> dict:
    """`tokenizer_config.json` for transformers' PreTrainedTokenizerFast (and the engine's server)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": CHAT_ROLE_TOKENS,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def save_hf_tokenizer(tokenizer: Tokenizer, output_dir: str, model_max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into output_dir."""
    os.makedirs(output_dir, exist_ok=True)
    tokenizer.save(os.path.join(output_dir, "tokenizer.json"))
    with open(os.path.join(output_dir, "tokenizer_config.json"), "w") as handle:
        json.dump(tokenizer_config(model_max_length), handle, indent=2)
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN,
               "additional_special_tokens": CHAT_ROLE_TOKENS}
    with open(os.path.join(output_dir, "special_tokens_map.json"), "w") as handle:
        json.dump(special, handle, indent=2)
