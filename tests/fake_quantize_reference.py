"""Plain-PyTorch references for the fake-quant operators, written from the numerics in DESIGN.md
(not from the C++ code), the PyTorch oracle calls, and the test-data generators the fake-quant
test files share.

The reference forward performs the same IEEE operations as the contract in DESIGN.md, one
PyTorch op at a time, so it must match the operators bit for bit::

    q    = clamp(round_half_even(x * (1/s)) + z, qmin, qmax)      # 1/s in the compute dtype
    y    = (q - z) * s
    mask = qmin <= round_half_even(x * (1/s)) + z <= qmax

The compute dtype is float32 for float32 / float16 / bfloat16 inputs (cast back at the end) and
float64 for float64 inputs. The LSQ gradients are summed in float64 from the float64 values of the
float32 operands, so they are the exact sums of the exact terms up to float64 rounding; the
operators sum in float32 blocks, hence `assert_sum_close`.

References always run on the CPU, whatever device the operator ran on.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

# ---------------------------------------------------------------------------------------------
# Ranges, parameters and inputs


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def channel_view(param: torch.Tensor, ndim: int, axis: Optional[int]) -> torch.Tensor:
    """A per-tensor (one element) or per-channel (1-D) parameter, broadcastable to the input."""
    if axis is None:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return param.reshape(shape)


def make_scales(channels: int, generator: torch.Generator) -> torch.Tensor:
    """float32 scales: powers of two (exact ties exist) alternating with arbitrary values (the
    product x * (1/s) then rounds, which is where x * (1/s) and x / s differ)."""
    arbitrary = 0.005 + 0.5 * torch.rand(channels, generator=generator)
    powers = torch.pow(2.0, -torch.randint(1, 9, (channels,), generator=generator).float())
    use_power = torch.arange(channels) % 2 == 0
    return torch.where(use_power, powers, arbitrary).float()


def make_zero_points(channels: int, qmin: int, qmax: int, generator: torch.Generator,
                     dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """Integer-valued zero points anywhere in the range, the range ends included."""
    z = torch.randint(qmin, qmax + 1, (channels,), generator=generator)
    if channels >= 2:
        z[0], z[-1] = qmin, qmax
    return z.to(dtype)


def make_input(shape, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
               axis: Optional[int], generator: torch.Generator,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A contiguous float32-computed tensor mixing, element by element:
    uniform values over the range and 25% beyond each end, values exactly on rounding ties
    ((k + 0.5) * s; exact ties where s is a power of two), exact grid points (k * s), zeros and
    values far outside the range (up to 1e6 range widths, still small enough that |x / s| fits
    int64, which PyTorch's operators cast to)."""
    ndim = len(shape)
    s = channel_view(scale.float(), ndim, axis).expand(shape)
    z = channel_view(zero_point.double().round().clamp(qmin, qmax).float(), ndim, axis)
    z = z.expand(shape)
    width = float(qmax - qmin)
    u = torch.rand(shape, generator=generator)
    lo, hi = qmin - 0.25 * width, qmax + 0.25 * width
    uniform = ((lo + (hi - lo) * u) - z) * s
    k = torch.randint(qmin - 3, qmax + 3, shape, generator=generator).float() - z
    ties = (k + 0.5) * s
    grid = k * s
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
    far = sign * width * s * torch.pow(10.0, 1 + 5 * torch.rand(shape, generator=generator))
    kind = torch.randint(0, 10, shape, generator=generator)
    x = torch.where(kind < 5, uniform, ties)
    x = torch.where(kind == 7, grid, x)
    x = torch.where(kind == 8, far, x)
    x = torch.where(kind == 9, torch.zeros_like(x), x)
    return x.to(dtype)


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `x` (same shape), stored in another layout."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[x.dim()]
        return x.contiguous(memory_format=fmt)
    if layout == "transposed":  # dense, not contiguous: the last two dims swapped in memory
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":  # not dense: every other element of a larger buffer
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        big[..., ::2] = x
        out = big[..., ::2]
        assert not out.is_contiguous() or x.shape[-1] <= 1
        return out
    raise ValueError(layout)


# ---------------------------------------------------------------------------------------------
# Reference implementation


