"""Qwen3: per-head RMSNorm on q and k before rotary, no q/k/v bias, explicit head_dim."""

from runtime.engine.models.decoder import DecoderArgs, DecoderModel
from runtime.engine.models.registry import register_model


@register_model("Qwen3ForCausalLM")
class Qwen3ForCausalLM(DecoderModel):
    @staticmethod
    def args_from_config(cfg: dict) -> DecoderArgs:
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window") else None
        return DecoderArgs.from_hf_config(cfg, qkv_bias=bool(cfg.get("attention_bias", False)), qk_norm=True,
                                          sliding_window=window)
