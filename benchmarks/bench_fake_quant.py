"""Fake-quant operator throughput on the CPU: torchqat against PyTorch's own operators and the
memory-bound floor (x.clone(), and out.copy_(x) into an existing tensor), measured side by side.

    python benchmarks/bench_fake_quant.py [--threads 2] [--reps 30] [--sizes 1M 4M 16M]

Sizes are float32 NCHW tensors; per-channel quantizes axis 1. 16M elements (64 MB) sit above
this machine's 32 MB allocation cliff (see docs/benchmarks.md): those rows are allocation-bound
for every candidate that allocates its output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, time_interleaved  # noqa: E402

import torchqat  # noqa: E402

SHAPES = {
    "1M": (16, 64, 32, 32),
    "4M": (16, 64, 64, 64),
    "16M": (64, 64, 64, 64),
}
QMIN, QMAX = -128, 127


def make_inputs(shape, per_channel: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 2
    c = shape[1]
    if per_channel:
        scale = torch.rand(c, generator=g) * 0.02 + 0.01
        zp_int = torch.randint(-3, 4, (c,), generator=g, dtype=torch.int32)
    else:
        scale = torch.tensor([0.02])
        zp_int = torch.tensor([1], dtype=torch.int32)
    return x, scale, zp_int


def forward_cases(x, scale, zp_int, per_channel):
    axis = 1 if per_channel else None
    out = torch.empty_like(x)
    if per_channel:
        torch_fq = lambda: torch.fake_quantize_per_channel_affine(x, scale, zp_int, 1, QMIN, QMAX)
    else:
        torch_fq = lambda: torch.fake_quantize_per_tensor_affine(x, scale, zp_int, QMIN, QMAX)
    return {
        "torchqat": lambda: torchqat.fake_quantize(x, scale, zp_int, QMIN, QMAX, axis),
        "pytorch": torch_fq,
        "clone": lambda: x.clone(),
        "copy_": lambda: out.copy_(x),
    }


def ste_train_cases(x, scale, zp_int, per_channel):
    axis = 1 if per_channel else None
    xg = x.clone().requires_grad_()
    dy = torch.randn_like(x)

    def ours():
        xg.grad = None
        torchqat.fake_quantize(xg, scale, zp_int, QMIN, QMAX, axis).backward(dy)

    def theirs():
        xg.grad = None
        if per_channel:
            y = torch.fake_quantize_per_channel_affine(xg, scale, zp_int, 1, QMIN, QMAX)
        else:
            y = torch.fake_quantize_per_tensor_affine(xg, scale, zp_int, QMIN, QMAX)
        y.backward(dy)

    return {"torchqat": ours, "pytorch": theirs}


def lsq_train_cases(x, scale, zp_int, per_channel):
    axis = 1 if per_channel else None
    xg = x.clone().requires_grad_()
    s = scale.clone().requires_grad_()
    z = zp_int.float().requires_grad_()
    dy = torch.randn_like(x)
    per_scale = x.numel() // scale.numel()
    gf = 1.0 / (per_scale * QMAX) ** 0.5

    def reset():
        xg.grad = None
        s.grad = None
        z.grad = None

    def ours():
        reset()
        torchqat.fake_quantize_lsq(xg, s, z, QMIN, QMAX, axis, gf).backward(dy)

    def theirs():
        reset()
        if per_channel:
            y = torch._fake_quantize_learnable_per_channel_affine(xg, s, z, 1, QMIN, QMAX, gf)
        else:
            y = torch._fake_quantize_learnable_per_tensor_affine(xg, s, z, QMIN, QMAX, gf)
        y.backward(dy)

    return {"torchqat": ours, "pytorch": theirs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--sizes", nargs="+", default=["1M", "4M", "16M"], choices=list(SHAPES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header(args.threads))
    print()
    print(f"{'size':>5} {'scheme':>11} {'pass':>9} | {'torchqat ms':>11} {'pytorch ms':>10} "
          f"{'clone ms':>9} {'copy_ ms':>9} | {'speed-up vs pytorch':>19} {'ours/clone':>10} "
          f"{'ours/copy_':>10}")
    results = {}
    for size in args.sizes:
        shape = SHAPES[size]
        for per_channel in (False, True):
            scheme = "per-channel" if per_channel else "per-tensor"
            x, scale, zp = make_inputs(shape, per_channel)
            rows = [
                ("forward", forward_cases(x, scale, zp, per_channel)),
                ("STE f+b", ste_train_cases(x, scale, zp, per_channel)),
                ("LSQ f+b", lsq_train_cases(x, scale, zp, per_channel)),
            ]
            for name, cases in rows:
                reps = args.reps if size != "16M" else max(5, args.reps // 3)
                t = time_interleaved(cases, reps=reps)
                results[(size, scheme, name)] = t
                clone = t.get("clone")
                copy = t.get("copy_")
                print(
                    f"{size:>5} {scheme:>11} {name:>9} | {t['torchqat']*1e3:11.3f} "
                    f"{t['pytorch']*1e3:10.3f} "
                    f"{clone*1e3 if clone else float('nan'):9.3f} "
                    f"{copy*1e3 if copy else float('nan'):9.3f} | "
                    f"{t['pytorch']/t['torchqat']:18.2f}x "
                    f"{t['torchqat']/clone if clone else float('nan'):10.2f} "
                    f"{t['torchqat']/copy if copy else float('nan'):10.2f}",
                    flush=True,
                )
    print()
    print("Targets (issue 2):")
    for size in args.sizes:
        fwd = results[(size, "per-tensor", "forward")]
        fwd_c = results[(size, "per-channel", "forward")]
        lsq = results[(size, "per-tensor", "LSQ f+b")]
        lsq_c = results[(size, "per-channel", "LSQ f+b")]
        print(f"  {size:>4}: forward/clone = {fwd['torchqat']/fwd['clone']:.2f} (target <= 1.3 at 16M); "
              f"LSQ f+b speed-up = {lsq['pytorch']/lsq['torchqat']:.1f}x per-tensor, "
              f"{lsq_c['pytorch']/lsq_c['torchqat']:.1f}x per-channel (target >= 3); "
              f"per-channel/per-tensor forward = {fwd_c['torchqat']/fwd['torchqat']:.2f}, "
              f"LSQ = {lsq_c['torchqat']/lsq['torchqat']:.2f} (target <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
