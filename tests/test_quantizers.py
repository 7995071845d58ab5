"""FakeQuantizer against PyTorch's fake-quant operators (the oracle) and a plain-PyTorch LSQ
reference; modes, positivity of learnable scales, TorchScript, torch.compile, state dicts, dtypes."""

import io
import logging
import math

import pytest
import torch

from torchqat import FakeQuantizer, QuantSpec
from torchqat.observers import MIN_SCALE

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def calibrated(spec, x, num_channels=None, role="activation"):
    q = FakeQuantizer(spec, num_channels, role, device=x.device)
    q.observe(x)
    q.load_observer_qparams()
    return q


def oracle(q: FakeQuantizer, x: torch.Tensor) -> torch.Tensor:
    s, z = q.effective_scale(), q.effective_zero_point()
    if q.axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(s), int(z), q.quant_min, q.quant_max)
    return torch.fake_quantize_per_channel_affine(x, s, z, q.axis % x.dim(), q.quant_min,
                                                  q.quant_max)


def lsq_reference(x, s, z, qmin, qmax, axis, g):
    """Plain-PyTorch LSQ / LSQ+ (autograd through round with an explicit STE)."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = s.reshape(shape) if axis is not None else s
    zr = z + (torch.round(z).clamp(qmin, qmax) - z).detach()
    # Gradient scaling as in the LSQ paper: value s, gradient g * d/ds.
    s = s * g + (s - s * g).detach()
    zr = zr.reshape(shape) if axis is not None else zr
    zr = zr * g + (zr - zr * g).detach()
    v = x * (1.0 / s)  # the reciprocal first, as the numerics define (x / s can differ by an ulp)
    v = v + (torch.round(v) - v).detach() + zr
    # An explicit mask: clamp's own gradient at the range ends changed across torch versions
    # (1 up to 2.13, 0 from 2.14), and the numerics define the ends as inside.
    inside = (v.detach() >= qmin) & (v.detach() <= qmax)
    q = torch.where(inside, v, v.detach().clamp(qmin, qmax))
    return (q - zr) * s


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec,axis_size", [
    (QuantSpec(bits=8, symmetric=False), None),
    (QuantSpec(bits=8, symmetric=True, narrow_range=True), None),
    (QuantSpec(bits=4, symmetric=True, per_channel=True, axis=1), 5),
    (QuantSpec(bits=6, symmetric=False, per_channel=True, axis=-1), 7),
    (QuantSpec(bits=8, symmetric=False, learnable=True), None),
    (QuantSpec(bits=3, symmetric=True, per_channel=True, axis=1, learnable=True), 5),
])
def test_forward_matches_pytorch_oracle(device, spec, axis_size):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 5, 6, 7, generator=g) * 3).to(device)
    q = calibrated(spec, x, axis_size)
    y = q(x)
    assert torch.equal(y, oracle(q, x))
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("symmetric,axis", [(True, None), (False, None), (True, 0), (False, 1)])
def test_learnable_gradients_match_lsq_reference(symmetric, axis):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 5, generator=g) * 2
    c = None if axis is None else x.size(axis)
    spec = QuantSpec(bits=4, symmetric=symmetric, per_channel=axis is not None, axis=axis,
                     learnable=True)
    q = calibrated(spec, x, c)
    with torch.no_grad():  # a non-integer zero point exercises LSQ+'s rounding
        if not symmetric:
            q.zero_point.add_(0.3)
        q.scale.mul_(0.7)  # clip some values so every gradient region is hit
    xq = x.clone().requires_grad_()
    dy = torch.randn(x.shape, generator=g)
    (q(xq) * dy).sum().backward()

    n = x.numel() // q.scale.numel()
    gf = 1.0 / math.sqrt(n * q.quant_max)
    s_ref = q.scale.detach().clone().requires_grad_()
    z_ref = q.zero_point.detach().clone().float().requires_grad_(not symmetric)
    x_ref = x.clone().requires_grad_()
    y_ref = lsq_reference(x_ref, s_ref, z_ref, q.quant_min, q.quant_max, axis, gf)
    (y_ref * dy).sum().backward()
    torch.testing.assert_close(q(x), y_ref.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(xq.grad, x_ref.grad)
    torch.testing.assert_close(q.scale.grad, s_ref.grad, rtol=1e-4, atol=1e-6)
    if not symmetric:
        torch.testing.assert_close(q.zero_point.grad, z_ref.grad, rtol=1e-4, atol=1e-6)


def test_explicit_grad_factor_scales_the_gradient():
    x = torch.randn(64) * 2
    grads = []
    for gf in (None, 1.0):
        q = calibrated(QuantSpec(bits=4, learnable=True, grad_factor=gf), x)
        q(x).pow(2).sum().backward()
        grads.append(q.scale.grad.clone())
    lsq = 1.0 / math.sqrt(64 * 7)
    torch.testing.assert_close(grads[0], grads[1] * lsq)


def test_learnable_scale_stays_positive_and_keeps_its_gradient():
    x = torch.randn(32) * 2
    q = calibrated(QuantSpec(bits=8, learnable=True), x)
    with torch.no_grad():
        q.scale.fill_(-0.5)  # an optimizer overshot
    y = q(x)
    ref = torch.fake_quantize_per_tensor_affine(x, MIN_SCALE, 0, -128, 127)
    assert torch.equal(y, ref)
    (y - 3 * x).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.item() != 0.0
    assert q.effective_scale().item() == MIN_SCALE


def test_non_learnable_gives_gradient_to_input_only():
    x = (torch.randn(20) * 4).requires_grad_()
    q = calibrated(QuantSpec(bits=4, symmetric=False), x.detach())
    assert not q.scale.requires_grad and "scale" in dict(q.named_buffers())
    y = q(x)
    y.sum().backward()
    s, z = q.scale.item(), q.zero_point.item()
    v = torch.round(x.detach() / s) + z
    assert torch.equal(x.grad, ((v >= 0) & (v <= 15)).float())


def test_modes():
    x = torch.randn(3, 4)
    q = FakeQuantizer(QuantSpec(bits=8))
    q.set_mode("observe")
    assert q(x) is x and q.observer.num_observed == 1
    q.set_mode("pass_through")
    assert q(x) is x and q.observer.num_observed == 1
    q.load_observer_qparams()
    q.set_mode("fake_quantize")
    assert torch.equal(q(x), oracle(q, x))
    with pytest.raises(ValueError, match="mode must be one of"):
        q.set_mode("quantize")


def test_uncalibrated_quantizer_initialises_from_first_tensor(caplog):
    x = torch.randn(10) * 5
    q = FakeQuantizer(QuantSpec(bits=8, symmetric=True, observer="minmax"))
    with caplog.at_level(logging.WARNING, logger="torchqat"):
        y = q(x)
    assert "was not calibrated" in caplog.text
    assert q.is_calibrated and q.calibrated.item() == 1
    assert q.scale.item() == pytest.approx(x.abs().max().item() / 127.5)
    assert torch.equal(y, oracle(q, x))


def test_extra_repr_shows_bits_scheme_and_scale_range():
    q = calibrated(QuantSpec(bits=4, per_channel=True, axis=0, learnable=True),
                   torch.randn(3, 8) * torch.tensor([[1.0], [2.0], [4.0]]), 3)
    r = repr(q)
    assert "bits=4" in r and "symmetric" in r and "per-channel(axis=0)" in r
    lo, hi = q.scale.min().item(), q.scale.max().item()
    assert f"scale=[{lo:.4g}, {hi:.4g}]" in r
    assert "scale=uncalibrated" in repr(FakeQuantizer(QuantSpec()))


@pytest.mark.parametrize("spec,c", [(QuantSpec(bits=8, symmetric=False, learnable=True), None),
                                    (QuantSpec(bits=4, per_channel=True, axis=1), 5)])
def test_torchscript_and_save_load(spec, c):
    x = torch.randn(2, 5, 3) * 3
    q = calibrated(spec, x, c)
    scripted = torch.jit.script(q)
    assert torch.equal(scripted(x), q(x))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    assert torch.equal(loaded(x), q(x))


def test_scripted_uncalibrated_quantizer_refuses():
    scripted = torch.jit.script(FakeQuantizer(QuantSpec()))
    with pytest.raises(Exception):
        scripted(torch.randn(3))


def test_torch_compile_fullgraph_matches_eager():
    x = torch.randn(4, 6, 5) * 2
    q = calibrated(QuantSpec(bits=4, symmetric=False, per_channel=True, axis=1, learnable=True),
                   x, 6)
    compiled = torch.compile(q, backend="aot_eager", fullgraph=True)
    xe = x.clone().requires_grad_()
    xc = x.clone().requires_grad_()
    ye = q(xe)
    ye.pow(2).sum().backward()
    grads_e = (xe.grad.clone(), q.scale.grad.clone(), q.zero_point.grad.clone())
    q.zero_grad()
    yc = compiled(xc)
    yc.pow(2).sum().backward()
    assert torch.equal(yc, ye)
    torch.testing.assert_close((xc.grad, q.scale.grad, q.zero_point.grad), grads_e)


def _edge_case_inputs(scale: float) -> torch.Tensor:
    # Random values, exact rounding ties, both zeros, infinities, NaN and far out-of-range values.
    return torch.cat([torch.randn(3000) * 3, (torch.arange(-300, 300) + 0.5) * scale,
                      torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e30,
                                    -1e30, 1.0])]).reshape(1, 2, -1)


def _lsq_results(fn, x, scale, zero_point, quant_min, quant_max, min_scale):
    x = x.clone().requires_grad_()
    scale = scale.clone().requires_grad_()
    zero_point = zero_point.clone().requires_grad_(zero_point.is_floating_point())
    y = fn(x, scale, zero_point, quant_min, quant_max, 0.01, min_scale)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    return y.detach(), x.grad, scale.grad, zero_point.grad


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("scale, zero_point, quant_min, quant_max, min_scale", [
    (0.037, 3.4, 0, 255, MIN_SCALE),       # float (learnable) zero point, rounded
    (0.037, -2.5, -128, 127, MIN_SCALE),   # a tie in the zero point, signed range
    (1e-12, 0.0, 0, 15, MIN_SCALE),        # a scale below the floor: the straight-through floor
    (0.5, 300.0, 0, 255, 0.0),             # a zero point clamped to the range; no floor
    (0.02, 0, -127, 127, MIN_SCALE),       # an integer zero point (symmetric learnable)
])
def test_traceable_lsq_matches_the_operator_bit_for_bit(scale, zero_point, quant_min, quant_max,
                                                        min_scale):
    # The torch.compile forward (ATen operators) against torchqat's operator: the same output
    # bits, and (its backward is the operator's) the same gradients.
    from torchqat.quantizers import FakeQuantizeLsqTraceable

    x = _edge_case_inputs(max(scale, MIN_SCALE))
    s = torch.tensor([scale])
    z = torch.tensor([zero_point], dtype=torch.int32 if isinstance(zero_point, int) else None)

    def operator(x, s, z, qmin, qmax, gf, ms):
        return torch.ops.torchqat.fake_quantize_lsq(x, s, z, qmin, qmax, None, gf, ms)

    expected = _lsq_results(operator, x, s, z, quant_min, quant_max, min_scale)
    got = _lsq_results(FakeQuantizeLsqTraceable.apply, x, s, z, quant_min, quant_max, min_scale)
    assert _same_bits(got[0], expected[0])
    assert torch.equal(got[1], expected[1]) and torch.equal(got[2], expected[2])
    assert (got[3] is None and expected[3] is None) or torch.equal(got[3], expected[3])


def _compiled_quantizer():
    q = calibrated(QuantSpec(bits=8, symmetric=False, learnable=True), torch.randn(64) * 2)
    with torch.no_grad():
        q.zero_point.add_(0.4)   # a float zero point between integers
    return q


def test_compiled_learnable_quantizer_fuses_its_forward_and_matches_the_operator():
    # Under torch.compile (Inductor), a per-tensor learnable quantizer of a float32 CPU tensor
    # runs its forward as ATen operators and its backward as fake_quantize_lsq_backward: the
    # forward operator is not called, and outputs and gradients equal the eager operator's.
    from torch.profiler import ProfilerActivity, profile

    q = _compiled_quantizer()
    x = _edge_case_inputs(q.scale.detach().item()).reshape(2, 4, 1, -1)
    compiled = torch.compile(lambda t: q(t * 1.0), fullgraph=True)
    results = []
    for fn in (lambda t: q(t * 1.0), compiled):
        q.zero_grad()
        xi = x.clone().requires_grad_()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            y = fn(xi)
            y.backward(torch.full_like(y, 0.5))
        ops = {e.key for e in prof.key_averages()}
        results.append((y.detach(), xi.grad, q.scale.grad.clone(), q.zero_point.grad.clone(),
                        ops))
    (ye, *grads_e, ops_e), (yc, *grads_c, ops_c) = results
    assert "torchqat::fake_quantize_lsq" in ops_e
    assert "torchqat::fake_quantize_lsq" not in ops_c
    assert "torchqat::fake_quantize_lsq_backward" in ops_c
    assert _same_bits(yc, ye)
    for a, b in zip(grads_c, grads_e):
        assert torch.equal(a, b)


def test_compiled_learnable_quantizer_checks_its_scale():
    # The operator refuses a non-finite scale on the host; the compiled path asserts at run time.
    q = _compiled_quantizer()
    compiled = torch.compile(q, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        q.scale.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="scale must be positive and finite"):
        compiled(torch.randn(8))


def test_export_keeps_the_operator():
    # torch.export's graphs keep torchqat's operator (conversion and ONNX export read it).
    q = _compiled_quantizer()
    exported = torch.export.export(q, (torch.randn(2, 8),))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "torchqat.fake_quantize_lsq.default" in targets


def test_state_dict_round_trip():
    x = torch.randn(4, 6) * 2
    spec = QuantSpec(bits=6, symmetric=False, learnable=True)
    q = calibrated(spec, x)
    with torch.no_grad():
        q.scale.mul_(1.1)
        q.zero_point.add_(2.4)
    sd = q.state_dict()
    assert set(sd) == {"scale", "zero_point", "calibrated"}
    fresh = FakeQuantizer(spec)
    assert not fresh.is_calibrated
    fresh.load_state_dict(sd)
    assert fresh.is_calibrated
    assert torch.equal(fresh(x), q(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_float32(dtype):
    x = (torch.randn(64) * 3).to(dtype)
    q = calibrated(QuantSpec(bits=8, symmetric=False, learnable=True), x.float())
    y = q(x)
    assert y.dtype == dtype
    assert torch.equal(y, oracle(q, x.float()).to(dtype))


def test_forward_and_backward_read_nothing_on_the_host(monkeypatch):
    x = torch.randn(4, 6) * 2
    q = calibrated(QuantSpec(bits=4, symmetric=False, per_channel=True, axis=1, learnable=True),
                   x, 6)
    xr = x.clone().requires_grad_()

    def forbidden(*args, **kwargs):
        raise AssertionError("host read of a tensor value")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    q(xr).sum().backward()
    monkeypatch.undo()
    assert q.scale.grad is not None


def test_constructor_errors():
    with pytest.raises(ValueError, match="needs an axis"):
        FakeQuantizer(QuantSpec(per_channel=True), 4)
    with pytest.raises(ValueError, match="num_channels"):
        FakeQuantizer(QuantSpec(per_channel=True, axis=0))
    with pytest.raises(ValueError, match="per-tensor spec has one scale"):
        FakeQuantizer(QuantSpec(), 4)
    with pytest.raises(ValueError, match="role"):
        FakeQuantizer(QuantSpec(), role="bias")
