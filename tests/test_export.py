"""tq.export_onnx (QDQ graphs checked with onnx and run in ONNX Runtime against the QAT model) and
tq.export_torchscript (save, reload, exact output).

Tolerance of ONNX Runtime against the QAT model (docs/export_onnx.md derives it). Every model here
ends in a quantized layer ``y = W_q · x_q + b`` (x_q: its fake-quantized input, step ``s_x``).
ONNX Runtime computes the same integers, but a few codes of an intermediate tensor may differ by
one step from ours: its QuantizeLinear divides by the scale where ours multiplies by ``1/s``, its
convolutions sum in another order, and with graph optimisations its fused QLinearConv / QGemm
requantize with ``s_x s_w / s_y`` and an int32-rounded bias. Each of these moves a value by float
rounding only, so a code flips only where the exact value sits on a rounding boundary, and then by
one step. If every input of the last layer is within one step, output channel ``j`` is within

    tau_j = s_x * sum_i |W_q[j, i]|        ("one quantization step of the output")

which the tests assert. Flips are rare, so the tests also assert that most outputs agree to float
rounding.
"""

import logging
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchqat as tq
import torchqat.int8  # noqa: F401  (tq.int8: quantize, pack_linear, int8_linear)
from torchqat.export import (export_onnx, export_torchscript, onnx_activation_ranges,
                             onnx_exports_activation_range, onnxruntime_session, output_step)
from torchqat.nn import QuantModuleMixin
from torchqat.quantizers import FakeQuantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from qat_models import Bottleneck, ConvBNSiLU  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- models ---------------------------------------------------------------------------------------


def linear_model():
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)), (32,)


class ConvBlockModel(nn.Module):
    """Two YOLO-style Conv-BN-SiLU blocks (one strided) and a 1x1 convolution head."""

    def __init__(self):
        super().__init__()
        self.a = ConvBNSiLU(3, 16, 3)
        self.b = ConvBNSiLU(16, 16, 3, 2)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.b(self.a(x)))


class ResidualConcatUpsample(nn.Module):
    """A residual bottleneck, a strided level, nearest upsampling, concatenation, a 1x1 head."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBNSiLU(3, 16, 3, 2)
        self.res = Bottleneck(16)
        self.down = ConvBNSiLU(16, 32, 3, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = ConvBNSiLU(48, 16, 1)
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        a = self.res(self.stem(x))
        return self.head(self.fuse(torch.cat([self.up(self.down(a)), a], dim=1)))


def digits_model():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        from classifier_qat import DigitsCNN
    finally:
        sys.path.pop(0)
    return DigitsCNN(), (1, 8, 8)


MODELS = {
    "linear": linear_model,
    "conv_bn_silu": lambda: (ConvBlockModel(), (3, 16, 16)),
    "residual_concat_upsample": lambda: (ResidualConcatUpsample(), (3, 32, 32)),
    "digits_cnn": digits_model,
}


def randomise_batchnorm(model, generator):
    # Fresh BatchNorms are identities; give them statistics so that folding-like bugs show.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=generator) * 0.6 - 0.3)


def calibrated(name, config=None, seed=0):
    """``(qat_model, input_shape)``: prepared and calibrated, in eval mode."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model, shape = MODELS[name]()
    with torch.no_grad():
        randomise_batchnorm(model, g)
    qmodel = tq.prepare_qat(model.eval(), config)
    tq.calibrate(qmodel, [torch.randn(8, *shape, generator=g) for _ in range(4)], progress=False)
    return qmodel.eval(), shape


def ort_session(path, optimize, threads=1):
    # exact: on CPUs without VNNI, ORT's fast u8 x s8 kernels saturate (see onnxruntime_session).
    return onnxruntime_session(path, threads, exact=True, optimize=optimize)


def run_ort(session, x):
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def assert_within_one_step(got, expected, tau, sparse=False):
    shape = [1, -1] + [1] * (expected.dim() - 2)
    err = (got - expected).abs()
    bound = tau.reshape(shape) + 1e-5 * expected.abs().max()
    assert (err <= bound).all(), (
        f"ONNX Runtime differs from the QAT model by {err.max().item():.4g}, more than one "
        f"output step (ratio {(err / bound).max().item():.3f})")
    if sparse:
        # Small models run without ORT's requantizing kernels: a code flips only at a rounding
        # tie, so nearly all outputs agree to float rounding. (Not so in a large model, where
        # one flip anywhere reaches every output of its sample.)
        exact = err <= 1e-5 * expected.abs().max()
        assert exact.float().mean() >= 0.9, f"only {exact.float().mean():.3f} of outputs agree"


# -- the graph ------------------------------------------------------------------------------------


def _graph_facts(proto):
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = list(proto.graph.node)
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    return inits, nodes, attrs


@pytest.mark.parametrize("dynamo", [pytest.param(True, id="dynamo"),
                                    pytest.param(False, id="torchscript")])
