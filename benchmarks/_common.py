"""Timing and machine-description helpers shared by the benchmark scripts.

Rules (../shared/BENCHMARKING.md): warm up, interleave the candidates (A B A B ...), report the
median, set and print the thread count, print the machine.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Dict

import torch


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", "unknown CPU", platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    return f"{model}; ISA: {' '.join(isa) or 'none of avx2/avx512'}"


def header(threads: int) -> str:
    from torchqat import _ops  # noqa: F401

    lines = [
        f"machine : {cpu_description()}",
        f"torch   : {torch.__version__}; threads: {threads}",
        f"kernels : torchqat CPU ISA = {torch.ops.torchqat.cpu_capability()}",
    ]
    return "\n".join(lines)


def time_interleaved(fns: Dict[str, Callable[[], object]], reps: int, warmup: int = 3,
                     min_time_s: float = 0.0) -> Dict[str, float]:
    """Median seconds per call of each function, measured A B C A B C ... so that drift in the
    machine's speed affects every candidate alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: Dict[str, list] = {name: [] for name in fns}
    start = time.perf_counter()
    r = 0
    while r < reps or time.perf_counter() - start < min_time_s:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        r += 1
    return {name: statistics.median(v) for name, v in samples.items()}
