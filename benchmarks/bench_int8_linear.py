"""INT8 linear layers on the CPU: torchqat.int8_linear with every GEMM kernel this CPU runs,
against FP32 F.linear and torch._int_mm, measured side by side in one run.

    python benchmarks/bench_int8_linear.py [--threads 2] [--min-time 2] [--slow-budget 60]

Shapes: x [M, K] float32 times W [N, K], M in {1, 32, 256}, N = K in {1024, 4096}; the INT8 layers
quantize x per tensor (uint8), multiply by per-channel int8 weights in int32 and apply the float
epilogue with a bias, everything included. Every candidate runs inside a TorchScript module, the
way INT8 models are deployed (an eager Python call of an operator that takes a TorchScript class
adds ~20 us of binding overhead; see docs/benchmarks.md).

Candidates:
  fp32             F.linear(x, W, b)
  int8[<kernel>]   torchqat.int8_linear with PackedLinear packed for <kernel>
                   (avx512_vnni, brgemm = oneDNN's micro-kernel on AMX tiles, avx2,
                   reference, int_mm = torch._int_mm inside our op, vnni_emulated = the VNNI
                   kernel's logic with vpdpbusd emulated in AVX2)
  int8[avx2_u7]    on AVX2 CPUs: the kernel for 7-bit activations (x quantized to [0, 127]),
                   vpmaddubsw, which cannot saturate there
  _int_mm only     torch._int_mm(A int8 [M, K], W int8 [K, N]) -> int32, nothing else; the
                   difference to int8[int_mm] is the quantization and epilogue cost.

Fast candidates are timed interleaved (A B C A B C ...); those slower than 0.5 s per call
(the plain-loop reference kernel and torch._int_mm, a naive loop on CPUs without AVX-512 VNNI)
are timed afterwards with a few repetitions, and skipped when one call would exceed
--slow-budget seconds. Ratios are FP32 time / candidate time (> 1: faster than FP32).
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

SHAPES = [(m, nk) for nk in (1024, 4096) for m in (1, 32, 256)]
SLOW_S = 0.5


class Fp32Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w, self.b)


class Int8Linear(torch.nn.Module):
    def __init__(self, packed, s_x: torch.Tensor, z_x: torch.Tensor, quant_max: int = 255):
        super().__init__()
        self.packed = packed
        self.quant_max = quant_max
        self.register_buffer("s_x", s_x)
        self.register_buffer("z_x", z_x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchqat.int8_linear(x, self.s_x, self.z_x, 0, self.quant_max,
                                              self.packed, "none")


class IntMm(torch.nn.Module):
    def __init__(self, w_t: torch.Tensor):
        super().__init__()
        self.register_buffer("w_t", w_t)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch._int_mm(a, self.w_t)


def candidates(m: int, nk: int, kernels) -> Dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, nk, generator=g)
    w = torch.randn(nk, nk, generator=g) * 0.05
    b = torch.randn(nk, generator=g)
    s_w = w.abs().amax(dim=1) / 127
    q_w = int8.quantize(w, s_w, torch.zeros(nk, dtype=torch.int32), -127, 127, 0)
    s_x = x.abs().max().reshape(1) / 127
    z_x = torch.tensor([128], dtype=torch.int32)
    fns: Dict[str, Callable[[], object]] = {}
    fp32 = torch.jit.script(Fp32Linear(w, b))
    fns["fp32"] = lambda: fp32(x)
    for k in kernels:
        mod = torch.jit.script(Int8Linear(int8.pack_linear(q_w, s_w, b, kernel=k), s_x, z_x))
        fns[f"int8[{k}]"] = lambda mod=mod: mod(x)
    if "avx2" in kernels:
        u7 = torch.jit.script(Int8Linear(int8.pack_linear(q_w, s_w, b, kernel="avx2_u7"),
                                         x.abs().max().reshape(1) / 63,
                                         torch.tensor([64], dtype=torch.int32), 127))
        fns["int8[avx2_u7]"] = lambda: u7(x)
    a_s8 = torch.randint(-128, 128, (m, nk), generator=g, dtype=torch.int8)
    int_mm = torch.jit.script(IntMm(q_w.t().contiguous()))
    fns["_int_mm only"] = lambda: int_mm(a_s8)
    return fns


def one_call_s(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per shape, fast group")
    ap.add_argument("--slow-budget", type=float, default=60.0,
                    help="skip a slow candidate when one call takes longer than this")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernels = int8.available_kernels()
    print(header(args.threads))
    print(f"int8    : kernels on this CPU = {', '.join(kernels)}; auto = {kernels[0]}")
    print("ratios  : FP32 time / candidate time (> 1: faster than FP32); times are medians\n")

    rows = []
    names = None
    for m, nk in SHAPES:
        fns = candidates(m, nk, kernels)
        names = list(fns)
        est = {name: min(one_call_s(fn), one_call_s(fn)) if name == "fp32" else one_call_s(fn)
               for name, fn in fns.items()}
        fast = {n: f for n, f in fns.items() if est[n] < SLOW_S}
        times = time_interleaved(fast, reps=10, warmup=2, min_time_s=args.min_time)
        for name, fn in fns.items():
            if name in times:
                continue
            if est[name] > args.slow_budget:
                times[name] = float("nan")
                continue
            reps = max(1, min(5, int(3.0 / est[name])))
            times[name] = statistics.median(one_call_s(fn) for _ in range(reps))
        rows.append((m, nk, times))
        cells = "  ".join(f"{n} {t * 1e3:.3f} ms" for n, t in times.items())
        print(f"  measured M={m} N=K={nk}: {cells}", flush=True)

    print()
    head = f"| M | N = K | fp32 ms | " + " | ".join(f"{n} ms (x)" for n in names if n != "fp32") + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for m, nk, t in rows:
        f32 = t["fp32"]
        cells = []
        for n in names:
            if n == "fp32":
                continue
            v = t[n]
            cells.append("skipped" if v != v else f"{v * 1e3:.3f} ({f32 / v:.2f})")
        print(f"| {m} | {nk} | {f32 * 1e3:.3f} | " + " | ".join(cells) + " |")
    print("\nint8[int_mm] - _int_mm only = torchqat's quantization + epilogue around torch._int_mm "
          "(the _int_mm only column uses a random int8 operand of the same shape).")


if __name__ == "__main__":
    main()