def test_graph_is_qdq_with_int8_weights_per_channel(tmp_path, dynamo):
    qmodel, shape = calibrated("conv_bn_silu")
    path = tmp_path / "m.onnx"
    # BatchNorm folding rescales the weight scales; test_batchnorm_folds_... covers it.
    proto = export_onnx(qmodel, torch.randn(2, *shape), path, opset=18 if dynamo else 17,
                        dynamo=dynamo, fold_batchnorm=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    inits, nodes, attrs = _graph_facts(proto)
    layers = [(n, m) for n, m in qmodel.named_modules() if isinstance(m, QuantModuleMixin)]

    q_nodes = [(n, a) for n, a in zip(nodes, attrs) if n.op_type == "QuantizeLinear"]
    dq_nodes = [(n, a) for n, a in zip(nodes, attrs) if n.op_type == "DequantizeLinear"]
    assert len(q_nodes) == len(layers)                      # one per input quantizer
    assert len(dq_nodes) == 2 * len(layers)                 # + one per folded weight

    # No float weight is left: the convolution weights are int8 codes feeding DequantizeLinear.
    float_weights = [k for k, v in inits.items() if v.dtype == "float32" and v.ndim == 4]
    assert float_weights == []
    weight_dqs = [(n, a) for n, a in dq_nodes if n.input[0] in inits]
    assert len(weight_dqs) == len(layers)
    by_shape = {tuple(inits[n.input[0]].shape): (n, a) for n, a in weight_dqs}
    for name, layer in layers:
        node, a = by_shape[tuple(layer.weight.shape)]
        codes = inits[node.input[0]]
        assert codes.dtype == "int8" and a.get("axis", 1) == 0
        wq = layer.weight_quantizer
        expected_codes = tq.int8.quantize(layer.weight.detach(), wq.effective_scale(),
                                          wq.effective_zero_point(), wq.quant_min, wq.quant_max,
                                          wq.axis)
        assert torch.equal(torch.from_numpy(codes), expected_codes), name
        assert torch.equal(torch.from_numpy(inits[node.input[1]]), wq.effective_scale()), name
        assert (inits[node.input[2]] == 0).all() and inits[node.input[2]].dtype == "int8"

    # Activations: uint8 per-tensor (scalar scale and zero point) with the quantizers' values.
    act_params = sorted((float(inits[n.input[1]]), int(inits[n.input[2]])) for n, _ in q_nodes)
    expected = sorted((float(m.input_quantizer.effective_scale()),
                       int(m.input_quantizer.effective_zero_point())) for _, m in layers)
    assert act_params == expected
    for n, _ in q_nodes:
        assert inits[n.input[1]].shape == () and inits[n.input[2]].dtype == "uint8"
    # Every Q/DQ node has its own parameters (ORT's AVX2 s8->u8 rewrite fails on shared ones).
    params = [i for n, _ in q_nodes + dq_nodes for i in n.input[1:]]
    assert len(params) == len(set(params))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("optimize", [pytest.param(False, id="ort_plain"),
                                      pytest.param(True, id="ort_optimized")])
def test_onnxruntime_agrees_with_qat_model(tmp_path, name, optimize):
    qmodel, shape = calibrated(name)
    path = tmp_path / f"{name}.onnx"
    export_onnx(qmodel, torch.randn(1, *shape), path, opset=17, dynamo=False)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = qmodel(x)
    got = run_ort(ort_session(path, optimize), x)
    assert got.shape == expected.shape
    assert_within_one_step(got, expected, output_step(qmodel), sparse=not optimize)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["residual_concat_upsample", "digits_cnn"])
def test_onnxruntime_agrees_dynamo_exporter(tmp_path, name):
    qmodel, shape = calibrated(name, seed=1)
    path = tmp_path / f"{name}.onnx"
    export_onnx(qmodel, torch.randn(1, *shape), path)   # dynamo, opset 18
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = qmodel(x)
    assert_within_one_step(run_ort(ort_session(path, True), x), expected, output_step(qmodel))


def test_digits_cnn_on_digits_predictions_agree(tmp_path):
    """On real digit images, ORT's INT8 graph predicts what the QAT model predicts."""
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        from classifier_qat import load_digits_tensors
    finally:
        sys.path.pop(0)
    x_train, _, x_test, _ = load_digits_tensors(0)
    torch.manual_seed(0)
    model, _ = digits_model()
    qmodel = tq.prepare_qat(model.eval())
    tq.calibrate(qmodel, [x_train[i:i + 64] for i in range(0, 256, 64)], progress=False)
    qmodel.eval()
    path = tmp_path / "digits.onnx"
    export_onnx(qmodel, x_test[:1], path, dynamo=False, opset=17)
    with torch.no_grad():
        expected = qmodel(x_test)
    got = run_ort(ort_session(path, True), x_test)
    assert_within_one_step(got, expected, output_step(qmodel))
    # A prediction may only change where the top two logits are within the tolerance.
    top2 = expected.topk(2, dim=1).values
    close = (top2[:, 0] - top2[:, 1]) <= 2 * output_step(qmodel).max()
    assert ((got.argmax(1) == expected.argmax(1)) | close).all()


