"""A learnable quantizer after a SiLU: ``torchqat::fake_quantize_lsq_after_silu`` and its fused
backward ``fake_quantize_lsq_after_silu_backward_`` (one pass for LSQ's and SiLU's backward), and
``FakeQuantizer`` taking it when its input comes straight from a SiLU.

References: the forward is ``fake_quantize_lsq``'s bit for bit; the gradients are checked against
a float64 plain-PyTorch reference (``reference_lsq_backward`` and SiLU's derivative written out)
and against the unfused path (``fake_quantize_lsq`` with autograd through ATen's SiLU)."""

import pytest
import torch
import torch.nn.functional as F
from fake_quantize_reference import make_scales, make_zero_points, reference_lsq_backward
from torch import nn
from torch.library import opcheck

import torchqat as tq
import torchqat.quantizers as quantizers

ops = torch.ops.torchqat


def make_pre_activation(shape, generator, dtype=torch.float32):
    """SiLU inputs: mostly N(0, 3), with exact zeros (sigmoid(0) = 1/2 is a special case of the
    kernel), large positive and negative values (sigmoid saturates) and a few of magnitude 100."""
    t = torch.randn(shape, generator=generator) * 3.0
    kind = torch.randint(0, 10, shape, generator=generator)
    t = torch.where(kind == 0, torch.zeros_like(t), t)
    t = torch.where(kind == 1, t * 10.0, t)
    t = torch.where(kind == 2, torch.sign(t) * 100.0, t)
    return t.to(dtype)


def reference_silu_grad(grad_x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """silu'(t) * grad in float64: sigmoid(t) * (1 + t * (1 - sigmoid(t)))."""
    t = pre.detach().double()
    sig = torch.sigmoid(t)
    return grad_x.double() * sig * (1.0 + t * (1.0 - sig))


def qparams(axis, channels, generator, qmin, qmax):
    s = make_scales(1 if axis is None else channels, generator) * 0.5
    z = make_zero_points(1 if axis is None else channels, qmin, qmax, generator,
                         torch.float32)
    return s, z


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


# ---------------------------------------------------------------------------------------------
# The operators


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("qrange", [(0, 255), (-8, 7)])
def test_fused_backward_against_reference(generator, dtype, axis, layout, qrange):
    qmin, qmax = qrange
    shape = (3, 5, 7, 9)
    s, z = qparams(axis, shape[1], generator, qmin, qmax)
    pre = with_layout(make_pre_activation(shape, generator, dtype), layout)
    x = F.silu(pre)  # ATen's SiLU, as in a model
    dy = with_layout(torch.randn(shape, generator=generator, dtype=dtype), layout)

    # Forward: exactly fake_quantize_lsq's value.
    y = ops.fake_quantize_lsq_after_silu(x, pre, s, z, qmin, qmax, axis, 0.25)
    assert torch.equal(y, ops.fake_quantize_lsq(x, s, z, qmin, qmax, axis, 0.25))
    assert y.stride() == x.stride()

    grad = dy.clone()
    dscale, dzero = ops.fake_quantize_lsq_after_silu_backward_(grad, x, pre, s, z, qmin, qmax,
                                                               axis, 0.25)
    ref_dx, ref_ds, ref_dz, mag_ds, mag_dz, _ = reference_lsq_backward(dy, x, s, z, qmin, qmax,
                                                                       axis, 0.25)
    ref = reference_silu_grad(ref_dx, pre)
    eps = torch.finfo(dtype).eps
    # Each element is a product of four rounded factors (the sigmoid from x / t carries two
    # roundings, x itself a few): a few units in the last place of |dy| * max(|silu'|, 1).
    bound = 16 * eps * ref_dx.double().abs()
    err = (grad.double() - ref).abs()
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max())}"
    assert grad.stride() == dy.stride()
    # The scale and zero-point gradients are LSQ's, unchanged by the fusion.
    _, ds_plain, dz_plain = ops.fake_quantize_lsq_backward(dy, x, s, z, qmin, qmax, axis, 0.25)
    assert torch.equal(dscale, ds_plain)
    assert torch.equal(dzero, dz_plain)
    assert torch.allclose(dscale.double(), ref_ds, rtol=0, atol=float(mag_ds.max()) * 1e-5)
    assert torch.allclose(dzero.double(), ref_dz, rtol=0, atol=float(mag_dz.max()) * 1e-5 + 1e-12)


