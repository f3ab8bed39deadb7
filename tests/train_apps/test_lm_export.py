"""The exported HF directory: transformers loads it and computes the same logits as our torch model."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from helpers.tolerances import assert_same_top_k, decoder_tolerance

from train_apps.lm.export import export_hf
from train_apps.lm.model import LlamaConfig, LlamaForCausalLM
from train_apps.lm.tokenizer import BOS_TOKEN, EOS_TOKEN, train_tokenizer

DOCS = [
    "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nprint(os.path.join('a', 'b'), sys.argv)\n",
] * 20


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(DOCS, vocab_size=320).save(str(path))
    return str(path)


@pytest.mark.parametrize("num_key_value_heads", [4, 2])
def test_transformers_loads_export_with_matching_logits(tmp_path, tokenizer_path, num_key_value_heads):
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=num_key_value_heads,
                         max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    export_hf(model.state_dict(), config, tokenizer_path, str(tmp_path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(tmp_path))

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), torch_dtype=torch.float32).eval()
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    input_ids = torch.randint(0, 320, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(input_ids)
        theirs = hf_model(input_ids).logits
    # Two fp32 implementations of the same 2-layer decoder: sqrt(roundings) fp32 steps at the largest
    # logit, the widest accumulation being the MLP's 160 (helpers.tolerances); and the same greedy tokens.
    widest = max(config.hidden_size, config.intermediate_size, input_ids.shape[1])
    tol = decoder_tolerance(torch.float32, theirs, num_layers=config.num_hidden_layers, max_reduction_length=widest)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tol)
    assert_same_top_k(ours, theirs, k=1, tolerance=tol)


def test_tokenizer_round_trips_and_has_chat_template(tmp_path, tokenizer_path):
    config = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    export_hf(LlamaForCausalLM(config).state_dict(), config, tokenizer_path, str(tmp_path))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "def add(a, b):\n    return a + b"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.eos_token == EOS_TOKEN
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|bos|><|user|>\nhi<|eos|>\n<|assistant|>\n"
    chat_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert chat_ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in chat_ids
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert hf_config["architectures"] == ["LlamaForCausalLM"] and hf_config["model_type"] == "llama"
    assert hf_config["eos_token_id"] == tokenizer.eos_token_id


def test_greedy_generation_matches_transformers(tmp_path, tokenizer_path):
    config = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(3)
    model = LlamaForCausalLM(config).eval()
    export_hf(model.state_dict(), config, tokenizer_path, str(tmp_path))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    prompt = [1, 40, 41, 42]
    ours = model.generate_greedy(prompt, max_new_tokens=12)
    theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                               min_new_tokens=12)[0, len(prompt):].tolist()
    assert ours == theirs


def test_model_config_errors_name_the_field():
    with pytest.raises(ValueError, match="model.hidden_size"):
        LlamaConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="model.num_attention_heads"):
        LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        LlamaForCausalLM(LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                                     max_position_embeddings=8))(torch.zeros(1, 9, dtype=torch.long))
