"""Where the engine's time goes in the 64-request mixed workload (torch.profiler over decode-heavy steps),
and the kernel choices behind it.

    python -m benchmarks.engine_mixed_profile [--model 120m] [--quantization int8] [--warm-steps 40] [--steps 15]
    python -m benchmarks.engine_mixed_profile --kernels [--out benchmarks/results/engine_mixed_kernels.txt]
    ray job submit --working-dir . -- python -m benchmarks.engine_mixed_profile

Default: same model and requests as `benchmarks.engine_throughput`'s mixed part; skips the
prefill-heavy start, then profiles a few steps (batch ~64 decodes) and prints the top operators by
self CPU time. `--kernels`: decode attention for 64 sequences of 100-700 tokens (12 layers of the
120M model), the compiled in-place kernel against the torch gather path, alone and interleaved with
torch GEMMs (thread contention); int8 linear kernels per batch size M against the packed fp32 GEMM.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks.engine_throughput import median_time


def median_ms(fn, repeats: int = 9) -> float:
    return 1e3 * median_time(fn, repeats)


def int8_linear_ms(layer, packed, x: torch.Tensor) -> tuple[float, float, float, float]:
    """ms per call: torch's int8 kernel, dequantize-to-bf16 GEMM, what Int8Linear picks, packed fp32."""
    xb = x.to(torch.bfloat16)
    return (median_ms(lambda: torch._weight_int8pack_mm(xb, layer.qweight, layer._kernel_scale).float()),
            median_ms(lambda: layer._dequantized_mm(xb)), median_ms(lambda: layer(x)), median_ms(lambda: packed(x)))


def kernel_report() -> list[str]:
    from runtime.engine.layers import linear, paged_decode
    from runtime.engine.layers.attention import DecodeGroup, PagedKVCache, _decode_attention

    lines = [f"threads={torch.get_num_threads()} load_before={os.getloadavg()[0]:.2f}"]
    torch.manual_seed(0)
    num_seqs, layers, block_size, max_blocks = 64, 12, 16, 44
    cache = PagedKVCache(num_layers=layers, num_blocks=num_seqs * max_blocks, block_size=block_size,
                         num_kv_heads=4, head_dim=64, dtype=torch.float32, device=torch.device("cpu"))
    cache.data.normal_()
    lens = torch.randint(100, 700, (num_seqs,)).sort().values
    tables = torch.randperm(num_seqs * max_blocks).view(num_seqs, max_blocks)  # scattered blocks
    q = torch.randn(num_seqs, 12, 64)
    paged_decode.warm_up(cache)
    groups = []
    for start in range(0, num_seqs, 16):  # the fallback's grouping: 16 by length, padded, masked
        n = int(lens[start + 15])
        mask = (torch.arange(n)[None, :] >= lens[start:start + 16, None])[None, :, None, :]
        groups.append((start, DecodeGroup(start=0, end=16, block_tables=tables[start:start + 16, :-(-n // 16)],
                                          kv_len=n, mask=mask)))

    def kernel() -> None:
        for layer in range(layers):
            paged_decode.paged_decode_attention(q, cache, layer, tables, lens, 0.125)

    def gather() -> None:
        for layer in range(layers):
            for start, group in groups:
                _decode_attention(q[start:start + 16], cache, layer, group, 0.125)

    gemm = linear.PackedLinear(torch.randn(4096, 768)) if linear.can_pack(torch.zeros(1)) else None
    x = torch.randn(num_seqs, 768)

    def gemms() -> None:
        for _ in range(layers):
            gemm(x)

    def interleaved() -> None:
        for layer in range(layers):
            gemm(x)
            paged_decode.paged_decode_attention(q, cache, layer, tables, lens, 0.125)

    with torch.inference_mode():
        k_ms, g_ms = median_ms(kernel), median_ms(gather)
        lines.append(f"decode attention, 64 seqs x {int(lens.float().mean())} tokens avg, 12 layers, blocks scattered: "
                     f"in-place kernel {k_ms:.1f} ms, gather path {g_ms:.1f} ms ({g_ms / k_ms:.2f}x)")
        scattered = tables.clone()
        tables.copy_(torch.arange(tables.numel()).view_as(tables))  # each sequence's blocks consecutive
        k_ms, g_ms = median_ms(kernel), median_ms(gather)
        lines.append(f"  same, each sequence's blocks consecutive: in-place kernel {k_ms:.1f} ms, gather path "
                     f"{g_ms:.1f} ms ({g_ms / k_ms:.2f}x)")
        tables.copy_(scattered)
        if gemm is not None:
            a, b, both = median_ms(kernel), median_ms(gemms), median_ms(interleaved)
            lines.append(f"numba layer {paged_decode.numba.threading_layer()}: kernel {a:.1f} + 12 GEMMs {b:.1f} = "
                         f"{a + b:.1f} ms run apart, {both:.1f} ms interleaved")
        lines.append("int8 linear ms per call (M rows): int8pack | dequant-bf16 | chosen | packed fp32")
        for name, (n_out, n_in) in {"qkv": (1280, 768), "gate_up": (4096, 768), "down": (768, 2048),
                                    "lm_head": (32000, 768)}.items():
            w = torch.randn(n_out, n_in) * 0.02
            layer = linear.Int8Linear(w)
            packed = linear.PackedLinear(w) if gemm is not None else linear.DenseLinear(w)
            for m in (1, 8, 16, 32, 64, 128, 256):
                lines.append(f"  {name:8s} M={m:3d}  " + " | ".join(
                    f"{t:7.3f}" for t in int8_linear_ms(layer, packed, torch.randn(m, n_in))))
    lines.append(f"load_after={os.getloadavg()[0]:.2f}")
    return lines


def profile_steps(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    from benchmarks import engine_throughput as bench
    from runtime.engine import LLMEngine, SamplingParams

    model_dir = bench.build_models("/tmp/strata-engine-bench", [args.model])[args.model]
    engine = LLMEngine(model_dir, quantization=args.quantization, max_model_len=1024, max_num_seqs=64,
                       max_num_batched_tokens=1024)
    for index, (prompt, output_len) in enumerate(bench.workload(64, (32, 512), (16, 256))):
        engine.add_request(str(index), {"prompt_token_ids": prompt},
                           SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True))
    for _ in range(args.warm_steps):
        engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        elapsed = time.perf_counter() - start
    print(f"{args.steps} steps in {elapsed:.2f} s ({elapsed / args.steps * 1e3:.0f} ms/step)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> None:
    from benchmarks import engine_throughput as bench

    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_mixed_profile")
    parser.add_argument("--model", default="120m", choices=sorted(bench.MODELS))
    parser.add_argument("--quantization", default=None, choices=["int8"])
    parser.add_argument("--warm-steps", type=int, default=40)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--kernels", action="store_true", help="kernel micro-benchmarks instead of a profile")
    parser.add_argument("--out", default=None, help="with --kernels: also write the report here")
    args = parser.parse_args(argv)
    if not args.kernels:
        profile_steps(args)
        return
    lines = kernel_report()
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("# python -m benchmarks.engine_mixed_profile --kernels (" + time.strftime("%Y-%m-%d %H:%M UTC",
                    time.gmtime()) + ")\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
