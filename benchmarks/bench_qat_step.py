"""One QAT training step (forward, backward, SGD step) in float, with torchqat QAT and with
PyTorch's own eager QAT (torch.ao.quantization.prepare_qat, x86 default QAT qconfig), measured
side by side (interleaved) in one run.

Models: torchvision's resnet18 at 112x112, batch 8 (needs torchvision, i.e. the CUDA-torch
environment `make cuda-check` creates: `make bench-qat`), and a small YOLO-style detector built
from code (tests/qat_models.py's TinyDetector) at 128x128, batch 8.

Targets (issue 3): torchqat step <= 1.15 x float; faster than PyTorch's eager QAT.

    python benchmarks/bench_qat_step.py [--threads N[,N...]] [--reps R] [--breakdown] [--compile]

--threads: the thread counts to run, one after the other (default: 1 and, where torch uses
more, torch's default). The ratio to float depends on it: float's convolutions gain more from a
second thread than the memory-bound fake-quant passes do, so the summary prints each.

--compile: for the detector, also float and torchqat under torch.compile (the whole module
compiled; Inductor fuses float's element-wise passes and torchqat's traceable fake-quant forward,
FakeQuantizeLsqTraceable; the LSQ backward stays an opaque operator call).

--breakdown: for the detector, also where torchqat's extra time goes. The same QAT model with
groups of quantizers switched to pass_through (weights, layer inputs, only the model's input),
timed interleaved with float and the full QAT step; the model input's quantizer with a fixed
(calibrated, not learnable) scale, set by a QATConfig override; and the full step with the model
input's scale gradient taken by the forward convolution of LSQ's map and a dot with the output
gradient (`<dout, conv(m)>`, the form before session 10) instead of the weight-gradient
convolution (`<conv_weight_grad(m, dout), W>`, torchqat/nn/input_scale_grad.py's
`_adjoint_sum`). And the "copy floor": the same model with every quantizer replaced by ATen passes
that move the bytes torchqat's operators move (`clone` forward, in-place `addcmul_` backward, a
zero scale gradient; `_CopyFloor`), the model input's scale fixed. It is what separate
fake-quant passes cost at least in eager mode, whatever their kernels; compare it with the
fixed-input-scale row.
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
from qat_models import TinyDetector, detector_loss, estimate_bn_statistics  # noqa: E402


def with_trained_bn(model, batch, passes=4):
    """``model`` with BatchNorm running statistics as a trained model has them
    (``estimate_bn_statistics``: the cumulative average over a few train-mode passes of random
    batches shaped like ``batch``). With the initial (0, 1), calibration (eval mode) would set
    scales that clip almost every activation once training starts: the QAT step would then run on
    near-constant data, which makes data-dependent operators (max-pooling) faster than on the
    float model's data and flatters the ratio."""
    generator = torch.Generator().manual_seed(1)
    return estimate_bn_statistics(
        model, lambda: model(torch.randn(batch.shape, generator=generator)), passes)


