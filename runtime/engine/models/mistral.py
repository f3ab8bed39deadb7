"""Mistral: the Llama layout plus an optional sliding window (max_model_len is capped to it)."""

from runtime.engine.models.decoder import DecoderArgs, DecoderModel
from runtime.engine.models.registry import register_model


@register_model("MistralForCausalLM")
class MistralForCausalLM(DecoderModel):
    @staticmethod
    def args_from_config(cfg: dict) -> DecoderArgs:
        return DecoderArgs.from_hf_config(cfg, sliding_window=cfg.get("sliding_window"))
