"""Numeric tolerances stated in the units of the numbers compared (rounding steps of the dtype, the
int8 grid), never as constants tuned on one CPU; and the user-visible check (same top-k tokens).

The one model behind every helper here. A float computation rounds at each stored result; in
round-to-nearest each rounding errs by at most half a step ("ulp": the spacing of the dtype's
numbers at that magnitude). Two computations of the same real value that round in different places
(another summation order, a fused kernel, another library) therefore differ by at most one step per
rounding, with a sign that varies from rounding to rounding. Over N roundings the differences add
as a random walk: about sqrt(N) steps, not N (N needs every rounding to err the same way, which real
data does not do). So a tolerance is `sqrt(number of roundings) * ulp(dtype, magnitude)`:

- `magnitude` is the largest magnitude of the compared tensor, not each element's own: an element's
  error comes from the terms that made it, and a logit near 0 is a sum of terms as large as the
  largest logits, so it inherits their step.
- a dot product or sum of K terms accumulated in dtype is K roundings at the scale of its partial
  sums: sqrt(K) steps (`reduction_tolerance`). Kernels that store bf16 accumulate in fp32, whose
  step is 2**16 times finer, so there only the final store counts.
- quantization rounds to a coarser grid (int8: a per-channel step of max|w| / 127; fp8 e4m3: 3
  mantissa bits); there the same random walk is stated as a relative RMS error per rounding
  (`relative_rms`, `quantized_relative_tolerance`).

None of these is loose enough to hide a real bug: a wrong position, scale, layer or missing token
moves values by tens to hundreds of steps (measured for the decode fast path, see the tests).
"""

from __future__ import annotations

import math

import numpy as np
import torch

FP32 = torch.float32

# What one decoder layer (Llama layout, as runtime/engine/models/decoder.py computes it) stores:
# reductions, each a dot product accumulated in fp32 and stored once:
#   qkv projection, q.k scores, probs.v, o projection, gate_up projection, down projection;
# elementwise stores:
#   input RMSNorm, rotary (x*cos, roll(x)*sin, their sum), score scaling, softmax cast to the
#   dtype, residual add after attention, post-attention RMSNorm, SiLU, SiLU*up, residual add
#   after the MLP.
DECODER_LAYER_REDUCTIONS = 6
DECODER_LAYER_ELEMENTWISE = 10
# Gaussian-initialised weight rows of the sizes tests use (32..256 entries) have max|w| of about
# 2.5-3 times their RMS; the int8 per-channel step is max|w| / 127.
INT8_MAX_OVER_RMS = 3.0
INT8_LEVELS = 127


def _finfo(dtype):
    return torch.finfo(dtype) if isinstance(dtype, torch.dtype) else np.finfo(dtype)


def unit_roundoff(dtype) -> float:
    """The largest relative error of rounding one real number to `dtype` (half of eps): float32 2**-24,
    bfloat16 2**-8. The rtol for "this value was stored once in dtype"."""
    return float(_finfo(dtype).eps) / 2


def ulp(dtype, magnitude):
    """The spacing of `dtype` numbers at |magnitude| (one rounding step there): eps * 2**floor(log2|m|).
    bfloat16 at 2.33 -> 2**-6 = 0.0156; float32 at 2.33 -> 2**-22. Elementwise for arrays/tensors."""
    info = _finfo(dtype)
    tiny, eps = float(info.tiny), float(info.eps)
    if isinstance(magnitude, torch.Tensor):
        _, exponent = torch.frexp(magnitude.detach().double().abs().clamp(min=tiny))
        steps = eps * torch.pow(2.0, exponent.double() - 1)
        return float(steps) if steps.ndim == 0 else steps
    _, exponent = np.frexp(np.maximum(np.abs(np.asarray(magnitude, dtype=np.float64)), tiny))
    steps = eps * np.ldexp(1.0, exponent - 1)
    return float(steps) if steps.ndim == 0 else steps