def test_fused_backward_equals_unfused_composition(generator):
    """Against ATen's silu_backward applied to the LSQ input gradient (what runs unfused)."""
    shape = (4, 8, 16, 16)
    s, z = qparams(None, 8, generator, 0, 255)
    pre = make_pre_activation(shape, generator)
    x = F.silu(pre)
    dy = torch.randn(shape, generator=generator)
    grad = dy.clone()
    ops.fake_quantize_lsq_after_silu_backward_(grad, x, pre, s, z, 0, 255, None, 1.0)
    dx, _, _ = ops.fake_quantize_lsq_backward(dy, x, s, z, 0, 255, None, 1.0)
    unfused = torch.ops.aten.silu_backward(dx, pre)
    eps = torch.finfo(torch.float32).eps
    assert bool(((grad - unfused).abs() <= 16 * eps * dx.abs()).all())
    # Where the quantizer clipped, nothing passes: exactly zero, as unfused.
    assert torch.equal(grad == 0, unfused == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_backward_reduced_precision(generator, dtype):
    """float16 / bfloat16 take ATen's exponential for the sigmoid (x has too few bits)."""
    shape = (2, 4, 8, 8)
    s, z = qparams(None, 4, generator, 0, 255)
    pre = (torch.randn(shape, generator=generator) * 2).to(dtype)
    x = F.silu(pre)
    dy = torch.randn(shape, generator=generator).to(dtype)
    grad = dy.clone()
    ops.fake_quantize_lsq_after_silu_backward_(grad, x, pre, s, z, 0, 255, None, 1.0)
    dx, _, _ = ops.fake_quantize_lsq_backward(dy, x, s, z, 0, 255, None, 1.0)
    unfused = torch.ops.aten.silu_backward(dx, pre)
    eps = torch.finfo(dtype).eps
    assert bool(((grad.float() - unfused.float()).abs() <= 2 * eps * dx.float().abs()).all())


def test_every_layout_gives_the_same_bits(generator):
    """The in-place and the functional backward, and pre_activation or grad in another layout
    than input (copied into the kernel's layout): one kernel, the same bits. Autograd takes the
    in-place operator only when it owns the gradient, so its result must not depend on that."""
    shape = (2, 6, 5, 5)
    s, z = qparams(None, 6, generator, 0, 255)
    pre = make_pre_activation(shape, generator)
    x = F.silu(pre)
    dy = torch.randn(shape, generator=generator)
    pre_cl = pre.contiguous(memory_format=torch.channels_last)
    fused, other = dy.clone(), dy.clone()
    ds1, dz1 = ops.fake_quantize_lsq_after_silu_backward_(fused, x, pre, s, z, 0, 255)
    ds2, dz2 = ops.fake_quantize_lsq_after_silu_backward_(other, x, pre_cl, s, z, 0, 255)
    assert torch.equal(fused, other)
    assert torch.equal(ds1, ds2) and torch.equal(dz1, dz2)
    functional, ds3, dz3 = ops.fake_quantize_lsq_after_silu_backward(dy, x, pre, s, z, 0, 255)
    assert torch.equal(functional, fused) and torch.equal(ds3, ds1) and torch.equal(dz3, dz1)
    # A non-contiguous grad too: written in place through its strides.
    big = torch.zeros(2, 6, 5, 10)
    strided = big[..., ::2]
    strided.copy_(dy)
    ops.fake_quantize_lsq_after_silu_backward_(strided, x, pre, s, z, 0, 255)
    assert torch.equal(strided, fused)
    assert torch.equal(big[..., 1::2], torch.zeros(2, 6, 5, 5))
    # A channels_last input with a contiguous pre_activation (per-channel, a copied layout).
    sc, zc = qparams(1, 6, generator, 0, 255)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    a = dy.clone()
    ops.fake_quantize_lsq_after_silu_backward_(a, x, pre, sc, zc, 0, 255, 1)
    b, _, _ = ops.fake_quantize_lsq_after_silu_backward(dy, x_cl, pre, sc, zc, 0, 255, 1)
    assert torch.equal(a, b)


def test_autograd_of_the_op(generator):
    """Gradients through the op's autograd node: to pre_activation, scale and zero point, in
    float64 against the unfused composition (same formulas, autograd through ATen's SiLU)."""
    shape = (2, 3, 6, 6)
    s0, z0 = qparams(None, 3, generator, 0, 15)
    pre0 = make_pre_activation(shape, generator, torch.float64)
    dy = torch.randn(shape, generator=generator, dtype=torch.float64)

    def grads(fused):
        pre = pre0.clone().requires_grad_()
        s = s0.double().clone().requires_grad_()
        z = z0.double().clone().requires_grad_()
        x = F.silu(pre)
        if fused:
            y = ops.fake_quantize_lsq_after_silu(x.detach(), pre, s, z, 0, 15, None, 0.5, 1e-3)
        else:
            y = ops.fake_quantize_lsq(x, s, z, 0, 15, None, 0.5, 1e-3)
        y.backward(dy)
        return y.detach(), pre.grad, s.grad, z.grad

    got, want = grads(True), grads(False)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(got[2], want[2], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(got[3], want[3], rtol=1e-13, atol=1e-15)


def test_double_backward(generator):
    """create_graph=True takes the differentiable two-step backward: second-order gradients equal
    the unfused path's."""
    shape = (2, 3, 4, 4)
    s, z = qparams(None, 3, generator, 0, 255)
    pre0 = make_pre_activation(shape, generator, torch.float64)
    v = torch.randn(shape, generator=generator, dtype=torch.float64)

    def second_order(fused):
        pre = pre0.clone().requires_grad_()
        dy = torch.ones(shape, dtype=torch.float64, requires_grad=True)
        x = F.silu(pre)
        if fused:
            y = ops.fake_quantize_lsq_after_silu(x.detach(), pre, s.double(), z.double(), 0, 255)
        else:
            y = ops.fake_quantize_lsq(x, s.double(), z.double(), 0, 255)
        (dpre,) = torch.autograd.grad(y, pre, dy, create_graph=True)
        (ddy,) = torch.autograd.grad(dpre, dy, v)
        return dpre.detach(), ddy

    got, want = second_order(True), second_order(False)
    torch.testing.assert_close(got[0], want[0], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(got[1], want[1], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(generator, axis, layout):
    shape = (2, 6, 5, 3)
    s, z = qparams(axis, shape[1], generator, -128, 127)
    pre = with_layout(make_pre_activation(shape, generator), layout)
    x = F.silu(pre)
    g = with_layout(torch.randn(shape, generator=generator), layout)
    opcheck(ops.fake_quantize_lsq_after_silu.default,
            (x, pre.requires_grad_(), s.requires_grad_(), z.requires_grad_(), -128, 127, axis,
             0.5, 1e-6))
    opcheck(ops.fake_quantize_lsq_after_silu_backward_.default,
            (g, x, pre.detach(), s.detach(), z.detach(), -128, 127, axis, 0.5))
    opcheck(ops.fake_quantize_lsq_after_silu_backward.default,
            (g, x, pre.detach(), s.detach(), z.detach(), -128, 127, axis, 0.5))


def test_errors(generator):
    shape = (2, 3, 4, 4)
    s, z = qparams(None, 3, generator, 0, 255)
    pre = torch.randn(shape, generator=generator)
    x = F.silu(pre)
    with pytest.raises(RuntimeError, match="fake_quantize_lsq_after_silu: input .* must not "
                                           "require grad"):
        ops.fake_quantize_lsq_after_silu(x.requires_grad_(), pre, s, z, 0, 255)
    x = x.detach()
    with pytest.raises(RuntimeError, match=r"pre_activation must have input's shape \[2, 3, 4, "
                                           r"4\], got \[2, 3, 4\]"):
        ops.fake_quantize_lsq_after_silu(x, pre[..., 0], s, z, 0, 255)
    with pytest.raises(RuntimeError, match="pre_activation must have input's dtype Float, got "
                                           "Double"):
        ops.fake_quantize_lsq_after_silu(x, pre.double(), s, z, 0, 255)
    with pytest.raises(RuntimeError, match="fake_quantize_lsq_after_silu_backward_: "
                                           "pre_activation must have input's shape"):
        ops.fake_quantize_lsq_after_silu_backward_(torch.ones(shape), x, pre[:1], s, z, 0, 255)
    with pytest.raises(RuntimeError, match="min_scale must be finite and >= 0"):
        ops.fake_quantize_lsq_after_silu(x, pre, s, z, 0, 255, None, 1.0, -1.0)


# ---------------------------------------------------------------------------------------------
# FakeQuantizer after a SiLU


class ConvSiluQuant(nn.Module):
    """conv -> BN -> SiLU -> (learnable quantizer -> conv), plus an optional second use of the
    SiLU output (a residual), the shape of a YOLO block."""

    def __init__(self, residual=False, inplace=False):
        super().__init__()
        self.cv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # BN follows
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU(inplace=inplace)
        self.cv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.residual = residual

    def forward(self, x):
        a = self.act(self.bn(self.cv1(x)))
        out = self.cv2(a)
        return out + a if self.residual else out


def prepared(model, batch, bits=4):
    config = tq.QATConfig(activation=tq.QuantSpec(bits=bits, symmetric=False, learnable=True),
                          skip=["cv1"])
    q = tq.prepare_qat(model, config)
    tq.calibrate(q, [batch], progress=False)
    with torch.no_grad():  # a smaller scale, so that some activations clip
        q.cv2.input_quantizer.scale.mul_(0.5)
    return q.train()


def train_grads(model, batch, fused, monkeypatch, dy_seed=0):
    if not fused:
        monkeypatch.setattr(quantizers, "silu_pre_activation", lambda x: None)
    else:
        monkeypatch.undo()
    model.zero_grad(set_to_none=True)
    out = model(batch)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(dy_seed)))
    monkeypatch.undo()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None}


def backward_ops(model, batch):
    out = model(batch)
    with torch.profiler.profile() as prof:
        out.sum().backward()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_quantizer_after_silu_takes_fused_path(generator, monkeypatch, residual, inplace):
    torch.manual_seed(0)
    batch = torch.randn(4, 3, 12, 12, generator=generator)
    model = prepared(ConvSiluQuant(residual, inplace), batch)
    names = backward_ops(model, batch)
    assert "torchqat::fake_quantize_lsq_after_silu_backward_" in names
    # SiLU's own backward runs only for the residual's use of its output.
    assert ("aten::silu_backward" in names) == residual

    out_f, g_f = train_grads(model, batch, True, monkeypatch)
    out_u, g_u = train_grads(model, batch, False, monkeypatch)
    assert torch.equal(out_f, out_u)
    assert g_f.keys() == g_u.keys()
    assert "cv2.input_quantizer.scale" in g_f and "cv1.weight" in g_f
    for name in g_f:
        scale = float(g_u[name].abs().max()) + 1e-12
        torch.testing.assert_close(g_f[name], g_u[name], rtol=1e-4, atol=1e-5 * scale,
                                   msg=name)


def test_fused_path_conditions(generator, monkeypatch):
    """Where the fused gradient could be observed differently, the plain path runs."""
    batch = torch.randn(2, 3, 8, 8, generator=generator)
    model = prepared(ConvSiluQuant(), batch)
    q = model.cv2.input_quantizer

    a = F.silu(torch.randn(2, 8, 8, 8, requires_grad=True))
    assert quantizers.silu_pre_activation(a) is not None
    assert quantizers.silu_pre_activation(a * 1.0) is None  # not straight from a SiLU
    b = F.silu(torch.randn(2, 8, 8, 8, requires_grad=True))
    b.retain_grad()
    assert quantizers.silu_pre_activation(b) is None
    c = F.silu(torch.randn(2, 8, 8, 8, requires_grad=True))
    c.register_hook(lambda g: g)
    assert quantizers.silu_pre_activation(c) is None
    with torch.no_grad():
        assert quantizers.silu_pre_activation(F.silu(torch.randn(3))) is None
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        d = F.silu(torch.randn(2, 8, 8, 8, requires_grad=True))
        assert quantizers.silu_pre_activation(d) is None

    # A hook on the SiLU output sees the whole gradient, as without the fusion.
    seen = []
    t = torch.randn(2, 8, 8, 8, requires_grad=True)
    x = F.silu(t)
    x.register_hook(lambda g: seen.append(g.clone()))
    q(x).sum().backward()
    assert len(seen) == 1 and seen[0].abs().sum() > 0


def test_activation_checkpointing(generator, monkeypatch):
    """torch.utils.checkpoint (non-reentrant) recomputes under saved-tensor hooks: plain path,
    same gradients as without checkpointing."""
    batch = torch.randn(2, 3, 8, 8, generator=generator)
    model = prepared(ConvSiluQuant(), batch)
    from torch.utils.checkpoint import checkpoint

    out = checkpoint(model, batch, use_reentrant=False)
    out.sum().backward()
    with_ckpt = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model(batch).sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(with_ckpt[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_scripted_model_trains_without_fusion(generator):
    batch = torch.randn(2, 3, 8, 8, generator=generator)
    model = prepared(ConvSiluQuant(), batch)
    scripted = torch.jit.script(model)
    out = scripted(batch)
    torch.testing.assert_close(out, model(batch))
    out.sum().backward()
    assert model.cv2.input_quantizer.scale.grad is not None


def test_torch_compile_sees_no_graph_break(generator):
    """Under torch.compile the check returns before touching grad_fn (no graph break), and the
    compiled step trains like the eager one (which takes the fused path)."""
    batch = torch.randn(2, 3, 8, 8, generator=generator)
    model = prepared(ConvSiluQuant(), batch)
    twin = prepared(ConvSiluQuant(), batch)
    twin.load_state_dict(model.state_dict())

    def step(m, x):
        return m(x).square().mean()

    explained = torch._dynamo.explain(step)(model, batch)
    assert explained.graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    compiled(model, batch).backward()
    step(twin, batch).backward()
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        if p.grad is not None:
            scale = float(q.grad.abs().max()) + 1e-12
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * scale, msg=n)