@pytest.mark.parametrize("fold", [True, False])
def test_batchnorm_folds_into_weight_scales(tmp_path, fold):
    """BatchNorm after a quantized convolution folds into the per-channel DequantizeLinear scale
    (codes keep their magnitude; a negative BatchNorm gain flips their sign) and the bias."""
    qmodel, shape = calibrated("conv_bn_silu")
    with torch.no_grad():
        qmodel.a.bn.weight[::3] *= -1          # negative gains: the codes change sign
    path = tmp_path / "m.onnx"
    proto = export_onnx(qmodel, torch.randn(2, *shape), path, dynamo=False, opset=17,
                        fold_batchnorm=fold)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == (0 if fold else 2)
    inits, nodes, attrs = _graph_facts(proto)
    dq = {tuple(inits[n.input[0]].shape): (n, a) for n, a in zip(nodes, attrs)
          if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    node, a = dq[tuple(qmodel.a.conv.weight.shape)]
    wq, bn = qmodel.a.conv.weight_quantizer, qmodel.a.bn
    codes = tq.int8.quantize(qmodel.a.conv.weight.detach(), wq.effective_scale(),
                             wq.effective_zero_point(), wq.quant_min, wq.quant_max, wq.axis)
    f = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    if fold:
        sign = torch.where(f < 0, -1, 1).to(torch.int8).reshape(-1, 1, 1, 1)
        assert torch.equal(torch.from_numpy(inits[node.input[0]]), codes * sign)
        torch.testing.assert_close(torch.from_numpy(inits[node.input[1]]),
                                   wq.effective_scale() * f.abs())
        assert a["axis"] == 0
    else:
        assert torch.equal(torch.from_numpy(inits[node.input[0]]), codes)
    x = torch.randn(8, *shape)
    with torch.no_grad():
        expected = qmodel(x)
    for optimize in (False, True):
        assert_within_one_step(run_ort(ort_session(path, optimize), x), expected,
                               output_step(qmodel), sparse=not optimize)


def test_dynamic_batch(tmp_path):
    qmodel, shape = calibrated("conv_bn_silu")
    path = tmp_path / "m.onnx"
    export_onnx(qmodel, torch.randn(1, *shape), path, dynamo=False, opset=17)
    session = ort_session(path, False)
    for batch in (1, 3, 8):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = qmodel(x)
        assert_within_one_step(run_ort(session, x), expected, output_step(qmodel),
                               sparse=True)


def test_four_bit_weights_fold_into_int8(tmp_path):
    """A 4-bit weight is exact as int8 codes in [-8, 7] (no clamping needed at run time)."""
    config = tq.QATConfig(weight=tq.QuantSpec(bits=4, symmetric=True, per_channel=True))
    qmodel, shape = calibrated("conv_bn_silu", config)
    path = tmp_path / "m.onnx"
    proto = export_onnx(qmodel, torch.randn(2, *shape), path, dynamo=False, opset=17)
    inits, nodes, _ = _graph_facts(proto)
    codes = [inits[n.input[0]] for n in nodes
             if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert codes and all(c.dtype == "int8" and c.min() >= -8 and c.max() <= 7 for c in codes)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        expected = qmodel(x)
    assert_within_one_step(run_ort(ort_session(path, False), x), expected, output_step(qmodel),
                           sparse=True)


def test_symmetric_int8_activations(tmp_path):
    config = tq.QATConfig(activation=tq.QuantSpec(bits=8, symmetric=True))
    qmodel, shape = calibrated("linear", config)
    path = tmp_path / "m.onnx"
    proto = export_onnx(qmodel, torch.randn(2, *shape), path, dynamo=False, opset=13)
    inits, nodes, _ = _graph_facts(proto)
    assert {inits[n.input[2]].dtype.name for n in nodes if n.op_type == "QuantizeLinear"} == \
        {"int8"}
    x = torch.randn(16, *shape)
    with torch.no_grad():
        expected = qmodel(x)
    assert_within_one_step(run_ort(ort_session(path, True), x), expected, output_step(qmodel))


# -- activation ranges narrower than their ONNX type (a Clip before QuantizeLinear) ---------------

# Activation specs whose range is inside uint8 / int8 but not all of it: QuantizeLinear alone
# would saturate at 255 / -128, so the export clamps in float first.
NARROW_ACTIVATIONS = {
    "uint7_lsq": tq.QuantSpec(bits=7, symmetric=False, learnable=True),                # [0, 127]
    "uint4": tq.QuantSpec(bits=4, symmetric=False),                                    # [0, 15]
    "int8_narrow": tq.QuantSpec(bits=8, symmetric=True, narrow_range=True),        # [-127, 127]
    "uint7_per_channel": tq.QuantSpec(bits=7, symmetric=False, per_channel=True, axis=-1),
}


def _clip_bounds(quantizer):
    """``(lo, hi)``: the range ends dequantized, ``(q - z) * s`` in float32."""
    s, z = quantizer.effective_scale().float(), quantizer.effective_zero_point()
    return (quantizer.quant_min - z).float() * s, (quantizer.quant_max - z).float() * s


@pytest.mark.parametrize("spec_name", list(NARROW_ACTIVATIONS) + ["uint8_full"])
def test_export_stand_in_is_bit_identical_to_fake_quantizer(spec_name, generator):
    """The module that replaces an activation FakeQuantizer for export (with its clamp for a
    narrow range) gives the very floats the FakeQuantizer gives: random data, data far outside
    the range, exactly at the clamp bounds, one float either side of them, and +-inf."""
    from torchqat.export import _ExportQDQ

    spec = NARROW_ACTIVATIONS.get(spec_name, tq.QuantSpec(bits=8, symmetric=False))
    qmodel, _ = calibrated("linear", tq.QATConfig(activation=spec))
    for layer in (qmodel[0], qmodel[2]):
        q, n = layer.input_quantizer, layer.in_features
        stand_in = _ExportQDQ(q, "input_quantizer", 17)
        assert stand_in.narrow == (spec_name != "uint8_full")
        lo, hi = (b.expand(n) for b in _clip_bounds(q))   # per-tensor, or per column
        inf = torch.full((n,), float("inf"))
        width = float((hi - lo).max())
        x = torch.cat([
            torch.randn(64, n, generator=generator) * width,
            (torch.rand(64, n, generator=generator) * 40 - 20) * width,   # far outside
            torch.stack([lo, hi, torch.nextafter(lo, -inf), torch.nextafter(lo, inf),
                         torch.nextafter(hi, -inf), torch.nextafter(hi, inf), 10 * lo - width,
                         10 * hi + width, -inf, inf]),
        ])
        with torch.no_grad():
            want = q(x)
            got = stand_in(x)
        assert torch.equal(got, want), (got - want).abs().max()
        # The bounds are the values the quantizer clamps to.
        assert torch.equal(want[-2], lo) and torch.equal(want[-1], hi)


# (spec, dynamo): both exporters for a per-tensor and a per-channel range, the TorchScript one
# (fast) for the others.
NARROW_EXPORTS = [pytest.param(name, False, id=f"{name}-torchscript")
                  for name in NARROW_ACTIVATIONS] + \
    [pytest.param(name, True, id=f"{name}-dynamo", marks=pytest.mark.slow)
     for name in ("uint7_lsq", "uint7_per_channel")]


@pytest.mark.parametrize("spec_name, dynamo", NARROW_EXPORTS)
def test_narrow_activation_range_exports_with_clip(tmp_path, spec_name, dynamo):
    """A 7-bit, 4-bit or [-127, 127] activation exports as Clip -> QuantizeLinear ->
    DequantizeLinear (per channel: Max -> Min, whose bounds broadcast along the axis), and ONNX
    Runtime agrees with the QAT model (and tq.convert's INT8 model) within one output step also
    on inputs 10 times the calibrated range, where the quantizers clamp: without the clamp,
    QuantizeLinear would saturate at its type's end instead (255 or -128), far more than a
    step away."""
    spec = NARROW_ACTIVATIONS[spec_name]
    qmodel, shape = calibrated("linear", tq.QATConfig(activation=spec))
    path = tmp_path / "m.onnx"
    proto = export_onnx(qmodel, torch.randn(2, *shape), path, opset=18 if dynamo else 17,
                        dynamo=dynamo)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    inits, nodes, attrs = _graph_facts(proto)
    ops = [n.op_type for n in nodes]
    # One clamp per input quantizer (the linear model has two), to the dequantized range ends.
    # (Its ReLU exports as Relu, which the dynamo exporter's optimiser may merge into the Clip
    # that follows: Clip(Relu(x), lo, hi) = Clip(x, max(lo, 0), hi). So lo is not compared
    # per-tensor.)
    constants = dict(inits, **{n.output[0]: numpy_helper.to_array(a["value"])
                               for n, a in zip(nodes, attrs) if n.op_type == "Constant"})
    quantizers = [qmodel[0].input_quantizer, qmodel[2].input_quantizer]
    lows, highs = zip(*(_clip_bounds(q) for q in quantizers))

    def bounds(op_type, k):
        return sorted((torch.tensor(constants[n.input[k]]).flatten() for n in nodes
                       if n.op_type == op_type), key=len)

    def same(got, want):
        return len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))

    if spec.per_channel:
        assert ops.count("Clip") == 0 and ops.count("Max") == 2 and ops.count("Min") == 2
        assert same(bounds("Max", 1), list(lows)) and same(bounds("Min", 1), list(highs))
    else:
        assert ops.count("Clip") == 2 and "Max" not in ops and "Min" not in ops
        assert sorted(float(b) for b in bounds("Clip", 2)) == sorted(float(h) for h in highs)
    q_types = {inits[n.input[2]].dtype.name for n in nodes if n.op_type == "QuantizeLinear"}
    assert q_types == {"int8" if spec.symmetric else "uint8"}

    expected_models = [qmodel] + ([tq.convert(qmodel).eval()] if hasattr(tq, "convert") else [])
    tau = output_step(qmodel)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(16, *shape, generator=g)
    for optimize in (False, True):
        session = ort_session(path, optimize)
        for scale in (1, 10):
            got = run_ort(session, x * scale)
            for model in expected_models:
                with torch.no_grad():
                    expected = model(x * scale)
                assert_within_one_step(got, expected, tau, sparse=not optimize)

    # Where the first quantizer clamps, ONNX Runtime's dequantized input of the first layer is
    # exactly the range end (a [-127, 127] activation without the clamp would be one step off
    # there, within the output bound above), and elsewhere within one step of torchqat's.
    dq = next(n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] not in inits)
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(dq.output[0],
                                                                 onnx.TensorProto.FLOAT, None))
    onnx.save(probe, str(tmp_path / "probe.onnx"))
    session = ort_session(tmp_path / "probe.onnx", optimize=False)
    x10 = x * 10
    got = torch.from_numpy(session.run([dq.output[0]], {session.get_inputs()[0].name:
                                                        x10.numpy()})[0])
    fq = qmodel[0].input_quantizer
    lo, hi = _clip_bounds(fq)
    with torch.no_grad():
        want = fq(x10)
    clamped = (x10 < lo) | (x10 > hi)
    assert clamped.float().mean() > 0.5
    assert torch.equal(got[clamped], want[clamped])
    assert ((got - want).abs() <= fq.effective_scale() * 1.001).all()