def max_magnitude(values) -> float:
    """The largest |value| of a tensor, array or number."""
    if isinstance(values, torch.Tensor):
        return float(values.detach().abs().max())
    return float(np.max(np.abs(np.asarray(values, dtype=np.float64))))


def rounding_walk_steps(num_roundings: float) -> float:
    """How many steps two computations that round differently end apart after `num_roundings`
    roundings: sqrt(N) (a random walk of at most one step each; see the module docstring)."""
    return math.sqrt(num_roundings)


def dtype_steps_rtol(dtype, steps: float) -> float:
    """`steps` rounding steps as a relative tolerance: a value's step is at most eps times the value."""
    return steps * float(_finfo(dtype).eps)


def dtype_steps_tolerance(dtype, reference, steps: float) -> float:
    """`steps` rounding steps of `dtype` at the largest magnitude in `reference` (an atol for
    assert_close with rtol=0)."""
    return steps * ulp(dtype, max_magnitude(reference))


def rounding_tolerance(dtype, magnitude, num_roundings: float):
    """A chain of `num_roundings` roundings in `dtype` at (at most) `magnitude`, against the same
    chain rounded elsewhere or against the exact value: sqrt(N) steps there. Elementwise for arrays."""
    return rounding_walk_steps(num_roundings) * ulp(dtype, magnitude)


def reduction_tolerance(reduction_length: int, magnitude: float, dtype=FP32) -> float:
    """Two orders (or kernels) of one sum/dot product of `reduction_length` terms accumulated in
    `dtype`: each addition rounds at the scale of the partial sum, so the results differ by about
    sqrt(K) steps at `magnitude` (the scale of the partial sums: the largest result is a fair proxy
    when terms have random signs). The worst case, all K roundings one way, is K steps."""
    return rounding_tolerance(dtype, magnitude, reduction_length)


