"""The ceiling of an exact INT8 GEMM on this CPU: single-thread peak multiply-add throughput of
FP32 FMA, the exact int16 path (vpmaddwd + vpaddd, what torchqat's AVX2 kernel runs) and the
saturating u8 x s8 path (vpmaddubsw + vpmaddwd + vpaddd, fbgemm's AVX2 path), measured by
benchmarks/isa_peak.cpp, and how close torchqat's INT8 and PyTorch's FP32 Linear come to them.

    python benchmarks/bench_isa_peak.py [--reps 15] [--no-gemm] [--cxx g++]

isa_peak.cpp is compiled here with `<cxx> -O2 -mavx2 -mfma` (that one file only, never
-march=native) into build/isa_peak and run pinned to no CPU in particular, one thread. Each loop
reports the best of --reps runs (the machine is shared: the best run is the one nobody else
disturbed). The clock is measured by a chain of dependent adds (one per cycle).

With --gemm (default) it then times, interleaved, FP32 F.linear and torchqat.int8_linear (auto
kernel) at M = 256, N = K in {1024, 4096}, one thread, and prints each one's GMAC/s and its
fraction of the matching ceiling.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "benchmarks" / "isa_peak.cpp"

# name -> (what it is, the loop that is its ceiling's denominator family)
LOOPS = {
    "fma": "vfmadd231ps ymm, 12 accumulators (FP32 peak)",
    "madd16": "vpmaddwd + vpaddd ymm, exact int16 pairs (torchqat AVX2)",
    "maddubs": "vpmaddubsw + vpmaddwd(1) + vpaddd ymm, saturating u8s8 (fbgemm AVX2)",
    "madd_only": "vpmaddwd alone (instructions, not MACs)",
    "maddubs_only": "vpmaddubsw alone (instructions, not MACs)",
    "add_only": "vpaddd alone (instructions, not MACs)",
    "fma_kernel": "6x16 FP32 micro-kernel step from L1 (broadcast A, load B)",
    "madd16_kernel": "6x16 exact int16 step, B stored as int16",
    "madd16_bytes_kernel": "6x16 exact int16 step, B int8 widened by vpmovsxbw (current kernel)",
    "maddubs_kernel": "6x16 vpmaddubsw step, B int8 (fbgemm-like)",
}


def build(cxx: str) -> Path:
    out = ROOT / "build" / "isa_peak"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.stat().st_mtime < SRC.stat().st_mtime:
        subprocess.run([cxx, "-O2", "-mavx2", "-mfma", "-o", str(out), str(SRC)], check=True)
    return out


def run_peak(exe: Path, iters: int, reps: int) -> dict:
    res = subprocess.run([str(exe), str(iters), str(reps)], check=True, capture_output=True,
                         text=True).stdout
    out = {}
    for line in res.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[0]] = (float(parts[1]), float(parts[2]))  # seconds, work
    return out


def gemm_rates(reps: int):
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import time_interleaved  # noqa: E402
    from torchqat import int8

    torch.set_num_threads(1)
    rows = []
    for nk in (1024, 4096):
        m = 256
        g = torch.Generator().manual_seed(0)
        x = torch.randn(m, nk, generator=g)
        w = torch.randn(nk, nk, generator=g) * 0.05
        b = torch.randn(nk, generator=g)
        s_w = w.abs().amax(dim=1) / 127
        q_w = int8.quantize(w, s_w, torch.zeros(nk, dtype=torch.int32), -127, 127, 0)
        packed = int8.pack_linear(q_w, s_w, b)
        s_x = x.abs().max().reshape(1) / 127
        z_x = torch.tensor([128], dtype=torch.int32)
        fns = {
            "fp32": lambda: F.linear(x, w, b),
            "int8": lambda: torch.ops.torchqat.int8_linear(x, s_x, z_x, 0, 255, packed, "none"),
        }
        t = time_interleaved(fns, reps=reps, warmup=2, min_time_s=1.0 if nk == 1024 else 3.0)
        rows.append((m, nk, {k: m * nk * nk / v / 1e9 for k, v in t.items()}))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15, help="runs per loop; the best one counts")
    ap.add_argument("--iters", type=int, default=20_000_000, help="iterations per run")
    ap.add_argument("--cxx", default="g++")
    ap.add_argument("--no-gemm", action="store_true", help="skip the FP32 / INT8 Linear timing")
    args = ap.parse_args()

    exe = build(args.cxx)
    r = run_peak(exe, args.iters, args.reps)
    sec, cycles = r.pop("add_chain")
    hz = cycles / sec
    print(f"clock   : {hz / 1e9:.2f} GHz (dependent adds); 1 thread; best of {args.reps} runs")
    print(f"{'loop':>20} | {'G/s':>7} | {'per cycle':>9} | what")
    rate = {}
    for name, desc in LOOPS.items():
        s, work = r[name]
        rate[name] = work / s / 1e9
        print(f"{name:>20} | {rate[name]:7.1f} | {rate[name] * 1e9 / hz:9.2f} | {desc}")
    print()
    print("ceiling ratios (MACs/s over FP32 FMA's):")
    print(f"  exact int16 (vpmaddwd+vpaddd) / FP32 FMA     : {rate['madd16'] / rate['fma']:.2f} "
          f"(micro-kernel shape: {rate['madd16_bytes_kernel'] / rate['fma_kernel']:.2f})")
    print(f"  saturating u8s8 (vpmaddubsw) / FP32 FMA      : {rate['maddubs'] / rate['fma']:.2f} "
          f"(micro-kernel shape: {rate['maddubs_kernel'] / rate['fma_kernel']:.2f})")
    print(f"  B pre-widened to int16 / B widened in-loop   : "
          f"{rate['madd16_kernel'] / rate['madd16_bytes_kernel']:.2f}")
    if args.no_gemm:
        return
    print()
    print("Linear, 1 thread, interleaved medians (MACs = M*N*K):")
    ceil_f, ceil_i = max(rate["fma"], rate["fma_kernel"]), max(rate["madd16"],
                                                                rate["madd16_bytes_kernel"])
    for m, nk, g in gemm_rates(args.reps):
        print(f"  M={m} N=K={nk}: FP32 {g['fp32']:.1f} GMAC/s ({g['fp32'] / ceil_f:.0%} of FMA "
              f"peak), INT8 {g['int8']:.1f} GMAC/s ({g['int8'] / ceil_i:.0%} of the exact "
              f"int16 peak), INT8/FP32 {g['int8'] / g['fp32']:.2f}")


if __name__ == "__main__":
    main()