def effective_zero_point(zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    # torch.round rounds half to even; float64 holds every zero point exactly.
    return zero_point.detach().cpu().double().round().clamp(qmin, qmax)


def reference_forward(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                      qmin: int, qmax: int, axis: Optional[int] = None):
    """Returns (y in x's dtype, unclamped v, s, z) computed on the CPU in the compute dtype."""
    ct = compute_dtype(x.dtype)
    xc = x.detach().cpu().to(ct)
    s = channel_view(scale.detach().cpu().to(ct), x.dim(), axis)
    z = channel_view(effective_zero_point(zero_point, qmin, qmax).to(ct), x.dim(), axis)
    inv_s = torch.ones_like(s) / s  # correctly rounded, in the compute dtype
    v = torch.round(xc * inv_s) + z
    q = torch.clamp(v, qmin, qmax)  # NaN stays NaN
    y = (q - z) * s
    return y.to(x.dtype), v, s, z


def reference_mask(x, scale, zero_point, qmin, qmax, axis=None) -> torch.Tensor:
    _, v, _, _ = reference_forward(x, scale, zero_point, qmin, qmax, axis)
    return (v >= qmin) & (v <= qmax)  # NaN compares false


def reference_lsq_backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                           zero_point: torch.Tensor, qmin: int, qmax: int,
                           axis: Optional[int] = None, grad_factor: float = 1.0):
    """The DESIGN.md table, summed in float64 on the CPU. Returns
    (dx, dscale, dzero_point, mag_dscale, mag_dzero_point, elements_per_channel) where mag_* are
    sums of the magnitudes of the terms' operands (for tolerances, see sum_tolerance)."""
    _, v, s, z = reference_forward(x, scale, zero_point, qmin, qmax, axis)
    ct = compute_dtype(x.dtype)
    # y before the cast to x's dtype: for float16 / bfloat16 inputs, y / s = q - z stays exact in
    # float32, and (y - x) / s is the distance to the grid, not the output's rounding error.
    y = (torch.clamp(v, qmin, qmax) - z) * s
    dy_c = dy.detach().cpu()
    below, above = v < qmin, v > qmax
    inside = (v >= qmin) & (v <= qmax)
    dx = torch.where(inside, dy_c, torch.zeros_like(dy_c))

    d = dy_c.to(ct).double()
    xd = x.detach().cpu().to(ct).double()
    yd = y.double()
    sd, zd = s.double(), z.double()
    zero = torch.zeros_like(d)
    ds = torch.where(inside, d * (yd - xd) / sd, zero)
    ds = torch.where(below, d * (qmin - zd), ds)
    ds = torch.where(above, d * (qmax - zd), ds)
    dz = torch.where(below | above, -d * sd, zero)

    dims = [i for i in range(x.dim()) if axis is None or i != axis % x.dim()]
    n = x.numel() if axis is None else (x.numel() // max(x.shape[axis], 1))

    def reduce(t):
        return t.sum(dim=dims) if dims else t

    dscale = (reduce(ds) * grad_factor).reshape(scale.shape)
    dzero = (reduce(dz) * grad_factor).reshape(zero_point.shape)
    # Magnitudes for tolerances: an in-range term (y - x) / s cancels, so its rounding error is
    # relative to |y| + |x|, not to the term (how y is rounded is free: an FMA may form
    # (q - z) * s - x with the exact product).
    mag_ds = torch.where(inside, d.abs() * (yd.abs() + xd.abs()) / sd, ds.abs())
    mag_ds = torch.where(inside | below | above, mag_ds, zero)
    mag_ds = (reduce(mag_ds) * abs(grad_factor)).reshape(scale.shape)
    mag_dz = (reduce(dz.abs()) * abs(grad_factor)).reshape(zero_point.shape)
    return dx, dscale, dzero, mag_ds, mag_dz, n


# ---------------------------------------------------------------------------------------------
# PyTorch's operators (the oracle)


def torch_fake_quantize(x, scale, zero_point, qmin, qmax, axis=None):
    """torch.fake_quantize_per_{tensor,channel}_affine: float32 scale, int32 zero point."""
    zp = zero_point.detach().round().to(torch.int32)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale.detach().float().reshape(1),
                                                     zp.reshape(1), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale.detach().float(), zp,
                                                  axis % x.dim(), qmin, qmax)


def torch_fake_quantize_learnable(x, scale, zero_point, qmin, qmax, axis=None,
                                  grad_factor=1.0):
    """torch._fake_quantize_learnable_per_{tensor,channel}_affine; float zero point (PyTorch's
    per-channel op wants a non-negative axis)."""
    if axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, scale, zero_point, qmin, qmax, grad_factor)
    return torch._fake_quantize_learnable_per_channel_affine(
        x, scale, zero_point, axis % x.dim(), qmin, qmax, grad_factor)


