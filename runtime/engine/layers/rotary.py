"""Rotary position embedding (HF "rotate half" layout) incl. Llama 3 and linear rope scaling."""

from __future__ import annotations

import math
import warnings

import torch


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
        factor = float(scaling["factor"])
        low_freq_factor = float(scaling["low_freq_factor"])
        high_freq_factor = float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_freq_wavelen = old_len / low_freq_factor
        high_freq_wavelen = old_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(f"config.json rope_scaling.rope_type {rope_type!r} is not supported "
                     "(supported: default, linear, llama3)")


class RotaryEmbedding:
    """Precomputed cos and signed sin tables; `apply` is x*cos + roll(x, d/2)*sin_signed."""

    def __init__(self, head_dim: int, max_position: int, theta: float, scaling: dict | None,
                 dtype: torch.dtype, device: torch.device):
        if scaling and scaling.get("rope_type", scaling.get("type")) == "dynamic":
            warnings.warn("dynamic rope scaling is ignored; positions use the base frequencies", stacklevel=2)
            scaling = None
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float64), inv_freq)
        half = head_dim // 2
        cos = freqs.cos().float()
        sin = freqs.sin().float()
        self.cos = torch.cat([cos, cos], dim=-1).to(dtype=dtype, device=device)
        self.sin_signed = torch.cat([-sin, sin], dim=-1).to(dtype=dtype, device=device)
        self.half = half
        # roll(x, half) as a matrix: x @ roll_matrix == x.roll(half, dims=-1)
        index = torch.arange(head_dim, device=device)
        self.roll_matrix = torch.zeros(head_dim, head_dim, dtype=dtype, device=device)
        self.roll_matrix[(index - half) % head_dim, index] = 1

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for each token, shaped [T, 1, head_dim] to broadcast over heads."""
        return self.cos[positions].unsqueeze(1), self.sin_signed[positions].unsqueeze(1)

    def matrix(self, position: int) -> torch.Tensor:
        """The rotation at one position as a [head_dim, head_dim] matrix R: `x @ R == apply(x, ...)`
        (each output sums two products plus exact zeros). One mm per layer instead of three ops
        (one a composite roll) is what the batch-1 decode step wants."""
        return torch.diag(self.cos[position]).addcmul_(self.roll_matrix, self.sin_signed[position])

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x * cos, x.roll(self.half, dims=-1), sin_signed)
