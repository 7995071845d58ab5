"""Quantized training modules against the float functional op applied to inputs and weights
fake-quantized by PyTorch's own operators; hyper-parameters, from_float, TorchScript."""

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchqat as tq
from torchqat import QuantSpec

W8 = QuantSpec(bits=8, symmetric=True, per_channel=True, narrow_range=True, learnable=True)
A8 = QuantSpec(bits=8, symmetric=False, learnable=True)


def fq_oracle(q, x):
    s, z = q.effective_scale(), q.effective_zero_point()
    if q.axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(s), int(z), q.quant_min, q.quant_max)
    return torch.fake_quantize_per_channel_affine(x, s, z, q.axis % x.dim(), q.quant_min,
                                                  q.quant_max)


def calibrate_input(qm, x):
    q = qm.input_quantizer
    q.observe(x)
    q.load_observer_qparams()


CASES = [
    (nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2), (2, 4, 17)),
    (nn.Conv1d(4, 8, 3, groups=4, bias=False, padding="same"), (2, 4, 9)),
    (nn.Conv2d(3, 8, 3, stride=2, padding=1), (2, 3, 11, 9)),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 7, 7)),                       # depthwise
    (nn.Conv2d(4, 6, (3, 1), padding=(2, 0), dilation=(2, 1), bias=False), (1, 4, 8, 5)),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), (2, 4, 6, 6)),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular", groups=2), (2, 4, 6, 6)),
    (nn.Conv3d(2, 4, 3, padding=1, stride=(1, 2, 2)), (1, 2, 5, 6, 6)),
    (nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1), (2, 6, 5, 5)),
    (nn.ConvTranspose2d(6, 9, 2, stride=2, groups=3, bias=False), (2, 6, 4, 4)),
    (nn.Linear(10, 7), (3, 10)),
    (nn.Linear(10, 7, bias=False), (2, 5, 10)),
]


def float_forward(float_module, x, w):
    """The float module's own forward with its weight replaced by ``w``."""
    saved = float_module.weight
    try:
        del float_module.weight
        float_module.weight = w
        return float_module(x)
    finally:
        del float_module.weight
        float_module.weight = saved


@pytest.mark.parametrize("float_module,shape", CASES, ids=lambda c: str(c) if isinstance(c, tuple)
                         else type(c).__name__)
def test_module_equals_float_op_on_fake_quantized_operands(float_module, shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 2
    qm = tq.prepare_qat(float_module, tq.QATConfig(weight=W8, activation=A8))
    assert isinstance(qm, type(float_module)) and type(qm) is not type(float_module)
    calibrate_input(qm, x)
    y = qm(x)

    wq = qm.weight_quantizer
    w_seen = qm.weight_to_quantize()
    wfq = fq_oracle(wq, w_seen.detach())
    if w_seen.shape != qm.weight.shape:  # grouped transposed convolution: undo the regrouping
        g = qm.groups
        s = qm.weight.shape
        wfq = wfq.reshape(s[0] // g, g, *s[1:]).transpose(0, 1).reshape(s)
    ref = float_forward(float_module, fq_oracle(qm.input_quantizer, x), wfq)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # Hyper-parameters kept.
    for attr in ("stride", "padding", "dilation", "groups", "padding_mode", "output_padding",
                 "in_features", "out_features"):
        if hasattr(float_module, attr):
            assert getattr(qm, attr) == getattr(float_module, attr), attr
    assert (qm.bias is None) == (float_module.bias is None)
    torch.testing.assert_close(qm.weight, float_module.weight)


def test_grouped_transposed_conv_has_one_scale_per_output_channel():
    m = nn.ConvTranspose2d(4, 6, 3, groups=2)
    with torch.no_grad():
        m.weight.copy_(torch.randn(4, 3, 3, 3))
        # Output channel o = group * 3 + j: make each one's range distinct.
        for gi in range(2):
            for j in range(3):
                m.weight[gi * 2:(gi + 1) * 2, j] *= 1 + gi * 3 + j
    qm = tq.QuantConvTranspose2d.from_float(m, W8, None)
    s = qm.weight_quantizer.scale.detach()
    assert s.shape == (6,)
    ref = torch.stack([m.weight[gi * 2:(gi + 1) * 2, j].abs().max()
                       for gi in range(2) for j in range(3)]) / 127
    torch.testing.assert_close(s, ref.detach())


def test_from_float_shares_parameters_and_keeps_hooks_and_mode():
    m = nn.Conv2d(3, 4, 3)
    calls = []
    m.register_forward_hook(lambda mod, i, o: calls.append(1))
    m.eval()
    qm = tq.QuantConv2d.from_float(m, W8, A8)
    assert qm.weight is m.weight and qm.bias is m.bias
    assert not qm.training
    qm(torch.randn(1, 3, 5, 5))
    assert calls == [1]
    assert qm.weight_quantizer.is_calibrated  # weights need no data


def test_none_specs_leave_tensors_in_float():
    m = nn.Linear(5, 3)
    qm = tq.QuantLinear.from_float(m, None, A8)
    assert isinstance(qm.weight_quantizer, nn.Identity)
    x = torch.randn(2, 5)
    calibrate_input(qm, x)
    torch.testing.assert_close(qm(x), F.linear(fq_oracle(qm.input_quantizer, x), m.weight, m.bias))


def test_per_channel_activation_specs():
    conv = tq.QuantConv2d(4, 2, 1, activation_spec=QuantSpec(per_channel=True, axis=1))
    assert conv.input_quantizer.scale.shape == (4,)
    lin = tq.QuantLinear(6, 2, activation_spec=QuantSpec(per_channel=True, axis=-1))
    assert lin.input_quantizer.scale.shape == (6,)
    x = torch.randn(3, 6) * torch.arange(1, 7)
    calibrate_input(lin, x)
    torch.testing.assert_close(lin.input_quantizer.scale, x.abs().amax(0) / 127.5)
    with pytest.raises(ValueError, match="must be -1"):
        tq.QuantLinear(6, 2, activation_spec=QuantSpec(per_channel=True, axis=1))
    with pytest.raises(ValueError, match="needs an axis"):
        tq.QuantConv2d(4, 2, 1, activation_spec=QuantSpec(per_channel=True))


def test_constructor_defaults_to_qatconfig_defaults():
    m = tq.QuantConv2d(3, 8, 3)
    assert m.weight_quantizer.spec == dataclasses.replace(tq.QATConfig().weight, axis=0)
    assert m.input_quantizer.spec == tq.QATConfig().activation
    with pytest.raises(ValueError, match="expected a Conv2d"):
        tq.QuantConv2d.from_float(nn.Linear(2, 2))


@pytest.mark.parametrize("float_module,shape", [CASES[2], CASES[3], CASES[8], CASES[9], CASES[10]],
                         ids=["conv2d", "depthwise", "convT", "convT-grouped", "linear"])
def test_torchscript_round_trip(float_module, shape):
    x = torch.randn(shape)
    qm = tq.prepare_qat(float_module)
    calibrate_input(qm, x)
    scripted = torch.jit.script(qm)
    assert torch.equal(scripted(x), qm(x))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    assert torch.equal(torch.jit.load(buf)(x), qm(x))
