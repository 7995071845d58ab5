"""The fake-quant operators as PyTorch sees them: float64 gradcheck where the straight-through
estimator is exact, torch.library.opcheck, the TorchScript save/load round trip and
torch.compile(fullgraph=True)."""

import pytest
import torch
from torch.library import opcheck

import torchqat
from fake_quantize_reference import make_input, make_scales, make_zero_points, with_layout
from isolated import run_isolated

ops = torch.ops.torchqat

# ---------------------------------------------------------------------------------------------
# gradcheck
#
# The forward is piecewise constant in x and in the zero point (round) and piecewise linear in
# the scale, so its true derivative is 0 almost everywhere in x, while the estimators give 1
# (STE) and (y - x) / s (LSQ). gradcheck compares with finite differences, so it can only pass
# where the estimator is the derivative:
#   * input, in range, at a tiny scale: y = x + (rounding error <= s/2), so the central
#     difference (y(x+eps) - y(x-eps)) / (2 eps) = 1 within s / (2 eps). With s = 1e-10,
#     eps = 1e-7 (keeping x +- eps inside the 16-bit range, 65535 * s wide) that is 5e-4:
#     atol = s / eps. Outside the range y is constant: 0 both ways.
#   * scale, saturated elements: y = (qmax - z) * s is linear in s, derivative qmax - z (and
#     qmin - z below), exactly the table; perturbing s by eps keeps them saturated.
#   * scale, x = 0: y = 0 for every s, and the table gives (0 - 0) / s = 0.
#   * In range elsewhere, d/ds of round(x/s) * s is round(x/s) (for x off ties) while LSQ gives
#     round(x/s) - x/s, and the zero point is rounded, so its true derivative is 0 where LSQ+
#     gives -s: those are checked against the DESIGN.md table in test_fake_quantize.py instead.


def _tiny_scale_problem(axis, device, generator):
    qmin, qmax = -32768, 32767
    shape = (3, 20)
    channels = 1 if axis is None else shape[axis]
    s = (1e-10 * (1 + torch.arange(channels, dtype=torch.float64))).to(device)
    sv = s.cpu() if axis is None else s.cpu().reshape([-1 if d == axis % 2 else 1
                                                       for d in range(2)])
    inside = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * 30000 * sv
    far = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0).double() * 1e-3
    x = torch.where(torch.rand(shape, generator=generator) < 0.8, inside, far)
    z = torch.zeros(channels, dtype=torch.int32, device=device)
    return x.to(device), s, z, qmin, qmax, float(s.max())


@pytest.mark.parametrize("op_name", ["fake_quantize", "fake_quantize_lsq"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_gradcheck_input(device, generator, op_name, axis):
    x, s, z, qmin, qmax, s_max = _tiny_scale_problem(axis, device, generator)
    op = getattr(ops, op_name)
    eps = 1e-7
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: op(t, s, z, qmin, qmax, axis), (x,), eps=eps,
                                    atol=s_max / eps, rtol=0.0)


@pytest.mark.parametrize("axis", [None, 0, -1])
def test_gradcheck_scale_saturated_and_zero(device, generator, axis):
    qmin, qmax = -128, 127
    shape = (4, 9)
    channels = 1 if axis is None else shape[axis]
    s = (0.05 + 0.1 * torch.rand(channels, generator=generator, dtype=torch.float64))
    z = torch.tensor([3.0] * channels, dtype=torch.float64)
    # |x| = 100 is > 600 steps beyond the range for every scale here; a third are exact zeros.
    kind = torch.randint(0, 3, shape, generator=generator)
    x = torch.where(kind == 0, 100.0, torch.where(kind == 1, -100.0, 0.0)).double()
    s = s.to(device).requires_grad_()
    x, z = x.to(device), z.to(device)
    assert torch.autograd.gradcheck(
        lambda sc: ops.fake_quantize_lsq(x, sc, z, qmin, qmax, axis, 1.0), (s,))


@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("op_name", ["fake_quantize_backward", "fake_quantize_lsq_backward"])
def test_gradcheck_backward_ops_in_grad(device, generator, op_name, axis):
    # The backward operators are linear in grad (dx = grad * mask, dscale and dzero_point are
    # masked sums of grad): exact for gradcheck at any input. This is what double backward
    # through fake_quantize / fake_quantize_lsq differentiates.
    qmin, qmax = 0, 255
    shape = (3, 11)
    channels = 1 if axis is None else shape[axis]
    s = make_scales(channels, generator).double().to(device)
    z = make_zero_points(channels, qmin, qmax, generator, torch.float64).to(device)
    x = make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator, torch.float64)
    x = x.to(device)
    g = torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
    g.requires_grad_()
    if op_name == "fake_quantize_backward":
        def fn(t):
            return ops.fake_quantize_backward(t, x, s, z, qmin, qmax, axis)
    else:
        def fn(t):
            return ops.fake_quantize_lsq_backward(t, x, s, z, qmin, qmax, axis, 0.5)
    assert torch.autograd.gradcheck(fn, (g,))