def make_step(model, batch, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    model.train()

    def step():
        loss = loss_fn(model(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def torchqat_model(model, batch, config=None):
    qmodel = tq.prepare_qat(model, config)
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


def _with_forward_conv_adjoint(step):
    """`step` with the input-scale adjoint summed as <dout, conv2d(m, W)> while it runs."""
    import torchqat.nn.input_scale_grad as isg

    weight_grad_form = isg._adjoint_sum

    def forward_conv_form(grad_out, m, weight, stride, padding, dilation, groups):
        return isg._dot(grad_out, F.conv2d(m, weight, None, stride, padding, dilation, groups))

    def run():
        isg._adjoint_sum = forward_conv_form
        try:
            step()
        finally:
            isg._adjoint_sum = weight_grad_form

    return run


class _CopyFloor(torch.autograd.Function):
    """What one separate fake-quant pass costs at least in eager mode: the bytes torchqat's
    operators move, moved by ATen's plainest passes. The forward reads ``x`` and writes a new
    tensor (``clone``; the fake-quant forward does the same) and saves ``x``; the backward reads
    the incoming gradient and ``x`` and writes over the gradient (``addcmul_`` with a zero
    factor, like the in-place LSQ backward), and the scale gets a gradient (zeros), so the
    optimizer updates as many parameters. The values pass through unchanged."""

    @staticmethod
    def forward(ctx, x, scale, zero):
        ctx.save_for_backward(x, zero)
        ctx.scale_shape = scale.shape
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        x, zero = ctx.saved_tensors
        return grad.addcmul_(x, zero), grad.new_zeros(ctx.scale_shape), None


def copy_floor_model(qmodel, model_input_quantizer):
    """A copy of ``qmodel`` whose quantizers are :class:`_CopyFloor` passes. The model input's
    quantizer becomes a plain ``clone`` without a scale gradient (like the fixed-scale row: its
    learnable scale's gradient is a convolution of its own, timed by the rows above)."""
    from torchqat.quantizers import FakeQuantizer

    floor = copy.deepcopy(qmodel)
    zero = torch.zeros(1)
    for n, m in floor.named_modules():
        if not isinstance(m, FakeQuantizer):
            continue
        if n == model_input_quantizer:
            m.learnable = False   # QuantConv2d then takes its plain forward
            m.forward = lambda x: x.clone()
        else:
            m.forward = lambda x, m=m: _CopyFloor.apply(x, m.scale, zero)
    return floor


def breakdown_case(name, model, batch, loss_fn, reps):
    """The QAT step with groups of quantizers in pass_through, against float and full QAT."""
    from torchqat.quantizers import FakeQuantizer

    qmodel = torchqat_model(model, batch)
    quantizers = [(n, m) for n, m in qmodel.named_modules() if isinstance(m, FakeQuantizer)]
    # The first input quantizer in module order is the model input's (the stem convolution).
    first_input = next((n for n, m in quantizers if m.role != "weight"), None)
    groups = {
        "weights off": lambda n, m: m.role == "weight",
        "inputs off": lambda n, m: m.role != "weight",
        f"only {first_input} off": lambda n, m: n == first_input,
    }
    candidates = {"float": make_step(copy.deepcopy(model), batch, loss_fn),
                  "torchqat": make_step(qmodel, batch, loss_fn)}
    candidates["stem scale by forward conv"] = _with_forward_conv_adjoint(
        make_step(copy.deepcopy(qmodel), batch, loss_fn))
    # The model input's quantizer with a calibrated, fixed scale (docs/qat_workflow.md): no
    # scale gradient, so no adjoint convolution.
    first_layer = first_input.rsplit(".input_quantizer", 1)[0]
    fixed = tq.QATConfig(overrides={first_layer: {"activation": {"learnable": False}}})
    candidates[f"{first_layer} input scale fixed"] = make_step(
        torchqat_model(model, batch, fixed), batch, loss_fn)
    candidates["copy floor (model input scale fixed)"] = make_step(
        copy_floor_model(qmodel, first_input), batch, loss_fn)
    counts = {}
    for label, switched_off in groups.items():
        variant = copy.deepcopy(qmodel)
        n_off = 0
        for n, m in variant.named_modules():
            if isinstance(m, FakeQuantizer) and switched_off(n, m):
                m.mode = "pass_through"
                n_off += 1
        counts[label] = n_off
        candidates[label] = make_step(variant, batch, loss_fn)
    times = time_interleaved(candidates, reps=reps, warmup=2)
    base = times["float"]
    print(f"\n{name}: where torchqat's extra time goes (quantizers switched to pass_through)")
    print(f"  {'':40s} {'ms/step':>9s} {'x float':>8s} {'quantizers off':>15s}")
    for k, t in times.items():
        off = str(counts[k]) if k in counts else ""
        print(f"  {k:40s} {t * 1e3:9.1f} {t / base:8.3f} {off:>15s}")
    return times


def compile_case(name, model, batch, loss_fn, reps):
    """Float and torchqat, eager and under torch.compile (the whole module), interleaved."""
    qmodel = torchqat_model(model, batch)
    candidates = {"float": make_step(copy.deepcopy(model), batch, loss_fn),
                  "torchqat": make_step(copy.deepcopy(qmodel), batch, loss_fn),
                  "float compiled": make_step(torch.compile(copy.deepcopy(model)), batch, loss_fn),
                  "torchqat compiled": make_step(torch.compile(qmodel), batch, loss_fn)}
    for step in candidates.values():  # compile outside the timing
        step()
    times = time_interleaved(candidates, reps=reps, warmup=2)
    print(f"\n{name}: eager and torch.compile")
    print(f"  {'':20s} {'ms/step':>9s} {'x float':>8s} {'x its float':>12s}")
    for k, t in times.items():
        own = times["float compiled"] if k.endswith("compiled") else times["float"]
        print(f"  {k:20s} {t * 1e3:9.1f} {t / times['float']:8.2f} {t / own:12.2f}")
    return times


def thread_counts(arg: str | None):
    """``--threads``: "2" or "1,2"; by default 1 and torch's default where that is more."""
    if arg is None:
        default = torch.get_num_threads()
        return [1] if default == 1 else [1, default]
    try:
        counts = [int(t) for t in arg.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise SystemExit(f"bench_qat_step.py: --threads must be positive integers separated by "
                         f"commas, got {arg!r}")
    return counts


def run_all(threads, reps, breakdown, compiled=False):
    torch.set_num_threads(threads)
    print(header(threads))
    torch.manual_seed(0)
    results = {}

    try:
        import torchvision
        from torchvision.models.quantization import resnet18 as quantizable_resnet18
    except Exception as err:  # noqa: BLE001
        print(f"\nresnet18: skipped (torchvision unavailable: {type(err).__name__}); "
              "run `make bench-qat` for the environment that has it")
    else:
        batch = torch.randn(8, 3, 112, 112)
        model = with_trained_bn(torchvision.models.resnet18(weights=None, num_classes=10), batch)
        target = torch.arange(8) % 10

        def ao_resnet():
            # torchvision's quantizable resnet18 (same weights): QuantStub/DeQuantStub,
            # FloatFunctional adds, conv-bn-relu fused for QAT.
            q = quantizable_resnet18(weights=None, quantize=False, num_classes=10)
            q.load_state_dict(model.state_dict())
            return torch_ao_model(q, fuse=lambda m: m.fuse_model(is_qat=True))

        results["resnet18"] = run_case("resnet18 112x112 batch 8", model, batch,
                                       lambda out: F.cross_entropy(out, target), reps,
                                       ao_model=ao_resnet)

    det_batch = torch.randn(8, 3, 128, 128)
    detector = with_trained_bn(TinyDetector(num_classes=3), det_batch)
    results["TinyDetector"] = run_case("YOLO-style detector (TinyDetector) 128x128 batch 8",
                                       detector, det_batch, detector_loss, reps)
    if breakdown:
        breakdown_case("YOLO-style detector (TinyDetector) 128x128 batch 8", detector, det_batch,
                       detector_loss, reps)
    if compiled:
        compile_case("YOLO-style detector (TinyDetector) 128x128 batch 8", detector, det_batch,
                     detector_loss, reps)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default=None,
                        help="thread counts, e.g. 1 or 1,2 (default: 1 and torch's default)")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--breakdown", action="store_true",
                        help="also split the detector's QAT overhead by quantizer group")
    parser.add_argument("--compile", action="store_true",
                        help="also time the detector's float and QAT steps under torch.compile "
                             "(compiling takes minutes)")
    args = parser.parse_args()
    counts = thread_counts(args.threads)
    summary = {}
    for i, threads in enumerate(counts):
        if i:
            print()
        summary[threads] = run_all(threads, args.reps, args.breakdown, args.compile)

    print("\nsummary: torchqat step / float step (target <= 1.15)")
    for threads, results in summary.items():
        ratios = ", ".join(f"{name} {t['torchqat'] / t['float']:.2f}"
                           for name, t in results.items())
        print(f"  {threads} thread{'s' if threads > 1 else ''}: {ratios}")


if __name__ == "__main__":
    main()
