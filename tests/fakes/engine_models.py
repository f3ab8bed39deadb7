"""Tiny random-weight HF checkpoints for engine and serve tests (re-exported from runtime.engine.testing)."""

from runtime.engine.testing import CHAT_TEMPLATE, FAMILIES, build_tiny_model, train_tokenizer

__all__ = ["CHAT_TEMPLATE", "FAMILIES", "build_tiny_model", "train_tokenizer"]