def test_double_backward(device, generator):
    # d(dx)/d(dy) = mask: what a gradient penalty through a fake-quantized layer needs.
    qmin, qmax = -128, 127
    s = torch.tensor([0.05], device=device)
    z = torch.tensor([0.0], device=device)
    x = make_input((50,), s.cpu(), z.cpu(), qmin, qmax, None, generator).to(device)
    x.requires_grad_()
    dy = torch.randn(50, generator=generator).to(device).requires_grad_()
    v = torch.randn(50, generator=generator).to(device)
    mask = ops.fake_quantize_backward(torch.ones_like(x), x.detach(), s, z, qmin, qmax) != 0
    for op, extra in ((ops.fake_quantize, ()), (ops.fake_quantize_lsq, (1.0,))):
        y = op(x, s, z, qmin, qmax, None, *extra)
        (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
        (ddy,) = torch.autograd.grad(dx, dy, v, allow_unused=True)
        assert ddy is not None, f"{op}: no second-order gradient"
        assert torch.equal(ddy, torch.where(mask, v, 0.0)), f"{op}"


# ---------------------------------------------------------------------------------------------
# opcheck: schema, autograd registration, fake (meta) implementations, AOT dispatch


def _opcheck_args(axis, layout, device, generator, requires_grad):
    qmin, qmax = -128, 127
    shape = (2, 6, 5, 3)
    channels = 1 if axis is None else shape[axis]
    s = make_scales(channels, generator).to(device)
    z = make_zero_points(channels, qmin, qmax, generator, torch.float32).to(device)
    x = with_layout(make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator).to(device),
                    layout)
    g = with_layout(torch.randn(shape, generator=generator).to(device), layout)
    if requires_grad:
        x.requires_grad_()
        s.requires_grad_()
        z.requires_grad_()
    return g, x, s, z, qmin, qmax


@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("op_name", ["fake_quantize", "fake_quantize_lsq",
                                     "fake_quantize_backward", "fake_quantize_lsq_backward"])
def test_opcheck(device, generator, op_name, axis, layout):
    forward = op_name in ("fake_quantize", "fake_quantize_lsq")
    g, x, s, z, qmin, qmax = _opcheck_args(axis, layout, device, generator, forward)
    if op_name == "fake_quantize":
        args = (x, s, z.detach().round().to(torch.int32), qmin, qmax, axis)
    elif op_name == "fake_quantize_lsq":
        args = (x, s, z, qmin, qmax, axis, 0.5)
    elif op_name == "fake_quantize_backward":
        args = (g, x, s, z, qmin, qmax, axis)
    else:
        args = (g, x, s, z, qmin, qmax, axis, 0.5)
    opcheck(getattr(ops, op_name).default, args)


@pytest.mark.parametrize("op_name", ["fake_quantize", "fake_quantize_lsq",
                                     "fake_quantize_backward", "fake_quantize_lsq_backward"])
def test_elementwise_operators_accept_any_layout_under_inductor(op_name):
    # flexible_layout: Inductor passes tensors in the layout it chose (channels_last around
    # convolutions) instead of copying them to the eager strides. That relies on what the layout
    # cases of test_opcheck and test_fake_quantize.py check: any input layout is accepted, and
    # results are laid out like the input, as the fake implementations say.
    assert torch.Tag.flexible_layout in getattr(ops, op_name).default.tags


# ---------------------------------------------------------------------------------------------
# TorchScript


@torch.jit.script
def scripted_lsq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                 axis: int) -> torch.Tensor:
    per_channel = torch.ops.torchqat.fake_quantize_lsq(x, scale, zero_point, -128, 127, axis, 0.5)
    per_tensor = torch.ops.torchqat.fake_quantize_lsq(x, scale[:1], zero_point[:1], 0, 255, None,
                                                      2.0)
    return per_channel * 3.0 + per_tensor


class ScriptedLsq(torch.nn.Module):
    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                axis: int) -> torch.Tensor:
        return scripted_lsq(x, scale, zero_point, axis)