def sqrt_tolerance(square, square_tolerance):
    """How far sqrt(x) can move when x is off by t: at most sqrt(t) (x near 0), and t / (2 sqrt(x))
    away from 0 (the derivative); the smaller of the two. For distances from squared distances and
    standard deviations from variances. Elementwise for arrays."""
    square, square_tolerance = np.asarray(square, dtype=np.float64), np.asarray(square_tolerance, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.minimum(np.sqrt(square_tolerance), square_tolerance / (2 * np.sqrt(square)))


def decoder_roundings(num_layers: int, *, dtype, max_reduction_length: int, with_head: bool = True,
                      extra_roundings: float = 0) -> float:
    """Roundings, in steps of `dtype`, between the input and output of `num_layers` decoder layers
    (+ the final norm and lm_head if `with_head`). A reduction of K terms is one store in dtype plus
    K fp32 accumulation roundings, each (eps_fp32 / eps_dtype)**2 of a dtype step squared in the
    random walk: K + 1 for fp32, 1 for bf16 (its fp32 accumulation is 2**16 times finer)."""
    accumulation = max_reduction_length * (_finfo(FP32).eps / _finfo(dtype).eps) ** 2
    per_layer = DECODER_LAYER_REDUCTIONS * (1 + accumulation) + DECODER_LAYER_ELEMENTWISE
    head = (1 + accumulation) + 1 if with_head else 0  # lm_head (a reduction over hidden) + final norm
    return num_layers * per_layer + head + extra_roundings


def decoder_tolerance(dtype, reference, *, num_layers: int, max_reduction_length: int,
                      with_head: bool = True, extra_roundings: float = 0) -> float:
    """atol for two implementations of the same decoder in `dtype` (other kernels, fusions or
    summation orders): sqrt(decoder_roundings) steps at the largest magnitude of `reference`."""
    roundings = decoder_roundings(num_layers, dtype=dtype, max_reduction_length=max_reduction_length,
                                  with_head=with_head, extra_roundings=extra_roundings)
    return dtype_steps_tolerance(dtype, reference, rounding_walk_steps(roundings))


def relative_rms(kind: str) -> float:
    """RMS relative error that one rounding of a value (or of every weight of a linear, as seen in its
    output) adds. Round-to-nearest errs uniformly within half a step: RMS = step / sqrt(12).
    - "bfloat16": step = eps * value's power of two <= 2**-7 relative;
    - "int8": per-channel step max|w| / 127, about INT8_MAX_OVER_RMS / 127 of the weights' RMS;
    - "fp8": e4m3 has 3 mantissa bits, step <= 2**-3 relative."""
    steps = {"bfloat16": float(torch.finfo(torch.bfloat16).eps), "int8": INT8_MAX_OVER_RMS / INT8_LEVELS,
             "fp8": 2.0**-3}
    if kind not in steps:
        raise ValueError(f"kind must be one of {sorted(steps)}, got {kind!r}")
    return steps[kind] / math.sqrt(12)


def quantized_relative_tolerance(roundings: dict[str, float], margin: float = 2.0) -> float:
    """Bound on ||actual - expected|| / ||expected|| for a network whose values went through
    `roundings` ({kind: count}, kinds as in `relative_rms`), e.g. {"int8": 9, "bfloat16": 9} for nine
    int8 linears with bf16 activations. Independent roundings add as a random walk: the norm error
    is about sqrt(sum count * rms**2); `margin` (2) covers the softmax and SiLU between the linears,
    which can amplify a perturbation, and a norm over a few hundred values still scatters ~25%."""
    return margin * math.sqrt(sum(count * relative_rms(kind) ** 2 for kind, count in roundings.items()))


def assert_within(actual, expected, tolerance) -> None:
    """|actual - expected| <= tolerance elementwise, `tolerance` a number or an array broadcast against
    them (numpy's assert_allclose takes only a scalar atol)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    excess = np.abs(actual - expected) / np.broadcast_to(np.asarray(tolerance, dtype=np.float64), actual.shape)
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape) if excess.size else None
    assert worst is None or excess[worst] <= 1, (
        f"{int((excess > 1).sum())} of {excess.size} values are off by more than their tolerance; worst at "
        f"{worst}: {actual[worst]!r} vs {expected[worst]!r}, {excess[worst]:.3g} times its tolerance")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (over all elements, in fp64)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / expected.norm())


def assert_same_top_k(actual: torch.Tensor, expected: torch.Tensor, k: int, tolerance: float) -> None:
    """What a user sees: the top-k tokens of `actual` are those of `expected` (k=1: the greedy token),
    row by row. Each logit may be off by `tolerance`, so two tokens whose expected logits are within
    2 * tolerance may legitimately swap places; any other difference in the set fails."""
    actual_rows = actual.detach().float().reshape(-1, actual.shape[-1])
    expected_rows = expected.detach().float().reshape(-1, expected.shape[-1])
    for row, (got, want) in enumerate(zip(actual_rows, expected_rows)):
        got_top, want_top = set(got.topk(k).indices.tolist()), set(want.topk(k).indices.tolist())
        kth = float(want.topk(k).values[-1])
        others = [t for t in range(len(want)) if t not in want_top]
        outside = float(want[others].max()) if others else -math.inf
        for token in got_top - want_top:  # an outsider got in: only fair if it was within reach of the k-th
            assert float(want[token]) >= kth - 2 * tolerance, (
                f"row {row}: token {token} entered the top-{k} with expected logit {float(want[token]):.4f}, "
                f"more than 2 * {tolerance:.3g} below the k-th ({kth:.4f})")
        for token in want_top - got_top:  # an insider fell out: only fair if an outsider was within reach
            assert float(want[token]) <= outside + 2 * tolerance, (
                f"row {row}: token {token} (expected logit {float(want[token]):.4f}) left the top-{k}, "
                f"but no other token was within 2 * {tolerance:.3g} of it")
