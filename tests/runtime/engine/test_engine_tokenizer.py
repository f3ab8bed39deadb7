"""Tokenizer: chat templates (inline, list form, chat_template.jinja), EOS ids from every source."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from runtime.engine.chat_template import ChatTemplateError
from runtime.engine.tokenizer import Tokenizer


@pytest.fixture
def tokenizer_dir(llama_dir, tmp_path) -> str:
    path = tmp_path / "tok"
    path.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(llama_dir, name), path / name)
    return str(path)


def rewrite_config(path: str, **changes) -> None:
    config_path = os.path.join(path, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config.update(changes)
    config = {k: v for k, v in config.items() if v is not None}
    with open(config_path, "w") as f:
        json.dump(config, f)


def test_encode_adds_bos_and_decode_roundtrips(tokenizer_dir):
    tokenizer = Tokenizer(tokenizer_dir)
    ids = tokenizer.encode("héllo 世界")
    assert ids[0] == tokenizer.token_to_id("<s>")
    assert tokenizer.encode("héllo 世界", add_special_tokens=False) == ids[1:]
    assert tokenizer.decode(ids) == "héllo 世界"


def test_list_form_and_jinja_file_templates(tokenizer_dir):
    rewrite_config(tokenizer_dir, chat_template=[{"name": "tool_use", "template": "T"},
                                                 {"name": "default", "template": "{{ messages[0]['content'] }}!"}])
    assert Tokenizer(tokenizer_dir).apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"
    rewrite_config(tokenizer_dir, chat_template=None)
    with open(os.path.join(tokenizer_dir, "chat_template.jinja"), "w") as f:
        f.write("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] | tojson }}{% endfor %}")
    text = Tokenizer(tokenizer_dir).apply_chat_template([{"role": "user", "content": "a\"b"}])
    assert text == '[user]"a\\"b"'


def test_template_errors_and_missing_template(tokenizer_dir):
    rewrite_config(tokenizer_dir, chat_template="{{ raise_exception('no system role') }}")
    with pytest.raises(ChatTemplateError, match="no system role"):
        Tokenizer(tokenizer_dir).apply_chat_template([{"role": "system", "content": "x"}])
    rewrite_config(tokenizer_dir, chat_template=None)
    with pytest.raises(ValueError, match="chat_template"):
        Tokenizer(tokenizer_dir).apply_chat_template([{"role": "user", "content": "x"}])


def test_eos_ids_from_config_generation_config_and_token(tokenizer_dir):
    with open(os.path.join(tokenizer_dir, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [5, 6]}, f)
    tokenizer = Tokenizer(tokenizer_dir, hf_config={"eos_token_id": 7})
    assert tokenizer.eos_token_ids == {2, 5, 6, 7}  # 2 is "</s>" from tokenizer_config.json
