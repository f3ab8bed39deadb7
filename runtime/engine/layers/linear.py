"""Linear layers: dense, oneDNN-packed dense (CPU), int8 weight-only (per output channel), fp8 weight-only.

Plain callables rather than nn.Modules: a decode step calls ~100 of them and module hooks cost
microseconds each. Quantized and packed weights are made at load from any fp32/bf16 checkpoint.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F


class DenseLinear:
    __slots__ = ("weight", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = weight
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    @property
    def weight_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class PackedLinear:
    """A dense CPU linear whose weight oneDNN has reordered into its blocked layout at load.

    Why: `F.linear` on CPU goes to MKL, whose batch-1 gemv reads an [out, in] fp32 weight at about
    14 GB/s on one core here (AMD EPYC; it does not thread M=1 at all), while oneDNN's packed kernel
    uses every thread and reads ~30 GB/s; it is also 10-40% faster at M = 2..512 (measured per shape,
    see benchmarks/engine_throughput.py). Results match F.linear to float rounding.
    """

    __slots__ = ("weight", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    @property
    def weight_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


def linear_add(layer, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + layer(x); a packed layer adds inside its kernel (one op, not two). May reuse
    `residual`'s storage."""
    if type(layer) is PackedLinear:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")
    return residual.add_(layer(x))