def _eager_lsq(x, scale, zero_point, axis):
    per_channel = ops.fake_quantize_lsq(x, scale, zero_point, -128, 127, axis, 0.5)
    per_tensor = ops.fake_quantize_lsq(x, scale[:1], zero_point[:1], 0, 255, None, 2.0)
    return per_channel * 3.0 + per_tensor


def _run_with_grads(fn, x, s, z, axis, dy):
    x, s, z = (t.detach().clone().requires_grad_() for t in (x, s, z))
    y = fn(x, s, z, axis)
    y.backward(dy)
    return y.detach(), x.grad, s.grad, z.grad


def _lsq_problem(device, generator, shape=(4, 5, 6), axis=1):
    s = make_scales(shape[axis], generator).to(device)
    z = make_zero_points(shape[axis], 0, 127, generator, torch.float32).to(device)
    x = make_input(shape, s.cpu(), z.cpu(), -128, 127, axis, generator).to(device)
    dy = torch.randn(shape, generator=generator).to(device)
    return x, s, z, dy


def test_torchscript_save_load(device, generator, tmp_path):
    x, s, z, dy = _lsq_problem(device, generator)
    path = tmp_path / "lsq.pt"
    torch.jit.save(torch.jit.script(ScriptedLsq()), str(path))
    loaded = torch.jit.load(str(path), map_location=device)
    assert "torchqat::fake_quantize_lsq" in str(loaded.inlined_graph)
    expected = _run_with_grads(_eager_lsq, x, s, z, 1, dy)
    for fn in (scripted_lsq, loaded):
        got = _run_with_grads(fn, x, s, z, 1, dy)
        for name, a, b in zip(("y", "dx", "dscale", "dzero_point"), got, expected):
            assert torch.equal(a, b), name


def test_python_wrappers_script(device, generator):
    # The typed Python entry points compile with TorchScript too.
    x, s, z, _ = _lsq_problem(device, generator)
    fq = torch.jit.script(torchqat.fake_quantize)
    lsq = torch.jit.script(torchqat.fake_quantize_lsq)
    zi = z.round().to(torch.int32)
    assert torch.equal(fq(x, s, zi, -128, 127, 1), ops.fake_quantize(x, s, zi, -128, 127, 1))
    assert torch.equal(lsq(x, s, z, -128, 127, 1, 0.5),
                       ops.fake_quantize_lsq(x, s, z, -128, 127, 1, 0.5))
    assert torch.equal(lsq(x, s[:1], z[:1], -128, 127),
                       ops.fake_quantize_lsq(x, s[:1], z[:1], -128, 127, None, 1.0))


# ---------------------------------------------------------------------------------------------
# torch.compile


def _compile_case(device, generator, layout):
    shape, axis = (2, 6, 5, 3), 1
    x, s, z, dy = _lsq_problem(device, generator, shape, axis)
    return with_layout(x, layout), s, z, with_layout(dy, layout), axis


def _model(x, scale, zero_point, axis: int):
    a = torch.ops.torchqat.fake_quantize_lsq(x, scale, zero_point, -128, 127, axis, 0.5)
    b = torch.ops.torchqat.fake_quantize(torch.relu(x), scale[:1], zero_point[:1].to(torch.int32),
                                         0, 255, None)
    return a * 2.0 + b


@pytest.mark.parametrize("backend,layout", [
    ("aot_eager", "contiguous"),
    ("aot_eager", "channels_last"),
    # Inductor compiles C++ for the surrounding ops: ~30 s on 2 cores with a cold cache.
    pytest.param("inductor", "channels_last", marks=pytest.mark.slow),
])
def test_torch_compile_fullgraph(device, generator, backend, layout):
    torch._dynamo.reset()
    x, s, z, dy, axis = _compile_case(device, generator, layout)
    compiled = torch.compile(_model, backend=backend, fullgraph=True)
    expected = _run_with_grads(_model, x, s, z, axis, dy)
    got = _run_with_grads(compiled, x, s, z, axis, dy)
    for name, a, b in zip(("y", "dx", "dscale", "dzero_point"), got, expected):
        assert a.shape == b.shape, name
        assert torch.equal(a, b), name
    assert got[0].stride() == expected[0].stride()


# ---------------------------------------------------------------------------------------------
# The in-place backward operators: the autograd backward writes the input gradient over the
# incoming gradient when it holds the only reference to it (CPU). Every path must give the
# functional operator's results, and a gradient someone else can see must never change.

# (forward, functional backward, in-place backward, extra forward arguments)
_BACKWARDS = {
    "ste": (ops.fake_quantize, ops.fake_quantize_backward, ops.fake_quantize_backward_, ()),
    "lsq": (ops.fake_quantize_lsq, ops.fake_quantize_lsq_backward,
            ops.fake_quantize_lsq_backward_, (0.5,)),
}


