"""QuantConv2d on an input that needs no gradient (the model's image): the learnable input scale's
and zero point's gradients by the adjoint identity (torchqat/nn/input_scale_grad.py), checked
against a float64 plain-PyTorch reference (conv input gradient by autograd, then the LSQ table of
fake_quantize_reference.py) and against the plain path; and the conditions under which the plain
path is kept."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchqat as tq
from torchqat.nn import QuantConv2d
from torchqat.nn.input_scale_grad import uses_input_scale_adjoint

from fake_quantize_reference import assert_sum_close, reference_forward, reference_lsq_backward

ADJOINT = "InputScaleAdjointConv2dBackward"


def make_conv(spec: tq.QuantSpec, x: torch.Tensor, dtype=torch.float32, **conv_kwargs):
    torch.manual_seed(1)
    float_conv = nn.Conv2d(x.size(1), 6, 3, **conv_kwargs).to(dtype)
    conv = QuantConv2d.from_float(float_conv, activation_spec=spec).train()
    tq.calibrate(conv, [x], progress=False)
    return conv


def grads(conv: nn.Module, x: torch.Tensor, dout: torch.Tensor):
    conv.zero_grad(set_to_none=True)
    out = conv(x)
    out.backward(dout)
    return out, {n: p.grad.clone() for n, p in conv.named_parameters() if p.grad is not None}


def reference_input_grads(conv: QuantConv2d, x: torch.Tensor, dout: torch.Tensor):
    """(dscale, dzero_point, mag_ds, mag_dz, n): the input quantizer's gradients in float64,
    from the conv's input gradient computed by autograd on the float64 reference forward."""
    q = conv.input_quantizer
    scale = q.scale.detach().clamp_min(q.min_scale)
    y, _, _, _ = reference_forward(x.double(), scale, q.zero_point, q.quant_min, q.quant_max)
    y = y.detach().requires_grad_(True)
    w = conv.weight_quantizer(conv.weight).detach().double()
    out = F.conv2d(y, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    (dy,) = torch.autograd.grad(out, y, dout.double())
    _, ds, dz, mag_ds, mag_dz, n = reference_lsq_backward(
        dy, x.double(), scale, q.zero_point, q.quant_min, q.quant_max, None,
        q.lsq_grad_factor(x))
    return ds, dz, mag_ds, mag_dz, n


AFFINE = tq.QuantSpec(bits=8, symmetric=False, learnable=True)
SYMMETRIC = tq.QuantSpec(bits=8, symmetric=True, learnable=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", [AFFINE, SYMMETRIC], ids=["affine", "symmetric"])
@pytest.mark.parametrize("conv_kwargs", [
    dict(stride=2, padding=1),
    dict(stride=1, padding=2, dilation=2, bias=False),
    dict(stride=(2, 1), padding=(0, 1)),
    dict(stride=1, padding=1, groups=3),
], ids=["s2p1", "dilated-nobias", "asym", "grouped"])
@pytest.mark.parametrize("clipped", ["none", "few", "many"])
def test_gradients_match_reference_and_plain_path(dtype, spec, conv_kwargs, clipped,
                                                  monkeypatch):
    import torchqat.nn.input_scale_grad as isg

    sparse_calls = []
    real_input_grad_at = isg._input_grad_at
    monkeypatch.setattr(isg, "_input_grad_at",
                        lambda *a: sparse_calls.append(1) or real_input_grad_at(*a))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 33, 35, generator=g, dtype=dtype)
    conv = make_conv(spec, x, dtype, **conv_kwargs)
    if clipped == "many":  # beyond the calibrated range: many elements clip at both ends
        x = (x - 0.5) * 3.0
    elif clipped == "few":  # a handful, at borders and inside: the zero point's sparse path
        x = x.clone()
        for n, c, h, w, v in [(0, 0, 0, 0, 9.0), (1, 2, 32, 34, -9.0), (0, 1, 7, 3, 5.0),
                              (1, 0, 0, 11, -4.0)]:
            x[n, c, h, w] = v
    assert uses_input_scale_adjoint(conv, x)
    out = conv(x)
    dout = torch.randn(out.shape, generator=g, dtype=dtype)

    out_adj, g_adj = grads(conv, x, dout)
    assert out_adj.grad_fn.name() == ADJOINT
    plain = copy.deepcopy(conv)
    out_plain, g_plain = grads(plain, x.clone().requires_grad_(True), dout)
    assert out_plain.grad_fn.name() != ADJOINT
    assert torch.equal(out_adj, out_plain)  # the same forward, bit for bit
    assert set(g_adj) == set(g_plain)

    ds, dz, mag_ds, mag_dz, n = reference_input_grads(conv, x, dout)
    # Two float32 convolutions and a dot over the output: the tolerance of a sum of
    # out.numel() * taps terms in the compute dtype.
    taps = conv.weight[0].numel()
    assert_sum_close(g_adj["input_quantizer.scale"], ds, mag_ds, n * taps, dtype,
                     "adjoint input scale gradient")
    assert_sum_close(g_plain["input_quantizer.scale"], ds, mag_ds, n * taps, dtype,
                     "plain input scale gradient")
    if spec is AFFINE:
        assert_sum_close(g_adj["input_quantizer.zero_point"], dz, mag_dz, n * taps, dtype,
                         "adjoint zero point gradient")
        if clipped != "none":
            assert g_adj["input_quantizer.zero_point"].abs().item() > 0
        else:
            assert g_adj["input_quantizer.zero_point"].item() == 0.0
        # A handful of clipped pixels takes the positional (sparse) path, many the convolution.
        groups = conv_kwargs.get("groups", 1)
        assert bool(sparse_calls) == (clipped == "few" and groups == 1)
    for name in ("weight", "bias", "weight_quantizer.scale"):
        if name in g_plain:
            torch.testing.assert_close(g_adj[name], g_plain[name], rtol=1e-5, atol=1e-6)


def test_detector_training_step_gradients_match_plain_path():
    from qat_models import TinyDetector, detector_loss

    torch.manual_seed(0)
    batch = torch.rand(2, 3, 64, 64)
    qmodel = tq.prepare_qat(TinyDetector())
    tq.calibrate(qmodel, [batch], progress=False)
    qmodel.train()
    plain = copy.deepcopy(qmodel)
    out_adj = qmodel(batch)
    out_plain = plain(batch.clone().requires_grad_(True))
    for a, b in zip(out_adj, out_plain):
        assert torch.equal(a, b)
    detector_loss(out_adj).backward()
    detector_loss(out_plain).backward()
    stem_scale = qmodel.stem.conv.input_quantizer.scale
    assert stem_scale.grad is not None and stem_scale.grad.abs().item() > 0
    for (name, p), (_, q) in zip(qmodel.named_parameters(), plain.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def _plain_cases():
    x = torch.rand(2, 3, 9, 9)

    def requires_grad(conv):
        return conv, x.clone().requires_grad_(True)

    def no_grad(conv):
        return conv, x

    def fixed_scale(conv):
        conv = QuantConv2d.from_float(nn.Conv2d(3, 4, 3), activation_spec=tq.QuantSpec(
            bits=8, symmetric=False, learnable=False))
        tq.calibrate(conv, [x], progress=False)
        return conv, x

    def pass_through(conv):
        conv.input_quantizer.mode = "pass_through"
        return conv, x

    def hooked(conv):
        conv.input_quantizer.register_forward_hook(lambda m, i, o: None)
        return conv, x

    def reflect(conv):
        conv.padding_mode = "reflect"
        conv.padding = (1, 1)
        conv._reversed_padding_repeated_twice = [1, 1, 1, 1]
        return conv, x

    def frozen_scale(conv):
        conv.input_quantizer.scale.requires_grad_(False)
        conv.input_quantizer.zero_point.requires_grad_(False)
        return conv, x

    return {"input requires grad": requires_grad, "fixed scale": fixed_scale,
            "pass_through": pass_through, "hook on the quantizer": hooked,
            "reflect padding": reflect, "frozen scale": frozen_scale, "no_grad": no_grad}


@pytest.mark.parametrize("case", list(_plain_cases()))
def test_plain_path_kept(case):
    x = torch.rand(2, 3, 9, 9)
    conv = QuantConv2d.from_float(nn.Conv2d(3, 4, 3), activation_spec=AFFINE).train()
    tq.calibrate(conv, [x], progress=False)
    conv, x = _plain_cases()[case](conv)
    if case == "no_grad":
        with torch.no_grad():
            assert not uses_input_scale_adjoint(conv, x)
        return
    assert not uses_input_scale_adjoint(conv, x)
    out = conv(x)
    assert out.grad_fn is None or out.grad_fn.name() != ADJOINT


def test_autocast_and_scripting_keep_the_plain_path():
    x = torch.rand(2, 3, 9, 9)
    conv = QuantConv2d.from_float(nn.Conv2d(3, 4, 3), activation_spec=AFFINE).train()
    tq.calibrate(conv, [x], progress=False)
    assert uses_input_scale_adjoint(conv, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_input_scale_adjoint(conv, x)
    scripted = torch.jit.script(copy.deepcopy(conv))
    out = scripted(x)
    assert torch.equal(out, conv(x))
    out.sum().backward()  # the scripted module trains through the plain path
    assert scripted.input_quantizer.scale.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_maps_equal_the_operator_maps(dtype):
    # torch.compile's maps (ATen operators) against fake_quantize_lsq_input_maps, bit for bit:
    # m_s everywhere, and the dense m_z against -s at the operator's clipped indices.
    from torchqat.nn.input_scale_grad import _dense_maps

    torch.manual_seed(0)
    s, z = torch.tensor([0.037]), torch.tensor([3.4])
    x = torch.cat([torch.randn(5000) * 5, (torch.arange(-300, 300) + 0.5) * 0.037,
                   torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])])
    x = x.to(dtype).reshape(1, 1, 1, -1)
    m_s, clipped = torch.ops.torchqat.fake_quantize_lsq_input_maps(x, s, z, 0, 255)
    dense_s, dense_z = _dense_maps(x, s, z, 0, 255)
    assert clipped.numel() > 0
    expected_z = torch.zeros(x.numel(), dtype=dtype).index_fill_(0, clipped, -s.item())
    assert dense_s.dtype == dtype and torch.equal(dense_s, m_s)
    assert torch.equal(dense_z, expected_z.view_as(x))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("scale_factor", [1.0, 0.8], ids=["in range", "clipped"])
def test_compiled_adjoint_matches_eager(backend, scale_factor):
    # Under torch.compile the adjoint path is taken too, with dense maps (_dense_maps): the
    # output is the eager one bit for bit and the gradients agree up to summation order, and no
    # LSQ backward runs on the convolution's input gradient (weights left in float here, so any
    # fake_quantize_lsq_backward would be the plain path's).
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    x = torch.rand(2, 3, 12, 12) * 2 - 0.5
    conv = QuantConv2d.from_float(nn.Conv2d(3, 6, 3, padding=1, stride=2), weight_spec=None,
                                  activation_spec=AFFINE).train()
    tq.calibrate(conv, [x * scale_factor], progress=False)   # 0.8: some elements clip
    twin = copy.deepcopy(conv)
    compiled = torch.compile(conv, backend=backend, fullgraph=True)
    g = torch.randn(2, 6, 6, 6)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = compiled(x)
        out.backward(g)
    assert "torchqat::fake_quantize_lsq_backward" not in {e.key for e in prof.key_averages()}
    expected = twin(x)
    assert expected.grad_fn.name() == ADJOINT
    expected.backward(g)
    assert torch.equal(out, expected)
    for (name, p), (_, q) in zip(conv.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6 * q.grad.abs().max(),
                                   msg=name)


def test_export_keeps_the_plain_path():
    # torch.export records the plain path (its graph keeps the operator with its own autograd);
    # eager mode and torch.compile take the adjoint.
    x = torch.rand(2, 3, 9, 9)
    conv = QuantConv2d.from_float(nn.Conv2d(3, 4, 3), activation_spec=AFFINE).train()
    tq.calibrate(conv, [x], progress=False)
    taken = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, t):
            taken.append(uses_input_scale_adjoint(self.conv, t))
            return self.conv(t)

    Probe()(x)
    exported = torch.export.export(Probe(), (x,))
    assert taken == [True, False]
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "torchqat.fake_quantize_lsq.default" in targets