def test_narrow_per_channel_activation_clamps_along_channels(tmp_path):
    """Per-channel 7-bit activations on NCHW convolution inputs (axis 1): Max / Min bounds of
    shape [1, C, 1, 1], and ONNX Runtime agrees on inputs 10 times the calibrated range."""
    spec = tq.QuantSpec(bits=7, symmetric=False, per_channel=True, axis=1)
    qmodel, shape = calibrated("conv_bn_silu", tq.QATConfig(activation=spec))
    path = tmp_path / "m.onnx"
    proto = export_onnx(qmodel, torch.randn(2, *shape), path, dynamo=False, opset=17)
    inits, nodes, _ = _graph_facts(proto)
    channels = sorted(m.in_channels for m in qmodel.modules() if isinstance(m, QuantModuleMixin))
    for op_type in ("Max", "Min"):
        shapes = sorted(inits[n.input[1]].shape for n in nodes if n.op_type == op_type)
        assert shapes == [(1, c, 1, 1) for c in channels]
    assert not any(n.op_type == "Clip" for n in nodes)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(4)) * 10
    with torch.no_grad():
        expected = qmodel(x)
    for optimize in (False, True):
        assert_within_one_step(run_ort(ort_session(path, optimize), x), expected,
                               output_step(qmodel), sparse=not optimize)


@pytest.mark.parametrize("dynamo", [pytest.param(True, id="dynamo", marks=pytest.mark.slow),
                                    pytest.param(False, id="torchscript")])
