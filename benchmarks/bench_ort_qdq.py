"""ONNX Runtime running torchqat's QDQ export (INT8) against ONNX Runtime FP32 and eager PyTorch
FP32, on the digits CNN and a small Conv-BN-SiLU model, batch 1 and 8, measured interleaved.

    python benchmarks/bench_ort_qdq.py [--threads 1] [--reps 50]

The INT8 session uses ORT's exact uint8 x int8 path (``session.x64quantprecision=1``, see
_ort.py); ``ort int8 fast`` is ORT's default path, which saturates on CPUs without VNNI (timed for
reference; its output is checked and the largest error printed). Ratios are eager FP32 time /
candidate time (> 1: faster than eager FP32).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from _common import header, time_interleaved  # noqa: E402
from _ort import fp32_session, ort_runner, qdq_session  # noqa: E402

import torchqat as tq  # noqa: E402


class ConvBNSiLU(nn.Sequential):
    def __init__(self, cin, cout, k=3, s=1):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU())


def small_conv_model():
    """A YOLO-like stem: 96x96x3 -> 6x6x128, then a 1x1 head."""
    return nn.Sequential(ConvBNSiLU(3, 16, 3, 2), ConvBNSiLU(16, 32, 3, 2), ConvBNSiLU(32, 32),
                         ConvBNSiLU(32, 64, 3, 2), ConvBNSiLU(64, 64), ConvBNSiLU(64, 128, 3, 2),
                         nn.Conv2d(128, 16, 1)), (3, 96, 96)


def digits_model():
    from classifier_qat import DigitsCNN

    return DigitsCNN(), (1, 8, 8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    print(header(args.threads))
    print(f"onnxruntime {ort.__version__}; intra_op_num_threads={args.threads}")
    print(f"{'model':10s} {'batch':>5s} {'eager fp32':>11s} {'ort fp32':>16s} "
          f"{'ort int8 exact':>16s} {'ort int8 fast':>16s}  int8 max |err| exact / fast")
    for label, make in (("digits", digits_model), ("conv96", small_conv_model)):
        torch.manual_seed(0)
        model, shape = make()
        model.eval()
        qmodel = tq.prepare_qat(model)
        tq.calibrate(qmodel, [torch.randn(8, *shape) for _ in range(4)], progress=False)
        qmodel.eval()
        example = torch.randn(2, *shape)
        fp32 = ort_runner(fp32_session(model, example, threads=args.threads))
        exact = ort_runner(qdq_session(qmodel, example, threads=args.threads))
        fast = ort_runner(qdq_session(qmodel, example, threads=args.threads, exact=False))
        for batch in (1, 8):
            x = torch.randn(batch, *shape)
            with torch.no_grad():
                ref = qmodel(x)
            errs = [float((torch.from_numpy(f(x)) - ref).abs().max()) for f in (exact, fast)]

            def eager():
                with torch.no_grad():
                    model(x)

            t = time_interleaved({"eager": eager, "fp32": lambda: fp32(x),
                                  "exact": lambda: exact(x), "fast": lambda: fast(x)},
                                 reps=args.reps, warmup=5)
            cells = [f"{t[k] * 1e3:7.3f} ms ({t['eager'] / t[k]:4.2f}x)"
                     for k in ("fp32", "exact", "fast")]
            print(f"{label:10s} {batch:5d} {t['eager'] * 1e3:8.3f} ms {cells[0]:>16s} "
                  f"{cells[1]:>16s} {cells[2]:>16s}  {errs[0]:.2g} / {errs[1]:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