@pytest.mark.parametrize("conv_kwargs", [
    dict(stride=1, padding=1),
    dict(stride=2, padding=1),
    dict(stride=(2, 3), padding=(2, 0), dilation=(2, 1)),
    dict(stride=1, padding=0, dilation=3),
], ids=["s1", "s2", "mixed", "dilated"])
def test_input_grad_at_positions_equals_autograd(conv_kwargs):
    from torchqat.nn.input_scale_grad import _input_grad_at

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 11, 13, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    out = F.conv2d(x, weight, None, **conv_kwargs)
    dout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (dx,) = torch.autograd.grad(out, x, dout)
    positions = torch.stack([torch.randint(0, s, (40,), generator=g) for s in x.shape], dim=1)
    corners = torch.tensor([[0, 0, 0, 0], [1, 2, 10, 12], [0, 1, 0, 12], [1, 0, 10, 0]])
    positions = torch.cat([positions, corners])
    as_tuple = lambda k: dict(stride=_pair(conv_kwargs.get("stride", 1)),  # noqa: E731
                              padding=_pair(conv_kwargs.get("padding", 0)),
                              dilation=_pair(conv_kwargs.get("dilation", 1)))[k]
    got = _input_grad_at(dout, weight, positions, as_tuple("stride"),
                         as_tuple("padding"), as_tuple("dilation"))
    expected = dx[tuple(positions.t())].sum()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ---------------------------------------------------------------------------------------------