def _backward_ops_in(fn):
    """The torchqat backward operators that running ``fn`` calls."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()
            if e.name.startswith("torchqat::") and "backward" in e.name}


def _zero_point_for(kind, z):
    return z if kind == "lsq" else z.detach().round().to(torch.int32)


@pytest.mark.parametrize("kind", ["ste", "lsq"])
@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "sliced"])
def test_inplace_backward_op_equals_functional(generator, kind, axis, layout):
    _, functional, inplace, extra = _BACKWARDS[kind]
    g, x, s, z, qmin, qmax = _opcheck_args(axis, layout, "cpu", generator, False)
    z = _zero_point_for(kind, z)
    expected = functional(g, x, s, z, qmin, qmax, axis, *extra)
    grad = with_layout(g.clone(), layout)   # its own memory, in the layout under test
    strides = grad.stride()
    out = inplace(grad, x, s, z, qmin, qmax, axis, *extra)
    if kind == "lsq":
        assert torch.equal(grad, expected[0])
        assert torch.equal(out[0], expected[1]) and torch.equal(out[1], expected[2])
    else:
        assert torch.equal(grad, expected) and out is None
    assert grad.stride() == strides


@pytest.mark.parametrize("kind", ["ste", "lsq"])
@pytest.mark.parametrize("axis", [None, 1])
def test_inplace_backward_opcheck(generator, kind, axis):
    _, _, inplace, extra = _BACKWARDS[kind]
    g, x, s, z, qmin, qmax = _opcheck_args(axis, "contiguous", "cpu", generator, False)
    opcheck(inplace.default, (g, x, s, _zero_point_for(kind, z), qmin, qmax, axis, *extra))


@pytest.mark.parametrize("kind", ["ste", "lsq"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_autograd_overwrites_only_a_gradient_nobody_else_holds(generator, kind, layout):
    forward, functional, _, extra = _BACKWARDS[kind]
    x, s, z, dy = _lsq_problem("cpu", generator, (2, 6, 5, 3), 1)
    z = _zero_point_for(kind, z)
    x, dy = with_layout(x, layout), with_layout(dy, layout)
    w = torch.randn(x.shape, generator=generator)
    learnable = kind == "lsq"

    def leaves():
        return (x.detach().clone().requires_grad_(), s.detach().clone().requires_grad_(learnable),
                z.detach().clone().requires_grad_(learnable))

    def run(keep_gradient):
        xs, ss, zs = leaves()
        y = forward(xs, ss, zs, -128, 127, 1, *extra)
        kept = []
        if keep_gradient:
            y.register_hook(kept.append)
        # The gradient reaching the operator is (y * w)'s backward: a fresh tensor.
        ((y * w).sum()).backward()
        return [t.grad for t in (xs, ss, zs) if t.requires_grad], kept

    expected = functional(w, x, s, z, -128, 127, 1, *extra)
    expected = list(expected) if learnable else [expected]
    grads, _ = run(keep_gradient=False)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected, strict=True))
    # A hook that keeps the incoming gradient must find it unchanged afterwards.
    grads2, kept = run(keep_gradient=True)
    assert torch.equal(kept[0], w)
    assert all(torch.equal(a, b) for a, b in zip(grads2, expected, strict=True))
    # So must a caller's own `gradient=` tensor.
    xs, ss, zs = leaves()
    gradient = dy.clone()
    forward(xs, ss, zs, -128, 127, 1, *extra).backward(gradient)
    assert torch.equal(gradient, dy)


@pytest.mark.parametrize("kind", ["ste", "lsq"])
def test_autograd_takes_the_inplace_backward_when_it_may(generator, kind):
    # Fails if the optimisation silently stops applying (e.g. a reference kept by the node).
    forward, functional, inplace, extra = _BACKWARDS[kind]
    x, s, z, _ = _lsq_problem("cpu", generator, (2, 6, 5, 3), 1)
    z = _zero_point_for(kind, z)
    xs = x.detach().clone().requires_grad_()
    y = forward(xs, s, z, -128, 127, 1, *extra)
    assert _backward_ops_in(lambda: (y * 2.0).sum().backward()) == {inplace.default.name()}
    y = forward(xs, s, z, -128, 127, 1, *extra)
    gradient = torch.ones_like(y)
    assert _backward_ops_in(lambda: y.backward(gradient)) == {functional.default.name()}


# ---------------------------------------------------------------------------------------------
# clamp_min_ste: FakeQuantizer's floor on learnable scales


def test_clamp_min_ste_value_and_straight_through_gradient(device):
    s = torch.tensor([-0.5, 0.0, 1e-9, 0.25, 3.0], dtype=torch.float64, device=device,
                     requires_grad=True)
    y = ops.clamp_min_ste(s, 1e-8)
    assert torch.equal(y, s.detach().clamp_min(1e-8))
    v = torch.arange(1.0, 6.0, dtype=torch.float64, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(y, s, v, create_graph=True)
    assert torch.equal(g, v)   # gradient 1 everywhere, also below the floor
    (gg,) = torch.autograd.grad(g.sum(), v)   # and differentiable again: the identity
    assert torch.equal(gg, torch.ones_like(v))
    assert torch.autograd.gradcheck(lambda t: ops.clamp_min_ste(t, -10.0), (s,))


def test_clamp_min_ste_opcheck_and_errors(device):
    s = torch.tensor([-0.5, 0.25, 3.0], device=device, requires_grad=True)
    opcheck(ops.clamp_min_ste.default, (s, 1e-8))
    with pytest.raises(RuntimeError, match="clamp_min_ste: input must be a floating-point"):
        ops.clamp_min_ste(torch.tensor([1, 2], device=device), 0.5)
    with pytest.raises(RuntimeError, match="clamp_min_ste: min must be finite"):
        ops.clamp_min_ste(s, float("nan"))


# ---------------------------------------------------------------------------------------------
# fake_quantize_lsq's min_scale: the same straight-through floor inside the operator's own node


@pytest.mark.parametrize("axis", [None, 1])
def test_lsq_min_scale_equals_clamp_min_ste_composition(device, generator, axis):
    g, x, s, z, qmin, qmax = _opcheck_args(axis, "contiguous", device, generator, True)
    floor = float(s.detach().median()) * 1.01  # per channel about half the scales lie below
    s_ref = s.detach().clone().requires_grad_()
    z_ref = z.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = ops.fake_quantize_lsq(x, s, z, qmin, qmax, axis, 0.5, floor)
    y_ref = ops.fake_quantize_lsq(x_ref, ops.clamp_min_ste(s_ref, floor), z_ref, qmin, qmax,
                                  axis, 0.5)
    assert torch.equal(y, y_ref)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.equal(s.grad, s_ref.grad)   # straight through: also below the floor
    assert torch.equal(z.grad, z_ref.grad)
    assert bool((s.detach() < floor).any()) and bool((s.grad[s.detach() < floor] != 0).any())


def test_lsq_min_scale_without_autograd_and_opcheck(device, generator):
    g, x, s, z, qmin, qmax = _opcheck_args(None, "contiguous", device, generator, False)
    low = torch.full_like(s, -0.25)   # a scale an optimizer pushed below zero
    with torch.inference_mode():     # the backend kernel itself, no autograd node
        y = ops.fake_quantize_lsq(x, low, z, qmin, qmax, None, 1.0, 0.01)
    assert torch.equal(y, ops.fake_quantize_lsq(x, torch.full_like(s, 0.01), z, qmin, qmax))
    args = (x.requires_grad_(), low.requires_grad_(), z.requires_grad_(), qmin, qmax, None,
            0.5, 0.01)
    opcheck(ops.fake_quantize_lsq.default, args)


def test_lsq_min_scale_errors(device, generator):
    _, x, s, z, qmin, qmax = _opcheck_args(None, "contiguous", device, generator, False)
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(RuntimeError, match="fake_quantize_lsq: min_scale must be finite "
                                               "and >= 0"):
            ops.fake_quantize_lsq(x, s, z, qmin, qmax, None, 1.0, bad)
    # min_scale = 0 applies no floor: a non-positive scale is still refused.
    if device == "cpu":
        with pytest.raises(RuntimeError, match="fake_quantize_lsq: scale must be positive"):
            ops.fake_quantize_lsq(x, torch.zeros_like(s), z, qmin, qmax, None, 1.0, 0.0)
        return
    # On CUDA the scale is checked on the device (no host synchronisation): the kernel prints
    # the message and a device assertion ends the process, so the call runs in a child.
    r = run_isolated("""
        import torch, torchqat
        x = torch.randn(4, 5, device="cuda")
        s = torch.zeros(1, device="cuda")
        z = torch.zeros(1, device="cuda")
        torch.ops.torchqat.fake_quantize_lsq(x, s, z, -128, 127, None, 1.0, 0.0)
        torch.cuda.synchronize()
    """)
    assert r.returncode != 0
    assert "fake_quantize_lsq: scale must be positive and finite, got 0" in r.stdout + r.stderr, \
        r.stdout + r.stderr
