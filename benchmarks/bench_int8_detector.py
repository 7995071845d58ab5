"""The detector's INT8 model on the CPU, layer by layer: TinyYOLO (examples/detector, width 16)
at 64x64, batch 8, converted with tq.convert, against its float model, one thread.

    python benchmarks/bench_int8_detector.py [--reps 30] [--layers 12] [--threads 1]
                                             [--unfused-silu] [--seven-bit]

Whole model: float and INT8 forwards, eager and TorchScript (float frozen; the INT8 model as
tq.export_torchscript scripts it), interleaved (A B C D A B ...), medians. Per layer: every leaf
module's forward timed with perf_counter from forward hooks (hooks add a few us each, alike for
both models), medians over the repetitions, the slowest layers first; the INT8 layer's time
includes its input quantization, im2col, GEMM, epilogue and SiLU. Weights are the random
initialisation, calibrated on random images (scales affect accuracy, not the kernels' speed).
--unfused-silu adds the INT8 model with SiLU as a separate in-place pass after each layer (what
the CPU operators did before the SiLU moved into the epilogue), eager and TorchScript.
--seven-bit adds the same model with 7-bit activations ([0, 127]), which convert packs for the
avx2_u7 kernel on AVX2 CPUs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))
from _common import header, time_interleaved  # noqa: E402

import torchqat as tq  # noqa: E402
from detector import TinyYOLO  # noqa: E402


def build(batch: int, config=None):
    torch.manual_seed(0)
    model = TinyYOLO(10, 1, 16).eval()
    qmodel = tq.prepare_qat(model, config if config is not None else tq.QATConfig())
    images = [torch.rand(batch, 1, 64, 64) for _ in range(2)]
    tq.calibrate(qmodel, images, progress=False)
    imodel = tq.convert(qmodel.eval()).eval()
    return model, imodel, images[0]


def with_unfused_silu(imodel):
    """A copy of the INT8 model whose SiLU runs as an in-place pass after each layer instead of in
    its epilogue: every Conv block's Int8Conv2d back to activation "none" and its `act` (the
    nn.Identity convert left there) an nn.SiLU(inplace=True) again."""
    unfused = copy.deepcopy(imodel)
    for parent in unfused.modules():
        conv = getattr(parent, "conv", None)
        if isinstance(conv, tq.Int8Conv2d) and conv.activation == "silu":
            conv.activation = "none"
            parent.act = torch.nn.SiLU(inplace=True)
    return unfused


def layer_times(model, x, reps: int):
    samples = defaultdict(list)
    start = {}
    handles = []
    for name, mod in model.named_modules():
        if len(list(mod.children())) > 0:
            continue

        def pre(m, inp, name=name):
            start[name] = time.perf_counter()

        def post(m, inp, out, name=name):
            samples[name].append(time.perf_counter() - start[name])

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    with torch.no_grad():
        for _ in range(reps):
            model(x)
    for h in handles:
        h.remove()
    return {k: statistics.median(v) * 1e3 * len(v) / reps for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--layers", type=int, default=12, help="slowest INT8 layers to list")
    ap.add_argument("--unfused-silu", action="store_true",
                    help="also time the INT8 model with SiLU as a separate pass")
    ap.add_argument("--seven-bit", action="store_true",
                    help="also time the INT8 model of a QAT model with 7-bit activations")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(header(args.threads))
    model, imodel, x = build(args.batch)
    # TorchScript: the deployment form (and no eager per-op Python overhead).
    fmodel_ts = torch.jit.freeze(torch.jit.script(model))
    imodel_ts = torch.jit.script(imodel)
    candidates = {"float": lambda: model(x), "int8": lambda: imodel(x),
                  "float_ts": lambda: fmodel_ts(x), "int8_ts": lambda: imodel_ts(x)}
    if args.unfused_silu:
        unfused = with_unfused_silu(imodel)
        unfused_ts = torch.jit.script(unfused)
        with torch.no_grad():
            assert torch.allclose(unfused(x), imodel(x), rtol=1e-4, atol=1e-5)
        candidates.update({"int8_unfused": lambda: unfused(x),
                           "int8_unfused_ts": lambda: unfused_ts(x)})
    if args.seven_bit:
        config = tq.QATConfig(activation=tq.QuantSpec(bits=7, symmetric=False, learnable=True))
        _, imodel7, _ = build(args.batch, config)
        kernels = sorted({m.packed.kernel() for m in imodel7.modules() if hasattr(m, "packed")})
        print(f"7-bit activations: kernels {', '.join(kernels)}")
        imodel7_ts = torch.jit.script(imodel7)
        candidates.update({"int8_7bit": lambda: imodel7(x), "int8_7bit_ts": lambda: imodel7_ts(x)})
    with torch.no_grad():
        t = time_interleaved(candidates, reps=args.reps, warmup=3)
    print(f"\nTinyYOLO 64x64, batch {args.batch}, medians of {args.reps} interleaved runs:")
    print(f"  eager      : float {t['float'] * 1e3:.2f} ms, INT8 {t['int8'] * 1e3:.2f} ms, "
          f"float/INT8 = {t['float'] / t['int8']:.2f}x")
    print(f"  TorchScript: float {t['float_ts'] * 1e3:.2f} ms (frozen), INT8 "
          f"{t['int8_ts'] * 1e3:.2f} ms, float/INT8 = {t['float_ts'] / t['int8_ts']:.2f}x; "
          f"eager float / TorchScript INT8 = {t['float'] / t['int8_ts']:.2f}x")
    if args.unfused_silu:
        print(f"  SiLU as a separate pass: eager INT8 {t['int8_unfused'] * 1e3:.2f} ms "
              f"(float/INT8 = {t['float'] / t['int8_unfused']:.2f}x), TorchScript INT8 "
              f"{t['int8_unfused_ts'] * 1e3:.2f} ms (float/INT8 = "
              f"{t['float_ts'] / t['int8_unfused_ts']:.2f}x); fused SiLU is "
              f"{t['int8_unfused'] / t['int8']:.2f}x (eager), "
              f"{t['int8_unfused_ts'] / t['int8_ts']:.2f}x (TorchScript) faster")

    if args.seven_bit:
        print(f"  7-bit activations: eager INT8 {t['int8_7bit'] * 1e3:.2f} ms (float/INT8 = "
              f"{t['float'] / t['int8_7bit']:.2f}x), TorchScript INT8 "
              f"{t['int8_7bit_ts'] * 1e3:.2f} ms (float/INT8 = "
              f"{t['float_ts'] / t['int8_7bit_ts']:.2f}x)")

    fl = layer_times(model, x, args.reps)
    il = layer_times(imodel, x, args.reps)
    # Float Conv = conv + bn + act modules; the INT8 layer replaces the three.
    def float_group(name: str) -> float:
        base = name.rsplit(".", 1)[0]
        if name.endswith(".conv"):
            return sum(fl.get(f"{base}.{p}", 0.0) for p in ("conv", "bn", "act"))
        return fl.get(name, 0.0)

    rows = sorted(il.items(), key=lambda kv: -kv[1])
    print(f"\nper-layer medians (ms), INT8 sum {sum(il.values()):.2f}, float sum "
          f"{sum(fl.values()):.2f}; float column = conv + bn + act")
    print(f"{'layer':32} {'type':14} {'int8':>7} {'float':>7}")
    for name, v in rows[:args.layers]:
        mod = dict(imodel.named_modules())[name]
        print(f"{name:32} {type(mod).__name__:14} {v:7.3f} {float_group(name):7.3f}")


if __name__ == "__main__":
    main()
