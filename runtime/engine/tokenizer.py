"""Tokenizer from tokenizer.json (the `tokenizers` library) with the chat template of
tokenizer_config.json (rendered by runtime/engine/chat_template.py), and incremental detokenization for
streaming."""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer as HFTokenizer

from runtime.engine.chat_template import render_chat_template

# The named special tokens transformers hands every chat template (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


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
        # tokenizer_config.json's special tokens as strings, by name: what chat templates see as variables.
        self.special_tokens: dict[str, str] = {}
        for name in SPECIAL_TOKEN_NAMES:
            content = _token_content(config.get(name))
            if content is not None:
                self.special_tokens[name] = str(content)
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.pad_token = self.special_tokens.get("pad_token")
        self.chat_template = self._find_chat_template(model_dir, config)
        self.eos_token_ids: set[int] = set()
        for source in (hf_config or {}, self._generation_config(model_dir)):
            eos = source.get("eos_token_id")
            if eos is not None:
                self.eos_token_ids.update([eos] if isinstance(eos, int) else eos)
        if self.eos_token is not None and self._tok.token_to_id(self.eos_token) is not None:
            self.eos_token_ids.add(self._tok.token_to_id(self.eos_token))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

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
        """Token ids of `text`. Raises ValueError naming the first lone surrogate (valid JSON, not valid text).

        `encode_batch` because its Rust side releases the GIL (`encode` holds it: a 1.5 MB prompt stopped every
        other thread of the process for ~4 s here), so a replica can tokenize on a worker thread while its event
        loop and engine thread keep streaming."""
        check_encodable(text)
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def to_json(self) -> str:
        """tokenizer.json's content without padding or truncation (what llguidance builds its token table from)."""
        spec = json.loads(self._tok.to_str())
        spec["padding"] = spec["truncation"] = None
        return json.dumps(spec)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, *,
                            tools: list[dict] | None = None, documents: list[dict] | None = None,
                            chat_template: str | None = None, chat_template_kwargs: dict | None = None,
                            **kwargs) -> str:
        """The prompt text for `messages` as transformers' apply_chat_template(tokenize=False) makes it.
        `chat_template` replaces the model's template (a server's --chat-template); `chat_template_kwargs` (the
        request's, passed whole so a reserved name gets ChatTemplateError, a 400) and `kwargs` reach the template
        as variables. Raises ChatTemplateError when the template rejects the conversation."""
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise ValueError("tokenizer_config.json has no chat_template; send a plain prompt instead")
        return render_chat_template(template, messages, tools=tools, documents=documents,
                                    add_generation_prompt=add_generation_prompt, special_tokens=self.special_tokens,
                                    chat_template_kwargs=chat_template_kwargs, **kwargs)


def check_encodable(text: str) -> None:
    """Raise ValueError when `text` holds a lone UTF-16 surrogate (JSON's "\\ud800" decodes to one), which no
    tokenizer can encode."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text has a lone surrogate {text[exc.start]!r} at character {exc.start}: surrogates "
                         "must come in pairs (send valid UTF-8)") from None


def detokenize_incrementally(tokenizer: Tokenizer, token_ids: list[int], prefix_offset: int, read_offset: int,
                             skip_special_tokens: bool) -> tuple[str, int, int]:
    """The text the newest tokens add, as in vLLM: decode a short window before and after them and
    emit only the difference, holding back while the tail is an incomplete UTF-8 sequence."""
    prefix_text = tokenizer.decode(token_ids[prefix_offset:read_offset], skip_special_tokens)
    new_text = tokenizer.decode(token_ids[prefix_offset:], skip_special_tokens)
    if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
        return new_text[len(prefix_text):], read_offset, len(token_ids)
    return "", prefix_offset, read_offset