def test_full_range_activations_add_no_clip(tmp_path, dynamo):
    """A [0, 255] activation is QuantizeLinear's own saturation: no clamp is added. The only
    Clip in the graph is the float model's ReLU6."""
    qmodel, shape = calibrated("linear")
    qmodel[1] = nn.ReLU6()
    proto = export_onnx(qmodel, torch.randn(2, *shape), tmp_path / "m.onnx",
                        opset=18 if dynamo else 17, dynamo=dynamo)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 2
    assert ops.count("Clip") == 1 and "Max" not in ops and "Min" not in ops


@pytest.mark.slow
def test_int16_narrow_activation_range_at_opset_21(tmp_path):
    """A 10-bit symmetric activation ([-512, 511]) lies inside int16, which QuantizeLinear outputs
    from opset 21: it exports as Clip -> QuantizeLinear(int16) -> DequantizeLinear, and ONNX
    Runtime agrees with the QAT model within one output step, also 10 times outside the
    calibrated range where the quantizer clamps (int16 alone would saturate at +-32767)."""
    spec = tq.QuantSpec(bits=10, symmetric=True)
    qmodel, shape = calibrated("linear", tq.QATConfig(activation=spec))
    assert (qmodel[0].input_quantizer.quant_min, qmodel[0].input_quantizer.quant_max) \
        == (-512, 511)
    path = tmp_path / "m.onnx"
    proto = export_onnx(qmodel, torch.randn(2, *shape), path, opset=21, dynamo=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    inits, nodes, _ = _graph_facts(proto)
    ops = [n.op_type for n in nodes]
    assert ops.count("Clip") == 2
    q_types = {inits[n.input[2]].dtype.name for n in nodes if n.op_type == "QuantizeLinear"
               and n.input[2] in inits and n.input[0] not in inits}
    assert q_types == {"int16"}
    tau = output_step(qmodel)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(5))
    session = ort_session(path, optimize=False)
    for scale in (1, 10):
        with torch.no_grad():
            expected = qmodel(x * scale)
        assert_within_one_step(run_ort(session, x * scale), expected, tau, sparse=True)


def test_onnx_exports_activation_range():
    """Any range inside uint8 / int8 exports from opset 13, inside int16 from opset 21."""
    fits = onnx_exports_activation_range
    for qrange in [(0, 255), (-128, 127), (0, 127), (0, 15), (-127, 127), (-8, 7), (3, 4)]:
        assert fits(*qrange, 13) and fits(*qrange, 21), qrange
    for qrange in [(-32768, 32767), (0, 511), (-255, 255), (-129, 0)]:
        assert not fits(*qrange, 20) and fits(*qrange, 21), qrange
    for qrange in [(0, 65535), (-40000, 0), (0, 2 ** 31 - 1)]:
        assert not fits(*qrange, 21), qrange
    assert not fits(0, 255, 12)
    # The full type ranges, which export without a Clip, are unchanged.
    assert onnx_activation_ranges(13) == [(0, 255), (-128, 127)]
    assert onnx_activation_ranges(21)[-1] == (-32768, 32767)
    with pytest.raises(ValueError, match=r"onnx_exports_activation_range: quant_min must be "
                                         r"<= quant_max, got \[5, 4\]"):
        fits(5, 4, 13)
    with pytest.raises(ValueError, match=r"onnx_exports_activation_range: opset must be an "
                                         r"integer, got 17.0"):
        fits(0, 255, 17.0)


def test_pass_through_quantizer_is_left_in_float(tmp_path, caplog):
    qmodel, shape = calibrated("linear")
    qmodel[0].input_quantizer.set_mode("pass_through")
    path = tmp_path / "m.onnx"
    with caplog.at_level(logging.INFO, logger="torchqat"):
        proto = export_onnx(qmodel, torch.randn(2, *shape), path, dynamo=False, opset=17)
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) == 1
    assert "pass_through" in caplog.text and "0.input_quantizer" in caplog.text
    assert "export_onnx: wrote" in caplog.text
    x = torch.randn(8, *shape)
    with torch.no_grad():
        expected = qmodel(x)
    assert_within_one_step(run_ort(ort_session(path, False), x), expected, output_step(qmodel),
                           sparse=True)


def test_model_is_not_modified(tmp_path):
    qmodel, shape = calibrated("linear")
    qmodel.train()
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    export_onnx(qmodel, torch.randn(2, *shape), tmp_path / "m.onnx", dynamo=False, opset=17)
    assert qmodel.training
    assert all(isinstance(m, FakeQuantizer) for m in (qmodel[0].input_quantizer,
                                                      qmodel[0].weight_quantizer))
    after = qmodel.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_raw_fake_quantize_call_is_translated(tmp_path):
    """A model calling torch.ops.torchqat.fake_quantize itself (no FakeQuantizer) exports too."""

    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.tensor([0.05]))
            self.register_buffer("zero_point", torch.tensor([3], dtype=torch.int32))
            self.lsq_scale = nn.Parameter(torch.full((4,), 0.02))
            self.lsq_zero_point = nn.Parameter(torch.tensor([-1.4, 0.5, 2.5, 0.0]))

        def forward(self, x):
            y = tq.fake_quantize(x, self.scale, self.zero_point, 0, 255)
            return tq.fake_quantize_lsq(y * 2, self.lsq_scale, self.lsq_zero_point, -128, 127,
                                        1)

    # The ops alone do not make a QAT model; wrap them with one calibrated layer.
    qmodel, _ = calibrated("linear")
    model = nn.Sequential(Raw(), nn.Flatten(), qmodel).eval()
    x = torch.randn(3, 4, 8)
    path = tmp_path / "raw.onnx"
    proto = export_onnx(model, x, path)
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) == 4
    with torch.no_grad():
        expected = model(x)
    assert_within_one_step(run_ort(ort_session(path, False), x), expected, output_step(qmodel),
                           sparse=True)


