"""GPU benchmarks of torchqat (issue 5), every figure a ratio against a baseline measured in the
same run:

  1. fake-quant forward and LSQ backward against a device-to-device copy of the same tensor
     (bandwidth in GB/s and in % of the copy's; targets on an H100: forward >= 85%, LSQ
     backward >= 75%), per tensor and per channel (channels_last activations);
  2. INT8 GEMM 4096 x 4096 x 4096 against cuBLAS BF16 and FP16 (torch.mm), in TOPS (target:
     INT8 >= 1.6 x BF16): torchqat.int8_matmul (the whole operator: operand conversion, GEMM,
     zero-point epilogue) with each of its GEMMs, and torch._int_mm (cuBLASLt's int8 GEMM
     alone, what our cuBLASLt path calls) as a reference;
  3. whole resnet50, batch 32, channels_last: torchqat's INT8 model (tq.convert) against FP16
     eager (target: INT8 >= 1.3 x FP16).

    python benchmarks/bench_gpu.py [--min-time 1.0] [--skip-resnet] [--profile]

Timing: CUDA events around each call, candidates interleaved (A B A B ...), median of the
samples after a warm-up. Without a GPU it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import traceback
from typing import Callable, Dict

import torch

import torchqat
from torchqat import int8


def gpu_header() -> str:
    p = torch.cuda.get_device_properties(0)
    return "\n".join([
        f"device  : {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
        f"sm_{p.major}{p.minor}",
        f"torch   : {torch.__version__}, CUDA {torch.version.cuda}",
    ])


def time_cuda(fns: Dict[str, Callable[[], object]], min_time_s: float, warmup: int = 5,
              min_reps: int = 20) -> Dict[str, float]:
    """Median seconds per call of each function (CUDA events), interleaved A B C A B C ..."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    samples: Dict[str, list] = {name: [] for name in fns}
    total = 0.0
    reps = 0
    while reps < min_reps or total < min_time_s:
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            t = start.elapsed_time(end) / 1e3
            samples[name].append(t)
            total += t
        reps += 1
    return {name: statistics.median(v) for name, v in samples.items()}


# ---------------------------------------------------------------------------------------------
# 1. Fake quantization against a copy


def bench_fake_quant(min_time_s: float) -> None:
    print("\n== fake-quant against a device-to-device copy (float32) ==")
    print(f"{'case':44s} {'copy GB/s':>10s} {'op GB/s':>9s} {'% of copy':>9s}")
    cases = [
        ("per-tensor, 4M elements", (4 * 2**20,), None),
        ("per-tensor, 64M elements", (64 * 2**20,), None),
        ("per-channel axis 1, [32, 256, 56, 56] channels_last", (32, 256, 56, 56), 1),
        ("per-channel axis 0, weights [4096, 4096]", (4096, 4096), 0),
    ]
    for name, shape, axis in cases:
        x = torch.randn(shape, device="cuda")
        if len(shape) == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        c = 1 if axis is None else shape[axis]
        scale = torch.full((c,), 0.02, device="cuda")
        zp = torch.zeros(c, device="cuda")
        dy = torch.randn_like(x)
        out = torch.empty_like(x)
        n_bytes = x.numel() * x.element_size()
        ax = axis
        times = time_cuda({
            "copy": lambda: out.copy_(x),
            "forward": lambda: torch.ops.torchqat.fake_quantize(x, scale, zp, 0, 255, ax),
            "lsq_backward": lambda: torch.ops.torchqat.fake_quantize_lsq_backward(
                dy, x, scale, zp, 0, 255, ax, 0.01),
        }, min_time_s)
        copy_bw = 2 * n_bytes / times["copy"]  # read + write
        fwd_bw = 2 * n_bytes / times["forward"]  # read x, write y
        bwd_bw = 3 * n_bytes / times["lsq_backward"]  # read dy and x, write dx
        print(f"{name + ' forward':44s} {copy_bw / 1e9:10.0f} {fwd_bw / 1e9:9.0f} "
              f"{100 * fwd_bw / copy_bw:8.0f}%")
        print(f"{name + ' LSQ backward':44s} {copy_bw / 1e9:10.0f} {bwd_bw / 1e9:9.0f} "
              f"{100 * bwd_bw / copy_bw:8.0f}%")
    print("targets (H100): forward >= 85% of copy, LSQ backward >= 75%")


# ---------------------------------------------------------------------------------------------
# 2. INT8 GEMM against BF16 / FP16


