"""One QAT training step (forward, backward, SGD step) in float, with torchqat QAT and with
PyTorch's own eager QAT (torch.ao.quantization.prepare_qat, x86 default QAT qconfig), measured
side by side (interleaved) in one run.

Models: torchvision's resnet18 at 112x112, batch 8 (needs torchvision, i.e. the CUDA-torch
environment `make cuda-check` creates: `make bench-qat`), and a small YOLO-style detector built
from code (tests/qat_models.py's TinyDetector) at 128x128, batch 8.

Targets (issue 3): torchqat step <= 1.15 x float; faster than PyTorch's eager QAT.

    python benchmarks/bench_qat_step.py [--threads N] [--reps R]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torchqat as tq  # noqa: E402
from _common import header, time_interleaved  # noqa: E402
from qat_models import TinyDetector, detector_loss  # noqa: E402


def make_step(model, batch, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    model.train()

    def step():
        loss = loss_fn(model(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def torchqat_model(model, batch):
    qmodel = tq.prepare_qat(model)
    tq.calibrate(qmodel, [batch], progress=False)
    return qmodel


def torch_ao_model(model, fuse=None):
    """PyTorch's eager-mode QAT, or the reason it does not run."""
    import torch.ao.quantization as tq_ao

    model = copy.deepcopy(model).train()
    if fuse is not None:
        fuse(model)
    model.qconfig = tq_ao.get_default_qat_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq_ao.prepare_qat(model, inplace=False)


def run_case(name, model, batch, loss_fn, reps, ao_model=None):
    candidates = {"float": make_step(copy.deepcopy(model), batch, loss_fn),
                  "torchqat": make_step(torchqat_model(model, batch), batch, loss_fn)}
    ao_note = ""
    try:
        ao = ao_model() if ao_model is not None else torch_ao_model(model)
        candidates["torch.ao"] = make_step(ao, batch, loss_fn)
    except Exception as err:  # noqa: BLE001  (report why PyTorch's QAT does not run)
        ao_note = f"torch.ao eager QAT does not run: {type(err).__name__}: {err}"
    times = time_interleaved(candidates, reps=reps, warmup=2)
    base = times["float"]
    print(f"\n{name}")
    print(f"  {'':10s} {'ms/step':>9s} {'x float':>8s}")
    for k, t in times.items():
        print(f"  {k:10s} {t * 1e3:9.1f} {t / base:8.2f}")
    if "torch.ao" in times:
        print(f"  torchqat vs torch.ao: {times['torch.ao'] / times['torchqat']:.2f}x faster")
    if ao_note:
        print(f"  {ao_note}")
    print(f"  target torchqat <= 1.15 x float: "
          f"{'met' if times['torchqat'] <= 1.15 * base else 'MISSED'}")
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(header(args.threads))
    torch.manual_seed(0)

    try:
        import torchvision
        from torchvision.models.quantization import resnet18 as quantizable_resnet18
    except Exception as err:  # noqa: BLE001
        print(f"\nresnet18: skipped (torchvision unavailable: {type(err).__name__}); "
              "run `make bench-qat` for the environment that has it")
    else:
        model = torchvision.models.resnet18(weights=None, num_classes=10)
        batch = torch.randn(8, 3, 112, 112)
        target = torch.arange(8) % 10

        def ao_resnet():
            # torchvision's quantizable resnet18 (same weights): QuantStub/DeQuantStub,
            # FloatFunctional adds, conv-bn-relu fused for QAT.
            q = quantizable_resnet18(weights=None, quantize=False, num_classes=10)
            q.load_state_dict(model.state_dict())
            return torch_ao_model(q, fuse=lambda m: m.fuse_model(is_qat=True))

        run_case("resnet18 112x112 batch 8", model, batch,
                 lambda out: F.cross_entropy(out, target), args.reps, ao_model=ao_resnet)

    detector = TinyDetector(num_classes=3)
    run_case("YOLO-style detector (TinyDetector) 128x128 batch 8", detector,
             torch.randn(8, 3, 128, 128), detector_loss, args.reps)


if __name__ == "__main__":
    main()
