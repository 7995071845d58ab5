"""INT8 on the CPU, in one run: the Linear and Conv2d layer tables (benchmarks/bench_int8_linear.py
and bench_int8_conv.py, run as they are) and whole resnet18 at 224x224, batch 1 and 8, measured
side by side: FP32 PyTorch (channels_last), torchqat INT8 (tq.convert) with 8-bit and with 7-bit
layer inputs (the latter like for like with torch.ao's x86 default, whose activations are 7-bit),
PyTorch's own quantized x86 engine (torch.ao eager convert) while it still runs, and ONNX Runtime
on the same model as an INT8 QDQ graph (tq.export_onnx; ORT's exact u8s8 mode) and as FP32.

resnet18 needs torchvision, whose PyPI wheels are CUDA builds: `make bench-int8` runs this script
in the CUDA venv (CPU execution). Targets (issue 4): Linear M=256 >= 3x FP32; conv layers
>= 2.5x FP32; resnet18 >= 2.5x FP32 and at least as fast as ONNX Runtime and torch.ao.

    python benchmarks/bench_int8_cpu.py [--threads N] [--reps R] [--skip-layers]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torchqat as tq  # noqa: E402
from _common import header, time_interleaved  # noqa: E402


def resnet18_candidates(batch: int, threads: int):
    """{name: callable} for whole resnet18, and {name: reason} for those that do not run."""
    import torchvision
    from torchvision.models.quantization import resnet18 as quantizable_resnet18

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    calib = [torch.randn(4, 3, 224, 224) for _ in range(2)]
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    fns, missing = {}, {}

    fp32 = copy.deepcopy(model).to(memory_format=torch.channels_last)
    fns["fp32"] = lambda: fp32(x)

    qmodel = tq.prepare_qat(model)
    tq.calibrate(qmodel, calib, progress=False)
    int8_model = tq.convert(qmodel.eval())
    fns["torchqat int8"] = lambda: int8_model(x)

    # 7-bit layer inputs ([0, 127]), like torch.ao's x86 default (reduce_range): on an AVX2 CPU
    # convert's "auto" packing runs these layers on the exact avx2_u7 kernel.
    q7 = tq.prepare_qat(model, tq.QATConfig(
        activation=tq.QuantSpec(bits=7, symmetric=False, learnable=True)))
    tq.calibrate(q7, calib, progress=False)
    int8_u7 = tq.convert(q7.eval())
    fns["torchqat int8 7b"] = lambda: int8_u7(x)

    try:
        import torch.ao.quantization as ao

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = quantizable_resnet18(weights=None, quantize=False)
            q.load_state_dict(model.state_dict())
            q.eval().fuse_model()
            q.qconfig = ao.get_default_qconfig("x86")
            ao.prepare(q, inplace=True)
            for c in calib:
                q(c)
            ao.convert(q, inplace=True)
        fns["torch.ao x86"] = lambda: q(x)
    except Exception as err:  # noqa: BLE001  (report why it does not run)
        missing["torch.ao x86"] = f"{type(err).__name__}: {err}"

    try:
        from _ort import fp32_session, ort_runner, qdq_session

        qdq = ort_runner(qdq_session(qmodel, calib[0][:1], threads=threads))
        ofp = ort_runner(fp32_session(model, calib[0][:1], threads=threads))
        xc = x.contiguous()
        fns["ORT int8 QDQ"] = lambda: qdq(xc)
        fns["ORT fp32"] = lambda: ofp(xc)
    except Exception as err:  # noqa: BLE001
        missing["ORT"] = f"{type(err).__name__}: {err}"
    return fns, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--skip-layers", action="store_true",
                        help="only the whole-model table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(header(args.threads), flush=True)

    if not args.skip_layers:
        for script in ("bench_int8_linear.py", "bench_int8_conv.py"):
            print(f"\n### {script}", flush=True)
            subprocess.run([sys.executable, os.path.join(HERE, script), "--threads",
                            str(args.threads)], check=False)

    print("\n### whole resnet18, 224x224", flush=True)
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # noqa: BLE001
        print(f"skipped (torchvision unavailable: {type(err).__name__}); `make bench-int8` "
              "runs this script in the environment that has it")
        return
    for batch in (1, 8):
        fns, missing = resnet18_candidates(batch, args.threads)
        with torch.no_grad():
            times = time_interleaved(fns, reps=args.reps if batch == 1 else max(3, args.reps // 3),
                                     warmup=2)
        base = times["fp32"]
        print(f"\nbatch {batch}, {args.threads} thread(s)")
        print(f"  {'':16s} {'ms':>9s} {'FP32 / this':>12s}")
        for name, t in times.items():
            print(f"  {name:16s} {t * 1e3:9.1f} {base / t:12.2f}")
        for name, why in missing.items():
            print(f"  {name:16s} does not run: {why}")
        for variant in ("torchqat int8", "torchqat int8 7b"):
            mine = times[variant]
            print(f"  target {variant} >= 2.5x FP32: "
                  f"{'met' if base / mine >= 2.5 else 'MISSED'} ({base / mine:.2f}x)")
            for other in ("torch.ao x86", "ORT int8 QDQ"):
                if other in times:
                    print(f"    vs {other}: {times[other] / mine:.2f}x "
                          f"({'met' if mine <= times[other] else 'MISSED'})")


if __name__ == "__main__":
    main()
