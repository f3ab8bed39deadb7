"""Training apps on Ray Train: `lm_pretrain` (DeepSpeed Llama LM, HF export) and `policy_train`."""
