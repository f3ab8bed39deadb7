"""Llama (incl. Llama 3 rope scaling): the reference layout of DecoderModel."""

from runtime.engine.models.decoder import DecoderArgs, DecoderModel
from runtime.engine.models.registry import register_model


@register_model("LlamaForCausalLM")
class LlamaForCausalLM(DecoderModel):
    @staticmethod
    def args_from_config(cfg: dict) -> DecoderArgs:
        if cfg.get("mlp_bias"):
            raise ValueError("config.json mlp_bias=true is not supported")
        return DecoderArgs.from_hf_config(cfg, qkv_bias=bool(cfg.get("attention_bias", False)))
