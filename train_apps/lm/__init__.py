"""Pieces of `train_apps.lm_pretrain`: model, tokenizer, corpus, config presets, train loop, HF export."""