def move_off_learnable_ties(x, scale, zero_point, qmin, qmax, axis=None):
    """PyTorch's learnable backward kernels disagree with PyTorch's own forward near rounding
    ties: they round z + x * (1/s) (z added before rounding, e.g. for z = 1 and x / s = 2.5 the
    forward gives q - z = 2 and the backward uses 3) and round near-ties computed otherwise
    (x / s = -98.5 in float32, z = 94: the backward uses q - z = -99). Our operators follow the
    forward, as DESIGN.md asks. For the comparison with that oracle only, this moves elements
    within 1e-4 of a tie onto the grid (x := y); the reference keeps testing the ties."""
    xc = x.detach().cpu().float()
    s = channel_view(scale.detach().cpu().float(), x.dim(), axis)
    z = channel_view(effective_zero_point(zero_point, qmin, qmax).float(), x.dim(), axis)
    t = xc * (torch.ones_like(s) / s)
    near_tie = ((t - torch.floor(t) - 0.5).abs() <= 1e-4) & (t.abs() < 2.0**22)
    y = (torch.clamp(torch.round(t) + z, qmin, qmax) - z) * s
    return torch.where(near_tie, y, xc).to(x.dtype).to(x.device)


# ---------------------------------------------------------------------------------------------
# Comparisons


def assert_same_values(got: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Same shape and dtype, NaN where expected is NaN, torch.equal everywhere else."""
    got_c, exp_c = got.detach().cpu(), expected.detach().cpu()
    assert got_c.shape == exp_c.shape, f"{what}: shape {got_c.shape} != {exp_c.shape}"
    assert got_c.dtype == exp_c.dtype, f"{what}: dtype {got_c.dtype} != {exp_c.dtype}"
    nan_g = got_c.isnan() if got_c.is_floating_point() else torch.zeros_like(got_c, dtype=bool)
    nan_e = exp_c.isnan() if exp_c.is_floating_point() else torch.zeros_like(exp_c, dtype=bool)
    assert torch.equal(nan_g, nan_e), (
        f"{what}: NaN at {nan_g.nonzero()[:5].tolist()} vs expected {nan_e.nonzero()[:5].tolist()}")
    g = torch.where(nan_g, torch.zeros_like(got_c), got_c)
    e = torch.where(nan_e, torch.zeros_like(exp_c), exp_c)
    if not torch.equal(g, e):
        bad = (g != e).nonzero()
        idx = tuple(bad[0].tolist())
        raise AssertionError(
            f"{what}: {bad.shape[0]} of {g.numel()} elements differ; first at {idx}: "
            f"got {g[idx].item()!r}, expected {e[idx].item()!r}")


def sum_tolerance(magnitude: torch.Tensor, total: torch.Tensor, n: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """Tolerance of a float sum of n terms t_i against the exact sum `total`, given the sum of
    the terms' magnitudes `magnitude` (reference_lsq_backward's mag_*, >= sum |t_i|).

    * Each term carries a few ulps of its magnitude (the operator forms (y - x) * (1/s) where the
      reference divides; y may be rounded or not): 8 eps * magnitude.
    * Summation in the compute dtype: each partial sum is rounded. Where the terms' signs are
      random the partial sums stay small and the error is O(eps * sum |t_i|), inside the first
      bound; where they are not, the partial sums grow like k / n * total and the rounding
      errors, of random sign, add up to about eps * sqrt(n) * |total| (sequential float32
      blocks); pairwise sums (PyTorch) do better: 4 eps * sqrt(n) * |total|.
    The worst case of sequential summation, n eps * sum |t_i|, is far too loose to test anything.
    """
    eps = torch.finfo(compute_dtype(dtype)).eps
    return eps * (8.0 * magnitude.double() + 4.0 * math.sqrt(max(n, 1)) * total.double().abs())


def assert_sum_close(got: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor, n: int,
                     dtype: torch.dtype, what: str = "") -> None:
    """|got - expected| <= sum_tolerance + the rounding of the result to got's dtype (a float32
    scale gets a float32 gradient even when a float64 input summed it in float64)."""
    got_d = got.detach().cpu().double()
    exp_d = expected.detach().cpu().double()
    assert got_d.shape == exp_d.shape, f"{what}: shape {got_d.shape} != {exp_d.shape}"
    tol = sum_tolerance(magnitude.cpu(), exp_d, n, dtype) + torch.finfo(got.dtype).eps * exp_d.abs()
    err = (got_d - exp_d).abs()
    ok = err <= tol
    if not bool(ok.all()):
        i = int((~ok).reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{what}: element {i}: got {got_d.reshape(-1)[i].item()!r}, expected "
            f"{exp_d.reshape(-1)[i].item()!r} (|err| {err.reshape(-1)[i].item():.3g} > tol "
            f"{tol.reshape(-1)[i].item():.3g}, n={n})")
