"""INT8 2-D convolutions on the CPU: torchqat.int8_conv2d against FP32 F.conv2d (both
channels_last, same thread count), measured side by side in one run.

    python benchmarks/bench_int8_conv.py [--threads 2] [--min-time 1] [--kernels avx2,vnni_emulated]
                                         [--clock wall|cpu]

Shapes: the convolutions of ResNet-18 at 224 x 224 (the 7x7 stride-2 stem, the 3x3 layers of
every stage, the 1x1 stride-2 downsampling convolutions) and YOLO-style layers (3x3 stride-2
downsampling, 1x1 bottleneck, 3x3 and depthwise 3x3), batch 1, float32 channels_last input.
The INT8 layer includes everything: per-tensor uint8 quantization of the float input, int32
convolution, the epilogue with a bias, channels_last float32 output. Every candidate runs inside
a TorchScript module, the way INT8 models are deployed.

Candidates:
  fp32            F.conv2d(x, W, b) on channels_last tensors (oneDNN)
  int8[auto]      torchqat.int8_conv2d with the automatic kernel (printed per row)
  int8[<kernel>]  packed for <kernel> (--kernels): a GEMM kernel, or "depthwise"; "avx2_u7" runs
                  with 7-bit activations (x quantized to [0, 127]), the only ones it takes

Ratios are FP32 time / candidate time (> 1: faster than FP32), medians of interleaved runs.
--clock cpu times with the process's CPU time (time.process_time) instead of wall time: on a
machine whose cores are shared with other jobs, a 1-thread run then counts only the time the
process actually ran, not the time it waited for a core (with several threads it also adds up
every thread's time, so use it with --threads 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, time_interleaved  # noqa: E402

from torchqat import int8  # noqa: E402

# name, in, out, H (= W), kernel, stride, padding, groups
SHAPES = [
    ("r18 stem 7x7 s2", 3, 64, 224, 7, 2, 3, 1),
    ("r18 l1 3x3", 64, 64, 56, 3, 1, 1, 1),
    ("r18 l2 3x3 s2", 64, 128, 56, 3, 2, 1, 1),
    ("r18 l2 3x3", 128, 128, 28, 3, 1, 1, 1),
    ("r18 l2 down 1x1 s2", 64, 128, 56, 1, 2, 0, 1),
    ("r18 l3 3x3", 256, 256, 14, 3, 1, 1, 1),
    ("r18 l3 down 1x1 s2", 128, 256, 28, 1, 2, 0, 1),
    ("r18 l4 3x3", 512, 512, 7, 3, 1, 1, 1),
    ("r18 l4 down 1x1 s2", 256, 512, 14, 1, 2, 0, 1),
    ("yolo 3x3 s2 down", 32, 64, 160, 3, 2, 1, 1),
    ("yolo 1x1 bottleneck", 128, 64, 80, 1, 1, 0, 1),
    ("yolo 3x3", 64, 64, 80, 3, 1, 1, 1),
    ("yolo 1x1 pointwise", 128, 128, 40, 1, 1, 0, 1),
    ("yolo dw 3x3", 128, 128, 80, 3, 1, 1, 128),
    ("yolo dw 3x3 s2", 256, 256, 40, 3, 2, 1, 256),
]


class Fp32Conv(torch.nn.Module):
    def __init__(self, w, b, stride: int, padding: int, groups: int):
        super().__init__()
        self.register_buffer("w", w.contiguous(memory_format=torch.channels_last))
        self.register_buffer("b", b)
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, self.stride, self.padding, 1, self.groups)


class Int8Conv(torch.nn.Module):
    def __init__(self, packed, s_x: torch.Tensor, z_x: torch.Tensor, quant_max: int = 255):
        super().__init__()
        self.packed = packed
        self.quant_max = quant_max
        self.register_buffer("s_x", s_x)
        self.register_buffer("z_x", z_x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchqat.int8_conv2d(x, self.s_x, self.z_x, 0, self.quant_max,
                                              self.packed, "none")


def candidates(shape, kernels):
    _, c, o, hw, k, stride, padding, groups = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, c, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(o, c // groups, k, k, generator=g) * 0.05
    b = torch.randn(o, generator=g)
    s_w = w.abs().amax(dim=(1, 2, 3)) / 127
    q_w = int8.quantize(w, s_w, torch.zeros(o, dtype=torch.int32), -127, 127, 0)
    s_x = x.abs().max().reshape(1) / 127
    z_x = torch.tensor([128], dtype=torch.int32)
    fns: Dict[str, Callable[[], object]] = {}
    fp32 = torch.jit.script(Fp32Conv(w, b, stride, padding, groups))
    fns["fp32"] = lambda: fp32(x)
    auto = int8.pack_conv2d(q_w, s_w, b, stride=stride, padding=padding, groups=groups)
    mod = torch.jit.script(Int8Conv(auto, s_x, z_x))
    fns["int8[auto]"] = lambda: mod(x)
    # The library's own rule: "auto" packs a depthwise layer for the direct kernel.
    depthwise = auto.kernel() == "depthwise"
    for kern in kernels:
        if kern == "depthwise" and not depthwise:
            continue
        if kern == "avx2_u7" and depthwise:  # convert keeps depthwise layers direct
            continue
        packed = int8.pack_conv2d(q_w, s_w, b, stride=stride, padding=padding, groups=groups,
                                  kernel=kern)
        if kern == "avx2_u7":
            m = torch.jit.script(Int8Conv(packed, x.abs().max().reshape(1) / 63,
                                          torch.tensor([64], dtype=torch.int32), 127))
        else:
            m = torch.jit.script(Int8Conv(packed, s_x, z_x))
        fns[f"int8[{kern}]"] = lambda m=m: m(x)
    return fns, auto.kernel()


def time_interleaved_cpu(fns: Dict[str, Callable[[], object]], reps: int, warmup: int,
                         min_time_s: float) -> Dict[str, float]:
    """_common.time_interleaved with the process's CPU time as the clock."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: Dict[str, list] = {name: [] for name in fns}
    start, r = time.perf_counter(), 0
    while r < reps or time.perf_counter() - start < min_time_s:
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            samples[name].append(time.process_time() - t0)
        r += 1
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per shape")
    ap.add_argument("--kernels", default="",
                    help="comma-separated extra kernels to time besides auto (e.g. "
                         "vnni_emulated,depthwise,avx2); reference and int_mm are slow")
    ap.add_argument("--only", default="", help="substring filter on the shape names")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (for --threads 1 on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernels = [k for k in args.kernels.split(",") if k]
    print(header(args.threads))
    print(f"int8    : GEMM kernels on this CPU = {', '.join(int8.available_kernels())}")
    print(f"clock   : {'process CPU time' if args.clock == 'cpu' else 'wall time'}")
    print("ratios  : FP32 time / candidate time (> 1: faster than FP32); times are medians\n")
    timer = time_interleaved_cpu if args.clock == "cpu" else time_interleaved
    rows = []
    for shape in SHAPES:
        if args.only and args.only not in shape[0]:
            continue
        fns, auto = candidates(shape, kernels)
        times = timer(fns, reps=10, warmup=3, min_time_s=args.min_time)
        rows.append((shape, auto, times))
        cells = "  ".join(f"{n} {t * 1e3:.3f} ms" for n, t in times.items())
        print(f"  measured {shape[0]}: {cells}", flush=True)

    names = sorted({n for _, _, t in rows for n in t if n != "fp32"},
                   key=lambda n: (n != "int8[auto]", n))
    print()
    head = ("| layer | in→out | HxW | auto kernel | fp32 ms | "
            + " | ".join(f"{n} ms (x)" for n in names) + " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    ratios = []
    for shape, auto, t in rows:
        name, c, o, hw, *_ = shape
        f32 = t["fp32"]
        cells = [f"{t[n] * 1e3:.3f} ({f32 / t[n]:.2f})" if n in t else "" for n in names]
        ratios.append(f32 / t["int8[auto]"])
        print(f"| {name} | {c}→{o} | {hw} | {auto} | {f32 * 1e3:.3f} | "
              + " | ".join(cells) + " |")
    if ratios:
        geo = 1.0
        for r in ratios:
            geo *= r
        geo **= 1.0 / len(ratios)
        print(f"\nint8[auto] vs fp32: geometric mean {geo:.2f}x, min {min(ratios):.2f}x, "
              f"max {max(ratios):.2f}x (target: >= 2.5x per conv layer)")


if __name__ == "__main__":
    main()