# torchqat::fake_quantize_lsq_input_maps: the scale's derivative map and the clipped positions


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("qrange", [(0, 255), (-8, 7)])
@pytest.mark.parametrize("shape", [(2, 3, 17, 13), (5,), (1, 3, 64, 64)])
def test_input_maps_against_reference(dtype, qrange, shape):
    from fake_quantize_reference import make_input

    qmin, qmax = qrange
    g = torch.Generator().manual_seed(7)
    s = torch.tensor([0.03])
    z = torch.tensor([float((qmin + qmax) // 2) + 0.4])  # learnable: rounded by the operator
    x = make_input(shape, s, z, qmin, qmax, None, g, dtype)
    x.view(-1)[0] = float("nan")
    m_s, clipped = torch.ops.torchqat.fake_quantize_lsq_input_maps(x, s, z, qmin, qmax)

    y, v, sr, zr = reference_forward(x, s, z, qmin, qmax)
    xd, yd, sd, zd = x.double(), y.double(), sr.double(), zr.double()
    below, above = v < qmin, v > qmax
    inside = (v >= qmin) & (v <= qmax)
    ref = torch.where(inside, (yd - xd) / sd, torch.zeros_like(xd))
    ref = torch.where(below, qmin - zd, ref)
    ref = torch.where(above, qmax - zd, ref)
    assert m_s.shape == x.shape and m_s.dtype == dtype and m_s.is_contiguous()
    # An in-range term cancels: its rounding error is relative to (|y| + |x|) / s.
    bound = (4 * torch.finfo(dtype).eps * (yd.abs() + xd.abs()) / sd).nan_to_num(nan=0.0)
    err = (m_s.double() - ref).abs()
    assert bool((err <= bound).all())
    assert m_s.view(-1)[0] == 0  # NaN: neither inside nor clipped, no gradient
    assert torch.equal(clipped, (below | above).reshape(-1).nonzero().reshape(-1))
    assert clipped.numel() > 0


def test_input_maps_non_contiguous_input_and_errors():
    x = torch.randn(2, 3, 8, 8).transpose(2, 3) * 40
    s, z = torch.tensor([0.1]), torch.tensor([128.0])
    m1, c1 = torch.ops.torchqat.fake_quantize_lsq_input_maps(x, s, z, 0, 255)
    m2, c2 = torch.ops.torchqat.fake_quantize_lsq_input_maps(x.contiguous(), s, z, 0, 255)
    assert torch.equal(m1, m2) and torch.equal(c1, c2) and c1.numel() > 0
    with pytest.raises(RuntimeError, match="fake_quantize_lsq_input_maps: per-tensor only"):
        torch.ops.torchqat.fake_quantize_lsq_input_maps(x, torch.ones(3), torch.zeros(3), 0, 255)
    with pytest.raises(RuntimeError, match="fake_quantize_lsq_input_maps: input must be float32 "
                                           "or float64, got Half"):
        torch.ops.torchqat.fake_quantize_lsq_input_maps(x.half(), s, z, 0, 255)
    with pytest.raises(RuntimeError, match="fake_quantize_lsq_input_maps: scale"):
        torch.ops.torchqat.fake_quantize_lsq_input_maps(x, -s, z, 0, 255)


def test_input_maps_opcheck():
    from torch.library import opcheck

    x = torch.randn(2, 3, 5, 5) * 40
    opcheck(torch.ops.torchqat.fake_quantize_lsq_input_maps.default,
            (x, torch.tensor([0.1]), torch.tensor([128.0]), 0, 255),
            test_utils=("test_schema", "test_faketensor"))
