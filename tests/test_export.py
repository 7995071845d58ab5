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
from torchqat.export import (export_onnx, export_torchscript, onnxruntime_session,
                             output_step)
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


@pytest.mark.parametrize("bits, symmetric, narrow", [(4, False, False), (6, True, False),
                                                     (8, True, True), (16, False, False)])
def test_activation_without_exact_onnx_range_is_refused(tmp_path, bits, symmetric, narrow):
    config = tq.QATConfig(activation=tq.QuantSpec(bits=bits, symmetric=symmetric,
                                                  narrow_range=narrow))
    qmodel, shape = calibrated("linear", config)
    spec = config.activation
    with pytest.raises(ValueError, match=rf"activation range \[{spec.quant_min}, "
                                         rf"{spec.quant_max}\].*opset 17"):
        export_onnx(qmodel, torch.randn(2, *shape), tmp_path / "m.onnx", opset=17, dynamo=False)


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
