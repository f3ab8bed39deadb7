"""Qwen2: bias on q/k/v projections, often tied embeddings."""

from runtime.engine.models.decoder import DecoderArgs, DecoderModel
from runtime.engine.models.registry import register_model


@register_model("Qwen2ForCausalLM")
class Qwen2ForCausalLM(DecoderModel):
    @staticmethod
    def args_from_config(cfg: dict) -> DecoderArgs:
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window") else None
        return DecoderArgs.from_hf_config(cfg, qkv_bias=True, sliding_window=window)
