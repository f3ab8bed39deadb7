"""The decoder-only transformer every supported family shares (Llama layout).

Families differ only in config fields (qkv bias, q/k norm, tied embeddings, rope scaling), which a
family file maps into DecoderArgs. Weights are fused at load: q/k/v into one `qkv` matrix and
gate/up into one `gate_up`, so a layer runs four matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from runtime.engine.layers.attention import AttentionMetadata, DecodeGroup, PagedKVCache, paged_attention
from runtime.engine.layers.linear import DenseLinear, linear_add, pack_linear, quantize_linear
from runtime.engine.layers.rotary import RotaryEmbedding


@dataclass(kw_only=True, slots=True)
class DecoderArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None

    @classmethod
    def from_hf_config(cls, cfg: dict, **overrides) -> DecoderArgs:
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json hidden_act {cfg.get('hidden_act')!r} is not supported (silu only)")
        num_heads = cfg["num_attention_heads"]
        rope = cfg.get("rope_parameters") or {}  # transformers >= 5 nests theta and scaling here
        scaling = cfg.get("rope_scaling") or {k: v for k, v in rope.items() if k != "rope_theta"} or None
        if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
            scaling = None
        args = dict(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // num_heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            rope_scaling=scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
        args.update(overrides)
        return cls(**args)


class DecoderLayer:
    __slots__ = ("input_norm", "post_norm", "qkv", "o", "gate_up", "down", "q_norm", "k_norm")


class DecoderModel:
    """Weights plus a forward over a flattened batch of new tokens (no nn.Module: no hook overhead)."""

    def __init__(self, args: DecoderArgs, dtype: torch.dtype, device: torch.device, max_position: int):
        self.args = args
        self.dtype = dtype
        self.device = device
        a = args
        self.q_size = a.num_heads * a.head_dim
        self.kv_size = a.num_kv_heads * a.head_dim

        def empty(*shape: int) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=device)

        self.embed = empty(a.vocab_size, a.hidden_size)
        self.layers: list[DecoderLayer] = []
        for _ in range(a.num_layers):
            layer = DecoderLayer()
            layer.input_norm = empty(a.hidden_size)
            layer.post_norm = empty(a.hidden_size)
            qkv_rows = self.q_size + 2 * self.kv_size
            layer.qkv = DenseLinear(empty(qkv_rows, a.hidden_size), empty(qkv_rows) if a.qkv_bias else None)
            layer.o = DenseLinear(empty(a.hidden_size, self.q_size))
            layer.gate_up = DenseLinear(empty(2 * a.intermediate_size, a.hidden_size))
            layer.down = DenseLinear(empty(a.hidden_size, a.intermediate_size))
            layer.q_norm = empty(a.head_dim) if a.qk_norm else None
            layer.k_norm = empty(a.head_dim) if a.qk_norm else None
            self.layers.append(layer)
        self.norm = empty(a.hidden_size)
        self.lm_head = DenseLinear(self.embed if a.tie_word_embeddings else empty(a.vocab_size, a.hidden_size))
        self.rotary = RotaryEmbedding(a.head_dim, max_position, a.rope_theta, a.rope_scaling, dtype, device)
        self.scale = a.head_dim ** -0.5
        self.single_decode_fast_path = True  # tests compare it against the general path

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """HF tensor name -> the (view of the) tensor it loads into."""
        q, kv, inter = self.q_size, self.kv_size, self.args.intermediate_size
        out = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.norm}
        if not self.args.tie_word_embeddings:
            out["lm_head.weight"] = self.lm_head.weight
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            w = layer.qkv.weight
            out[p + "self_attn.q_proj.weight"] = w[:q]
            out[p + "self_attn.k_proj.weight"] = w[q:q + kv]
            out[p + "self_attn.v_proj.weight"] = w[q + kv:]
            if layer.qkv.bias is not None:
                b = layer.qkv.bias
                out[p + "self_attn.q_proj.bias"] = b[:q]
                out[p + "self_attn.k_proj.bias"] = b[q:q + kv]
                out[p + "self_attn.v_proj.bias"] = b[q + kv:]
            out[p + "self_attn.o_proj.weight"] = layer.o.weight
            out[p + "mlp.gate_proj.weight"] = layer.gate_up.weight[:inter]
            out[p + "mlp.up_proj.weight"] = layer.gate_up.weight[inter:]
            out[p + "mlp.down_proj.weight"] = layer.down.weight
            out[p + "input_layernorm.weight"] = layer.input_norm
            out[p + "post_attention_layernorm.weight"] = layer.post_norm
            if layer.q_norm is not None:
                out[p + "self_attn.q_norm.weight"] = layer.q_norm
                out[p + "self_attn.k_norm.weight"] = layer.k_norm
        return out

    def linear_layers(self) -> list[tuple[DecoderLayer | DecoderModel, str]]:
        pairs: list[tuple[DecoderLayer | DecoderModel, str]] = []
        for layer in self.layers:
            pairs += [(layer, "qkv"), (layer, "o"), (layer, "gate_up"), (layer, "down")]
        return pairs + [(self, "lm_head")]

    def quantize(self, method: str | None) -> None:
        """Quantize every linear weight (the lm_head too; the embedding table stays dense)."""
        for owner, name in self.linear_layers():
            setattr(owner, name, quantize_linear(getattr(owner, name), method))

    def pack_weights(self) -> None:
        """Reorder dense CPU weights for oneDNN (see PackedLinear); call once all weights are loaded.
        A tied lm_head gets its own packed copy; the embedding table stays dense for lookups."""
        for owner, name in self.linear_layers():
            setattr(owner, name, pack_linear(getattr(owner, name)))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                cache: PagedKVCache, logits_rows: torch.Tensor | None) -> torch.Tensor:
        a = self.args
        num_tokens = input_ids.shape[0]
        hidden_shape = (a.hidden_size,)
        eps = a.rms_norm_eps
        num_qk_heads = a.num_heads + a.num_kv_heads
        inter = a.intermediate_size
        rotary = self.rotary
        group = meta.decode_groups[0] if meta.decode_groups else None
        if num_tokens == 1 and group is not None and group.end == 1 and not cache.int8 and self.single_decode_fast_path:
            return self._forward_single_decode(input_ids, group, meta.slot_mapping, cache)
        h = F.embedding(input_ids, self.embed)
        cos, sin = rotary.lookup(positions)
        for index, layer in enumerate(self.layers):
            x = F.rms_norm(h, hidden_shape, layer.input_norm, eps)
            qkv = layer.qkv(x)
            qk = qkv[:, :self.q_size + self.kv_size].view(num_tokens, num_qk_heads, a.head_dim)
            v = qkv[:, self.q_size + self.kv_size:].view(num_tokens, a.num_kv_heads, a.head_dim)
            if layer.q_norm is not None:
                qk = torch.cat([F.rms_norm(qk[:, :a.num_heads], (a.head_dim,), layer.q_norm, eps),
                                F.rms_norm(qk[:, a.num_heads:], (a.head_dim,), layer.k_norm, eps)], dim=1)
            qk = rotary.apply(qk, cos, sin)
            attn = paged_attention(qk[:, :a.num_heads], qk[:, a.num_heads:], v, cache, index, meta, self.scale)
            h = linear_add(layer.o, attn, h)
            x = F.rms_norm(h, hidden_shape, layer.post_norm, eps)
            gate_up = layer.gate_up(x)
            gate = F.silu(gate_up[:, :inter])
            h = linear_add(layer.down, gate.mul_(gate_up[:, inter:]), h)
        if logits_rows is not None:
            h = h.index_select(0, logits_rows)
        h = F.rms_norm(h, hidden_shape, self.norm, eps)
        return self.lm_head(h).float()

    def _forward_single_decode(self, input_ids: torch.Tensor, group: DecodeGroup, slot_mapping: torch.Tensor,
                               cache: PagedKVCache) -> torch.Tensor:
        """One sequence, one new token (the batch-1 decode step), with about half the ops per layer of
        `forward`: K/V of all layers gathered once per step (the new token is written into that copy,
        and into the cache once at the end), rotary as one mm, attention as two bmm on [kv_heads, ...]
        views. Same math as `forward`."""
        a = self.args
        hidden_shape = (a.hidden_size,)
        eps = a.rms_norm_eps
        num_heads, num_kv_heads, head_dim = a.num_heads, a.num_kv_heads, a.head_dim
        groups = num_heads // num_kv_heads
        qk_size = self.q_size + self.kv_size
        inter = a.intermediate_size
        pos = group.kv_len - 1
        kv = cache.gather_all_layers(group.block_tables[0], group.kv_len)
        new_kv = kv[:, :, :, pos]  # [layers, 2, kv_heads, head_dim]: the slot of this token
        kv = kv[:, :, :, :group.kv_len]
        rotation = self.rotary.matrix(pos)
        h = F.embedding(input_ids, self.embed)
        for index, layer in enumerate(self.layers):
            x = F.rms_norm(h, hidden_shape, layer.input_norm, eps)
            qkv = layer.qkv(x)
            qk = qkv[0, :qk_size].view(num_heads + num_kv_heads, head_dim)
            if layer.q_norm is not None:
                qk = torch.cat([F.rms_norm(qk[:num_heads], (head_dim,), layer.q_norm, eps),
                                F.rms_norm(qk[num_heads:], (head_dim,), layer.k_norm, eps)])
            qk = torch.mm(qk, rotation)
            new_kv[index, 0].copy_(qk[num_heads:])
            new_kv[index, 1].copy_(qkv[0, qk_size:].view(num_kv_heads, head_dim))
            k, v = kv[index]
            scores = torch.bmm(qk[:num_heads].view(num_kv_heads, groups, head_dim), k.transpose(1, 2))
            if scores.dtype == torch.float32:
                probs = torch.softmax(scores.mul_(self.scale), dim=-1)
            else:  # bf16/fp16: softmax in fp32 as in `forward`
                probs = torch.softmax(scores.mul_(self.scale), dim=-1, dtype=torch.float32).to(v.dtype)
            attn = torch.bmm(probs, v).view(1, self.q_size)
            h = linear_add(layer.o, attn, h)
            x = F.rms_norm(h, hidden_shape, layer.post_norm, eps)
            gate_up = layer.gate_up(x)
            gate = F.silu(gate_up[:, :inter])
            h = linear_add(layer.down, gate.mul_(gate_up[:, inter:]), h)
        cache.write_slot_all_layers(slot_mapping, new_kv)
        h = F.rms_norm(h, hidden_shape, self.norm, eps)
        return self.lm_head(h).float()