def bench_gemm(min_time_s: float) -> None:
    m = n = k = 4096
    print(f"\n== GEMM {m} x {n} x {k} ==")
    g = torch.Generator(device="cuda").manual_seed(0)
    a16 = torch.randn(m, k, device="cuda", generator=g)
    b16 = torch.randn(k, n, device="cuda", generator=g)
    abf, bbf = a16.bfloat16(), b16.bfloat16()
    ah, bh = a16.half(), b16.half()
    a8 = torch.randint(-128, 128, (m, k), device="cuda", dtype=torch.int8, generator=g)
    w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    packed = int8.pack_linear(w8, torch.ones(n))
    w8_t = w8.to("cuda").t()  # [K, N] column-major: the operand layout _int_mm wants
    fns = {
        "bf16 torch.mm": lambda: torch.mm(abf, bbf),
        "fp16 torch.mm": lambda: torch.mm(ah, bh),
        "int8 torch._int_mm (cuBLASLt alone)": lambda: torch._int_mm(a8, w8_t),
        "int8 torchqat.int8_matmul": lambda: int8.int8_matmul(a8, 0, packed),
    }
    times = time_cuda(fns, min_time_s)
    # Our dp4a fallback, for the record (the environment variable is read per call).
    os.environ["TORCHQAT_CUDA_INT8_GEMM"] = "dp4a"
    try:
        times.update(time_cuda({"int8 torchqat.int8_matmul [dp4a]":
                                lambda: int8.int8_matmul(a8, 0, packed)}, min_time_s, min_reps=5))
    finally:
        del os.environ["TORCHQAT_CUDA_INT8_GEMM"]
    ops = 2 * m * n * k
    bf16 = times["bf16 torch.mm"]
    print(f"{'candidate':40s} {'ms':>8s} {'TOPS':>8s} {'x BF16':>7s}")
    for name, t in times.items():
        print(f"{name:40s} {t * 1e3:8.3f} {ops / t / 1e12:8.1f} {bf16 / t:7.2f}")
    print("target (H100): INT8 >= 1.6 x BF16")


# ---------------------------------------------------------------------------------------------
# 3. resnet50


def bench_resnet50(min_time_s: float, profile: bool = False) -> None:
    print("\n== resnet50, batch 32, channels_last, 224 x 224 ==")
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001  (the wheel may not load against this torch)
        print(f"skipped: torchvision not available ({type(e).__name__}: {e})")
        return
    if not hasattr(torchqat, "convert"):
        print("skipped: convert not available (torchqat.convert is not in this build)")
        return
    torch.manual_seed(0)
    x = torch.randn(32, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    fp16 = torchvision.models.resnet50().eval().cuda().half().to(memory_format=torch.channels_last)
    try:
        float_model = torchvision.models.resnet50().eval()
        qmodel = torchqat.prepare_qat(float_model, torchqat.QATConfig())
        calib = [torch.randn(8, 3, 224, 224) for _ in range(2)]
        torchqat.calibrate(qmodel, calib, num_batches=len(calib))
        imodel = torchqat.convert(qmodel).eval().cuda()
        imodel = imodel.to(memory_format=torch.channels_last)
    except Exception:  # noqa: BLE001
        print("failed: could not build the INT8 resnet50:")
        traceback.print_exc(limit=3, file=sys.stdout)
        return
    xh = x.half()
    with torch.inference_mode():
        try:
            times = time_cuda({"fp16 eager": lambda: fp16(xh), "int8 torchqat": lambda: imodel(x)},
                              min_time_s, min_reps=10)
        except Exception:  # noqa: BLE001
            print("failed: the INT8 resnet50 did not run on CUDA:")
            traceback.print_exc(limit=3, file=sys.stdout)
            return
    for name, t in times.items():
        print(f"{name:20s} {t * 1e3:8.2f} ms  {32 / t:8.0f} images/s  "
              f"{times['fp16 eager'] / t:5.2f} x FP16")
    print("target (H100): INT8 >= 1.3 x FP16 eager")
    if profile:
        print_kernel_profile(lambda: imodel(x), "INT8 resnet50")


def print_kernel_profile(fn: Callable[[], object], what: str, steps: int = 5,
                         rows: int = 15) -> None:
    """The GPU kernels `fn` spends its time in (torch.profiler, `steps` calls after a warm-up):
    where the next speed-up is."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch.inference_mode():
        fn()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
    print(f"\n-- {what}: GPU kernels over {steps} calls --")
    averages = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            print(averages.table(sort_by=key, row_limit=rows))
            return
        except (AttributeError, KeyError, ValueError):
            continue
    print(averages.table(row_limit=rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of samples per group of candidates")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="also print the GPU kernels the INT8 resnet50 spends its time in")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (torch.cuda.is_available() is False); nothing measured.")
        return 0
    print(gpu_header())
    bench_fake_quant(args.min_time)
    bench_gemm(args.min_time)
    if not args.skip_resnet:
        bench_resnet50(args.min_time, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