@pytest.mark.slow
def test_raw_fake_quantize_call_with_narrow_range_is_clipped(tmp_path):
    """Raw torchqat.fake_quantize / fake_quantize_lsq calls with ranges narrower than their ONNX
    type (per-tensor [0, 127] and [0, 15], per-channel [-127, 127]) clamp in the graph first,
    with bounds computed there from the (rounded, clamped) zero point and the scale."""

    class RawNarrow(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.tensor([0.05]))
            self.register_buffer("zero_point", torch.tensor([3], dtype=torch.int32))
            self.lsq_scale = nn.Parameter(torch.tensor([0.03]))
            self.lsq_zero_point = nn.Parameter(torch.tensor([5.5]))
            self.channel_scale = nn.Parameter(torch.full((4,), 0.02))
            self.channel_zero_point = nn.Parameter(torch.tensor([-1.4, 0.5, 2.5, 0.0]))

        def forward(self, x):
            y = tq.fake_quantize(x, self.scale, self.zero_point, 0, 127)
            y = tq.fake_quantize_lsq(y * 2 - 1, self.lsq_scale, self.lsq_zero_point, 0, 15)
            return tq.fake_quantize_lsq(y * 2, self.channel_scale, self.channel_zero_point, -127,
                                        127, 1)

    qmodel, _ = calibrated("linear")
    model = nn.Sequential(RawNarrow(), nn.Flatten(), qmodel).eval()
    x = torch.randn(16, 4, 8, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "raw.onnx"
    proto = export_onnx(model, x[:3], path)
    inits = {t.name for t in proto.graph.initializer}
    ops = [n.op_type for n in proto.graph.node]
    # (Clips of learnable zero points on constants are folded by the exporter's optimiser.)
    assert sum(n.op_type == "Clip" and n.input[0] not in inits for n in proto.graph.node) == 2
    assert ops.count("Max") == 1 and ops.count("Min") == 1 and ops.count("QuantizeLinear") == 5
    for optimize in (False, True):
        session = ort_session(path, optimize)
        for scale in (1, 10):
            with torch.no_grad():
                expected = model(x * scale)
            assert_within_one_step(run_ort(session, x * scale), expected, output_step(qmodel),
                                   sparse=not optimize)


# -- bad input ------------------------------------------------------------------------------------


def test_uncalibrated_model_is_refused(tmp_path):
    model, shape = linear_model()
    qmodel = tq.prepare_qat(model)   # weight quantizers are set, input quantizers are not
    with pytest.raises(ValueError, match=r"(?s)export_onnx: cannot export 2 .*"
                                         r"0\.input_quantizer was never calibrated"):
        export_onnx(qmodel, torch.randn(2, *shape), tmp_path / "m.onnx", dynamo=False)
    assert not (tmp_path / "m.onnx").exists()


def test_observing_quantizer_is_refused(tmp_path):
    qmodel, shape = calibrated("linear")
    qmodel[2].input_quantizer.set_mode("observe")
    with pytest.raises(ValueError, match=r"2\.input_quantizer is in mode 'observe'"):
        export_onnx(qmodel, torch.randn(2, *shape), tmp_path / "m.onnx", dynamo=False)


def test_model_without_quantizers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no FakeQuantizer"):
        export_onnx(nn.Linear(4, 4), torch.randn(2, 4), tmp_path / "m.onnx", dynamo=False)


@pytest.mark.parametrize("bits, symmetric, opset", [(16, False, 17), (16, False, 21),
                                                    (16, True, 18), (9, False, 17)])
def test_activation_range_without_onnx_type_is_refused(tmp_path, bits, symmetric, opset):
    """A range inside no ONNX type QuantizeLinear outputs at the opset: uint16 never (torch has
    no uint16 kernels), int16 (which holds 9 bits) below opset 21."""
    config = tq.QATConfig(activation=tq.QuantSpec(bits=bits, symmetric=symmetric))
    qmodel, shape = calibrated("linear", config)
    spec = config.activation
    with pytest.raises(ValueError, match=rf"0\.input_quantizer: activation range "
                                         rf"\[{spec.quant_min}, {spec.quant_max}\].*opset {opset}"):
        export_onnx(qmodel, torch.randn(2, *shape), tmp_path / "m.onnx", opset=opset,
                    dynamo=opset > 20)
    assert not (tmp_path / "m.onnx").exists()


def test_sixteen_bit_weights_need_opset_21(tmp_path):
    config = tq.QATConfig(weight=tq.QuantSpec(bits=16, symmetric=True, per_channel=True))
    qmodel, shape = calibrated("linear", config)
    with pytest.raises(ValueError, match=r"weight range \[-32768, 32767\].*int16 codes.*opset=18"):
        export_onnx(qmodel, torch.randn(2, *shape), tmp_path / "m.onnx", opset=18)


@pytest.mark.parametrize("opset", [12, 17.0, True])
def test_bad_opset(tmp_path, opset):
    qmodel, shape = calibrated("linear")
    with pytest.raises(ValueError, match=r"export_onnx: opset must be an integer >= 13"):
        export_onnx(qmodel, torch.randn(2, *shape), tmp_path / "m.onnx", opset=opset)


def test_torchscript_exporter_opset_limit(tmp_path):
    qmodel, shape = calibrated("linear")
    with pytest.raises(ValueError, match=r"dynamo=False\) writes opsets up to 20, got opset=21"):
        export_onnx(qmodel, torch.randn(2, *shape), tmp_path / "m.onnx", opset=21, dynamo=False)


def test_bad_paths(tmp_path):
    qmodel, shape = calibrated("linear")
    x = torch.randn(2, *shape)
    with pytest.raises(FileNotFoundError, match=r"export_onnx: the directory of path .*missing"):
        export_onnx(qmodel, x, tmp_path / "missing" / "m.onnx", dynamo=False)
    with pytest.raises(ValueError, match=r"export_onnx: path must name a file, got the directory"):
        export_onnx(qmodel, x, tmp_path, dynamo=False)
    with pytest.raises(ValueError, match=r"export_onnx: path must be a str or os.PathLike"):
        export_onnx(qmodel, x, 3, dynamo=False)
    with pytest.raises(ValueError, match=r"export_onnx: example_inputs must be a tensor"):
        export_onnx(qmodel, "x", tmp_path / "m.onnx", dynamo=False)
    with pytest.raises(ValueError, match=r"export_onnx: qat_model must be an nn.Module"):
        export_onnx("model", x, tmp_path / "m.onnx", dynamo=False)


# -- export_torchscript ---------------------------------------------------------------------------


class PackedLinearModel(nn.Module):
    """An INT8 model built from the operators directly (tq.convert builds such models)."""

    def __init__(self, generator):
        super().__init__()
        w = torch.randint(-127, 128, (16, 32), dtype=torch.int8, generator=generator)
        scale = torch.rand(16, generator=generator) * 0.01 + 1e-3
        self.packed = tq.int8.pack_linear(w, scale, torch.randn(16, generator=generator))
        self.register_buffer("input_scale", torch.tensor([0.02]))
        self.register_buffer("input_zero_point", torch.tensor([128], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The operator itself: tq.int8.int8_linear's `torch.ScriptObject` annotation does not
        # script.
        y = torch.ops.torchqat.int8_linear(x, self.input_scale, self.input_zero_point, 0, 255,
                                           self.packed, "relu")
        return y.sum(-1, keepdim=True) * 0.5 + y[..., :1]


def test_export_torchscript_round_trip(tmp_path, generator):
    model = PackedLinearModel(generator)
    x = torch.randn(5, 32, generator=generator)
    path = tmp_path / "int8.pt"
    scripted = export_torchscript(model, path, x)
    assert isinstance(scripted, torch.jit.ScriptModule)
    reloaded = torch.jit.load(str(path))
    assert torch.equal(reloaded(x), model(x))
    # The packed weights survive the file (def_pickle) bit for bit.
    assert torch.equal(reloaded.packed.weight(), model.packed.weight())
    # Without example inputs: saved, not checked.
    export_torchscript(model, tmp_path / "unchecked.pt")
    assert torch.equal(torch.jit.load(str(tmp_path / "unchecked.pt"))(x), model(x))


def test_export_torchscript_detects_a_different_output(tmp_path):
    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.rand_like(x)

    with pytest.raises(RuntimeError, match=r"export_torchscript: the model reloaded from .* does "
                                           r"not reproduce the eager output exactly.*largest"):
        export_torchscript(Noisy(), tmp_path / "n.pt", torch.zeros(3))


def test_export_torchscript_bad_input(tmp_path):
    class NotScriptable(nn.Module):
        def forward(self, x):
            return {1: x, "a": x}   # mixed key types: TorchScript rejects this dict

    with pytest.raises(RuntimeError, match=r"export_torchscript: torch.jit.script failed on "
                                           r"NotScriptable"):
        export_torchscript(NotScriptable(), tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="export_torchscript: the directory of path"):
        export_torchscript(nn.ReLU(), tmp_path / "no" / "m.pt")
    with pytest.raises(ValueError, match="export_torchscript: int8_model must be an nn.Module"):
        export_torchscript(None, tmp_path / "m.pt")


@pytest.mark.slow
def test_int16_at_opset_21(tmp_path):
    """From opset 21 QuantizeLinear/DequantizeLinear take int16: 16-bit symmetric specs export."""
    config = tq.QATConfig(weight=tq.QuantSpec(bits=16, symmetric=True, per_channel=True),
                          activation=tq.QuantSpec(bits=16, symmetric=True))
    qmodel, shape = calibrated("linear", config)
    path = tmp_path / "m.onnx"
    proto = export_onnx(qmodel, torch.randn(2, *shape), path, opset=21)
    inits, nodes, _ = _graph_facts(proto)
    assert {inits[n.input[2]].dtype.name for n in nodes
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")} == {"int16"}
    x = torch.randn(16, *shape)
    with torch.no_grad():
        expected = qmodel(x)
    assert_within_one_step(run_ort(ort_session(path, True), x), expected, output_step(qmodel))


def test_onnxruntime_runs_integer_convolutions(tmp_path):
    """With BatchNorm folded, ORT's optimiser turns DQ -> Conv -> ReLU -> Q into QLinearConv
    (the point of the fold); without the fold no convolution runs in integers."""
    counts = {}
    for fold in (True, False):
        qmodel, shape = calibrated("digits_cnn")
        path = tmp_path / f"digits_{fold}.onnx"
        export_onnx(qmodel, torch.randn(2, *shape), path, dynamo=False, opset=17,
                    fold_batchnorm=fold)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.add_session_config_entry("session.x64quantprecision", "1")
        so.optimized_model_filepath = str(tmp_path / f"optimized_{fold}.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath)
        counts[fold] = sum(n.op_type == "QLinearConv" for n in optimized.graph.node)
    assert counts[True] >= 2 and counts[False] == 0, counts


@pytest.mark.slow
def test_tiny_detector(tmp_path):
    """The YOLO-style test detector: residual adds, split/concat, SPPF, nearest and grouped
    transposed-convolution upsampling (per-channel weight axis 1 on the regrouped weight), two
    heads and a sigmoid on the concatenated outputs."""
    from qat_models import TinyDetector

    torch.manual_seed(0)
    qmodel = tq.prepare_qat(TinyDetector().eval())
    tq.calibrate(qmodel, [torch.randn(2, 3, 64, 64) for _ in range(3)], progress=False)
    qmodel.eval()
    x = torch.randn(3, 3, 64, 64)
    path = tmp_path / "detector.onnx"
    proto = export_onnx(qmodel, x[:1], path, dynamo=False, opset=17)
    inits, nodes, attrs = _graph_facts(proto)
    regrouped = tuple(qmodel.up_learned.weight_to_quantize().shape)
    axes = [a.get("axis", 1) for n, a in zip(nodes, attrs) if n.op_type == "DequantizeLinear"
            and n.input[0] in inits and inits[n.input[0]].shape == regrouped]
    assert axes == [1]
    with torch.no_grad():
        expected = qmodel(x)
    # The output is sigmoid(head(x)): a step of tau at a head output moves it by <= tau / 4.
    tau = max(output_step(h).max() for h in [nn.ModuleList([h]) for h in qmodel.heads]) / 4
    for optimize in (False, True):
        got = run_ort(ort_session(path, optimize), x)
        assert (got - expected).abs().max() <= tau + 1e-6


# -- with tq.convert's INT8 model -----------------------------------------------------------------

needs_convert = pytest.mark.skipif(not hasattr(tq, "convert"), reason="tq.convert not merged yet")


@needs_convert
@pytest.mark.parametrize("name", ["linear", "digits_cnn"])
def test_export_torchscript_of_converted_model(tmp_path, name):
    qmodel, shape = calibrated(name)
    imodel = tq.convert(qmodel).eval()
    x = torch.randn(6, *shape)
    path = tmp_path / f"{name}.pt"
    scripted = export_torchscript(imodel, path, x)
    reloaded = torch.jit.load(str(path))
    with torch.no_grad():
        assert torch.equal(reloaded(x), imodel(x))
        assert torch.equal(scripted(x), imodel(x))


@needs_convert
@pytest.mark.parametrize("name", ["linear", "conv_bn_silu", "digits_cnn"])
def test_onnxruntime_agrees_with_int8_model(tmp_path, name):
    """ORT running the QDQ export and torchqat's INT8 model (tq.convert) agree within one output
    step: both compute the QAT model's integers, up to the flips described in the module doc."""
    qmodel, shape = calibrated(name)
    imodel = tq.convert(qmodel).eval()
    path = tmp_path / f"{name}.onnx"
    export_onnx(qmodel, torch.randn(1, *shape), path, dynamo=False, opset=17)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = imodel(x)
    for optimize in (False, True):
        assert_within_one_step(run_ort(ort_session(path, optimize), x), expected,
                               output_step(qmodel))


def test_onnxruntime_session_options(tmp_path):
    qmodel, shape = calibrated("linear")
    path = tmp_path / "m.onnx"
    export_onnx(qmodel, torch.randn(2, *shape), path, dynamo=False, opset=17)
    session = onnxruntime_session(path, 2, exact=True, optimize=False)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.get_session_config_entry("session.x64quantprecision") == "1"
    with pytest.raises(ValueError, match="onnxruntime_session: threads must be a positive"):
        onnxruntime_session(path, 0)


@pytest.mark.slow
def test_torchvision_resnet18(tmp_path):
    """resnet18 (random init, 64x64): every BatchNorm folds, ORT agrees within one output step
    (runs in the CUDA venv, where torchvision loads: make model-test)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    qmodel = tq.prepare_qat(torchvision.models.resnet18().eval())
    tq.calibrate(qmodel, [torch.randn(4, 3, 64, 64) for _ in range(2)], progress=False)
    qmodel.eval()
    x = torch.randn(4, 3, 64, 64)
    path = tmp_path / "resnet18.onnx"
    proto = export_onnx(qmodel, x[:1], path, dynamo=False, opset=17)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 0 and ops.count("QuantizeLinear") == 21
    with torch.no_grad():
        expected = qmodel(x)
    for optimize in (False, True):
        assert_within_one_step(run_ort(ort_session(path, optimize), x), expected,
                               output_step(qmodel))


def test_output_step_by_hand():
    """torchqat.export.output_step: s_x * sum_i |W_q[j, i]| of the last quantized layer, with
    W_q from PyTorch's own per-channel fake quantization; per output channel of a transposed
    convolution (axis 1 of its weight); a model without quantized layers is refused."""
    qmodel, _ = calibrated("linear")
    last = qmodel[2]
    wq = torch.fake_quantize_per_channel_affine(
        last.weight.detach(), last.weight_quantizer.effective_scale(),
        last.weight_quantizer.effective_zero_point(), 0, -127, 127)
    want = last.input_quantizer.effective_scale() * wq.abs().sum(1)
    torch.testing.assert_close(output_step(qmodel), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(output_step(last), want, rtol=1e-6, atol=0)

    torch.manual_seed(0)
    up = tq.prepare_qat(nn.Sequential(nn.ConvTranspose2d(6, 4, 2, stride=2)))
    tq.calibrate(up, [torch.randn(2, 6, 5, 5)], progress=False)
    w = up[0].weight.detach()                               # [in 6, out 4, 2, 2]
    wq = torch.fake_quantize_per_channel_affine(
        w, up[0].weight_quantizer.effective_scale(), up[0].weight_quantizer.effective_zero_point(),
        1, -127, 127)
    want = up[0].input_quantizer.effective_scale() * wq.abs().sum((0, 2, 3))
    assert output_step(up).shape == (4,)
    torch.testing.assert_close(output_step(up), want, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"output_step: model \(Sequential\) holds no quantized"):
        output_step(nn.Sequential(nn.Linear(2, 2)))
