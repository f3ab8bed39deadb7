"""Tokenizer from tokenizer.json (the `tokenizers` library) with the chat template of
tokenizer_config.json rendered by jinja2, and incremental detokenization for streaming."""

from __future__ import annotations

import json
import os
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


class Tokenizer:
    def __init__(self, model_dir: str, hf_config: dict | None = None):
        path = os.path.join(model_dir, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: a model directory needs tokenizer.json")
        self._tok = HFTokenizer.from_file(path)
        config_path = os.path.join(model_dir, "tokenizer_config.json")
        config: dict = {}
        if os.path.isfile(config_path):
            with open(config_path) as f:
                config = json.load(f)
        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        self.pad_token = _token_content(config.get("pad_token"))
        self.chat_template = self._find_chat_template(model_dir, config)
        self.eos_token_ids: set[int] = set()
        for source in (hf_config or {}, self._generation_config(model_dir)):
            eos = source.get("eos_token_id")
            if eos is not None:
                self.eos_token_ids.update([eos] if isinstance(eos, int) else eos)
        if self.eos_token is not None and self._tok.token_to_id(self.eos_token) is not None:
            self.eos_token_ids.add(self._tok.token_to_id(self.eos_token))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._template = None

    @staticmethod
    def _find_chat_template(model_dir: str, config: dict) -> str | None:
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_path = os.path.join(model_dir, "chat_template.jinja")
        if template is None and os.path.isfile(jinja_path):
            with open(jinja_path) as f:
                template = f.read()
        return template

    @staticmethod
    def _generation_config(model_dir: str) -> dict:
        path = os.path.join(model_dir, "generation_config.json")
        if not os.path.isfile(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def to_json(self) -> str:
        """tokenizer.json's content without padding or truncation (what llguidance builds its token table from)."""
        spec = json.loads(self._tok.to_str())
        spec["padding"] = spec["truncation"] = None
        return json.dumps(spec)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        if self.chat_template is None:
            raise ValueError("tokenizer_config.json has no chat_template; send a plain prompt instead")
        if self._template is None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = lambda x, indent=None: json.dumps(x, indent=indent, ensure_ascii=False)
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._template = env.from_string(self.chat_template)
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)


def detokenize_incrementally(tokenizer: Tokenizer, token_ids: list[int], prefix_offset: int, read_offset: int,
                             skip_special_tokens: bool) -> tuple[str, int, int]:
    """The text the newest tokens add, as in vLLM: decode a short window before and after them and
    emit only the difference, holding back while the tail is an incomplete UTF-8 sequence."""
    prefix_text = tokenizer.decode(token_ids[prefix_offset:read_offset], skip_special_tokens)
    new_text = tokenizer.decode(token_ids[prefix_offset:], skip_special_tokens)
    if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
        return new_text[len(prefix_text):], read_offset, len(token_ids)
    return "", prefix_offset, read_offset
