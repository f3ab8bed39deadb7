"""What lm_pretrain exports, the engine serves: runtime.engine.LLM decodes it as our model does."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from runtime import engine
from train_apps.lm.export import export_hf
from train_apps.lm.model import LlamaConfig, LlamaForCausalLM
from train_apps.lm.tokenizer import train_tokenizer

DOCS = ["def add(a, b):\n    return a + b\n", "class Point:\n    x = 1\n", "import os\nprint(os.sep)\n"] * 20


def test_engine_greedy_matches_the_trained_model(tmp_path):
    tokenizer_path = tmp_path / "tokenizer.json"
    train_tokenizer(DOCS, vocab_size=300).save(str(tokenizer_path))
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    output = tmp_path / "hf"
    export_hf(model.state_dict(), config, str(tokenizer_path), str(output))

    llm = engine.LLM(str(output), dtype="float32")
    prompts = ["def add(", "import "]
    results = llm.generate(prompts, engine.SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    for prompt, result in zip(prompts, results):
        expected = model.generate_greedy(tokenizer.encode(prompt).ids, max_new_tokens=12)
        assert list(result.outputs[0].token_ids) == expected, prompt
