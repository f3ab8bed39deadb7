"""KVPackage: what a prefill-role engine hands a decode-role engine for one request.

Numpy arrays so that Ray's object store holds them zero-copy; bf16 K/V travel as their raw 16-bit
patterns (numpy has no bfloat16) and are reinterpreted on arrival.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from runtime.engine.sampling_params import SamplingParams

_NUMPY_VIEW = {torch.bfloat16: torch.int16}  # dtypes numpy lacks: shipped as same-width integers


@dataclass(kw_only=True, slots=True)
class KVPackage:
    request_id: str
    prompt_token_ids: list[int]
    first_token_id: int
    params: SamplingParams
    k: np.ndarray  # [num_layers, num_prompt_tokens, num_kv_heads, head_dim]
    v: np.ndarray
    dtype: str  # torch dtype name of k/v, e.g. "float32", "bfloat16"
    model_fingerprint: str
    rng_state: np.ndarray | None = None  # the seeded request's generator state after the first token
    first_token_logprobs: dict[int, float] | None = None
    prompt: str | None = None

    @property
    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes + (self.rng_state.nbytes if self.rng_state is not None else 0))

    @property
    def num_tokens(self) -> int:
        return self.k.shape[1]

    @staticmethod
    def to_numpy(tensor: torch.Tensor) -> np.ndarray:
        tensor = tensor.detach().to("cpu").contiguous()
        view = _NUMPY_VIEW.get(tensor.dtype)
        return (tensor.view(view) if view is not None else tensor).numpy()

    def kv_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = getattr(torch, self.dtype)
        out = []
        for array in (self.k, self.v):
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            out.append(tensor.view(dtype) if dtype in _NUMPY_VIEW else tensor.to(dtype))
        return out[0], out[1]
