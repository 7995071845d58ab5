"""The fake-quant passes on tensors that live in DRAM, against ATen passes that move the same
bytes, side by side (interleaved) in one run, ns per element.

    python benchmarks/bench_fake_quant_dram.py [--threads 1] [--reps 40] [--shape 8,64,64,64]
                                               [--count 12]

--count float32 tensors of --shape (default twelve of 8 x 64 x 64 x 64, 8 MB each; the QAT step's
layer inputs are 0.25-3 MB, e.g. --shape 8,96,32,32 --count 32) are used in turn, so every call
reads from memory, as the passes of a training step do. One sample of a candidate is one call on
each tensor of the rotation; the table gives ns per element. Pairs moving the same bytes:
  torchqat forward (read x, write y)                  ~ ATen relu, ATen clone
  torchqat LSQ backward in place (read dy, x; write dy) ~ torch.dot of the same two tensors
                                                        (reads only) and x.sum() (one stream)
  torchqat LSQ + SiLU backward in place (read dy, x, t) ~ ATen addcmul_ in place, silu_backward
Run it under TORCHQAT_CPU_CAPABILITY=avx2 / avx512 (or TORCHQAT_LIBRARY=<another build>) to
compare kernel builds: the ATen columns are the common baseline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, time_interleaved  # noqa: E402

import torchqat  # noqa: E402,F401

SHAPE = "8,64,64,64"
COUNT = 12


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--shape", default=SHAPE, help="tensor shape, e.g. 8,96,32,32")
    ap.add_argument("--count", type=int, default=COUNT, help="tensors in the rotation")
    args = ap.parse_args()
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise SystemExit(f"bench_fake_quant_dram.py: --shape must be positive integers separated "
                         f"by commas, got {args.shape!r}")
    if args.count < 1:
        raise SystemExit(f"bench_fake_quant_dram.py: --count must be >= 1, got {args.count}")
    count = args.count
    torch.set_num_threads(args.threads)
    print(header(args.threads))
    g = torch.Generator().manual_seed(0)
    pre = [torch.randn(shape, generator=g) for _ in range(count)]
    xs = [torch.nn.functional.silu(t) for t in pre]
    gs = [torch.randn(shape, generator=g) for _ in range(count)]
    s, z = torch.tensor([0.02]), torch.tensor([10.0])
    ops = torch.ops.torchqat

    def call(fn):
        def rotation():
            for i in range(count):
                fn(i)
        return rotation

    candidates = {
        "torchqat forward": call(lambda i: ops.fake_quantize_lsq(xs[i], s, z, 0, 255, None, 0.01)),
        "aten relu": call(lambda i: torch.relu(xs[i])),
        "aten clone": call(lambda i: xs[i].clone()),
        "torchqat LSQ backward_": call(lambda i: ops.fake_quantize_lsq_backward_(
            gs[i], xs[i], s, z, 0, 255, None, 0.01)),
        "aten dot": call(lambda i: torch.dot(xs[i].view(-1), gs[i].view(-1))),
        "aten sum": call(lambda i: xs[i].sum()),
        "torchqat LSQ+SiLU backward_": call(lambda i: ops.fake_quantize_lsq_after_silu_backward_(
            gs[i], xs[i], pre[i], s, z, 0, 255, None, 0.01)),
        "aten addcmul_": call(lambda i: gs[i].addcmul_(xs[i], pre[i], value=0.0)),
        "aten silu_backward": call(lambda i: torch.ops.aten.silu_backward(gs[i], pre[i])),
    }
    times = time_interleaved(candidates, reps=args.reps, warmup=3)
    n = xs[0].numel() * count
    print(f"\n{'pass':32s} {'ns/element':>11s}")
    for name, t in times.items():
        print(f"{name:32s} {t * 1e9 / n:11.3f}")


if __name__ == "__main__":
    main()