def can_pack(weight: torch.Tensor) -> bool:
    """oneDNN packing applies to CPU fp32, and to bf16 where the CPU has native bf16 support."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return weight.dtype == torch.float32


def pack_linear(layer):
    """PackedLinear for a dense CPU layer that oneDNN can pack; any other layer unchanged."""
    if type(layer) is DenseLinear and can_pack(layer.weight):
        return PackedLinear(layer.weight, layer.bias)
    return layer


def quantize_int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: weight ~= q * scale[:, None]."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


INT8_DEQUANT_MIN_ROWS = 16  # from this many rows on, dequantize-to-bf16 + bf16 GEMM beats _weight_int8pack_mm
INT8_SCRATCH_ELEMENTS = 4 << 20  # weight rows are dequantized in chunks of at most this many elements (8 MB)
_scratch = threading.local()  # one transient bf16 buffer per thread, shared by every Int8Linear


def _int8_scratch(numel: int) -> torch.Tensor:
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < numel:
        buffer = _scratch.buffer = torch.empty(numel, dtype=torch.bfloat16)
    return buffer[:numel]


class Int8Linear:
    """Weight-only int8 per output channel. On CPU (in_features % 16 == 0) two kernels, picked per call
    by the number of rows M, both with bf16 activations and fp32 accumulation:
    - M < 16: torch's int8 weight-only kernel (`_weight_int8pack_mm`), which reads a quarter of the fp32
      weight bytes (batch-1 decode ~1.8x fp32), but whose cost grows linearly with M;
    - M >= 16 (batched decode, prefill): the int8 weight converted (exactly: |q| <= 127) into a reused
      bf16 scratch, a chunk of rows at a time so the chunk is still in cache when the oneDNN bf16 GEMM
      (AVX512-BF16) reads it, the per-channel scale applied to the fp32 output. At M = 64 this is ~2x
      both the int8 kernel and the packed fp32 GEMM here (see benchmarks/results/engine_mixed_kernels.txt).
    The weight stays int8 (-75% memory); the scratch is one buffer per thread of at most
    INT8_SCRATCH_ELEMENTS bf16 values. Elsewhere the weight is dequantized per call."""

    __slots__ = ("qweight", "scale", "bias", "compute_dtype", "use_int8_kernel", "_kernel_scale", "_chunk_rows")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.qweight, scale = quantize_int8_per_channel(weight)
        self.compute_dtype = weight.dtype
        self.scale = scale.to(weight.dtype)
        self.bias = bias
        # The kernel needs K % 16 == 0 (other widths crash in torch 2.13); those dequantize per call.
        self.use_int8_kernel = weight.device.type == "cpu" and weight.shape[1] % 16 == 0
        self._kernel_scale = scale.to(torch.bfloat16)
        self._chunk_rows = max(1, min(weight.shape[0], INT8_SCRATCH_ELEMENTS // weight.shape[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_int8_kernel:
            x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
            if x2.shape[0] >= INT8_DEQUANT_MIN_ROWS:
                y = self._dequantized_mm(x2)
            else:
                y = torch._weight_int8pack_mm(x2, self.qweight, self._kernel_scale).to(self.compute_dtype)
            y = y.view(*x.shape[:-1], -1)
        else:
            y = F.linear(x, self.qweight.to(self.compute_dtype)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y

    def _dequantized_mm(self, x: torch.Tensor) -> torch.Tensor:
        out_features, in_features = self.qweight.shape
        rows = self._chunk_rows
        if rows == out_features:
            w = _int8_scratch(out_features * in_features).view(out_features, in_features)
            w.copy_(self.qweight)
            return F.linear(x, w).to(self.compute_dtype).mul_(self.scale)
        y = torch.empty(x.shape[0], out_features, dtype=self.compute_dtype, device=x.device)
        for start in range(0, out_features, rows):
            q = self.qweight[start:start + rows]
            w = _int8_scratch(q.numel()).view(q.shape)
            w.copy_(q)
            y[:, start:start + rows] = F.linear(x, w)
        return y.mul_(self.scale)

    @property
    def weight_bytes(self) -> int:
        return self.qweight.numel() + self.scale.numel() * self.scale.element_size()

    @property
    def scratch_bytes(self) -> int:
        """The transient bf16 buffer this layer needs (shared by all layers of a thread: report the max)."""
        return self._chunk_rows * self.qweight.shape[1] * 2 if self.use_int8_kernel else 0


class Fp8Linear:
    """fp8 (e4m3) weights with a per-output-channel scale. On CUDA with fp8 support (sm_89+) the
    matmul runs in fp8 via torch._scaled_mm; elsewhere the weight is upcast per call (a smaller,
    not faster, checkpoint in memory)."""

    __slots__ = ("qweight", "scale", "bias", "compute_dtype", "use_scaled_mm")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        w = weight.float()
        fp8_max = torch.finfo(torch.float8_e4m3fn).max
        scale = (w.abs().amax(dim=1) / fp8_max).clamp(min=1e-12)
        self.qweight = (w / scale[:, None]).clamp_(-fp8_max, fp8_max).to(torch.float8_e4m3fn)
        self.scale = scale
        self.bias = bias
        self.compute_dtype = weight.dtype
        self.use_scaled_mm = weight.is_cuda and torch.cuda.get_device_capability(weight.device) >= (8, 9)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_scaled_mm:
            x2 = x.reshape(-1, x.shape[-1])
            fp8_max = torch.finfo(torch.float8_e4m3fn).max
            x_scale = (x2.abs().amax(dim=1, keepdim=True).float() / fp8_max).clamp(min=1e-12)
            x_fp8 = (x2 / x_scale).clamp(-fp8_max, fp8_max).to(torch.float8_e4m3fn)
            # qweight is [N, K] row-major, so its .t() is the column-major B that _scaled_mm wants.
            y = torch._scaled_mm(x_fp8, self.qweight.t(), scale_a=x_scale, scale_b=self.scale[None, :],
                                 out_dtype=self.compute_dtype)
            y = y.view(*x.shape[:-1], -1)
        else:
            y = F.linear(x, self.qweight.to(self.compute_dtype)) * self.scale.to(self.compute_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y

    @property
    def weight_bytes(self) -> int:
        return self.qweight.numel() + self.scale.numel() * self.scale.element_size()


def quantize_linear(layer: DenseLinear, method: str | None) -> DenseLinear | Int8Linear | Fp8Linear:
    if method is None:
        return layer
    if method == "int8":
        return Int8Linear(layer.weight, layer.bias)
    if method == "fp8":
        return Fp8Linear(layer.weight, layer.bias)
    raise ValueError(f"quantization must be None, 'int8' or 'fp8', got {method!r}")
