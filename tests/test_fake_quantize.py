"""Numerics of torchqat::fake_quantize and torchqat::fake_quantize_lsq (forward and gradients)
against PyTorch's own fake-quant operators (the oracle) and the plain-PyTorch reference of
tests/fake_quantize_reference.py.

Errors: test_fake_quantize_errors.py. gradcheck, opcheck, TorchScript, torch.compile:
test_fake_quantize_autograd.py. Instruction-set paths: test_fake_quantize_isa.py.
"""

import pytest
import torch

from fake_quantize_reference import (
    assert_same_values,
    assert_sum_close,
    channel_view,
    make_input,
    make_scales,
    make_zero_points,
    move_off_learnable_ties,
    qrange,
    reference_forward,
    reference_lsq_backward,
    reference_mask,
    torch_fake_quantize,
    torch_fake_quantize_learnable,
    with_layout,
)

ops = torch.ops.torchqat

# Sizes around the vector widths (8 and 16 float32 lanes, 4 and 8 float64 lanes) and above one
# parallel grain (32768 elements).
SIZES = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 65, 1000, 32769]
BITS = list(range(2, 17))


def per_tensor_params(scale: float, qmin: int, qmax: int, zero_point: int, device,
                      zp_dtype=torch.int32):
    s = torch.tensor([scale], dtype=torch.float32, device=device)
    z = torch.tensor([zero_point], dtype=zp_dtype, device=device)
    return s, z


def per_channel_params(channels, qmin, qmax, generator, device, zp_dtype=torch.int32):
    s = make_scales(channels, generator).to(device)
    z = make_zero_points(channels, qmin, qmax, generator, zp_dtype).to(device)
    return s, z


# ---------------------------------------------------------------------------------------------
# Forward, float32, against PyTorch's operators (bit-identical)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale", [2.0**-4, 0.1, 0.0371])
def test_forward_per_tensor_matches_torch(device, generator, size, scale):
    qmin, qmax = -128, 127
    s, z = per_tensor_params(scale, qmin, qmax, 3, device)
    x = make_input((size,), s.cpu(), z.cpu(), qmin, qmax, None, generator).to(device)
    y = ops.fake_quantize(x, s, z, qmin, qmax)
    assert_same_values(y, torch_fake_quantize(x, s, z, qmin, qmax), "fake_quantize")
    y_lsq = ops.fake_quantize_lsq(x, s, z, qmin, qmax, None, 0.5)
    assert_same_values(y_lsq, y, "fake_quantize_lsq")


def test_forward_per_tensor_large_matches_torch(device, generator):
    # The one case above a million elements: many parallel tasks, a scalar tail of 3.
    qmin, qmax = 0, 255
    s, z = per_tensor_params(0.0371, qmin, qmax, 128, device)
    x = make_input((1000003,), s.cpu(), z.cpu(), qmin, qmax, None, generator).to(device)
    assert_same_values(ops.fake_quantize(x, s, z, qmin, qmax),
                       torch_fake_quantize(x, s, z, qmin, qmax), "fake_quantize")


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("bits", BITS)
def test_forward_bits_matches_torch(device, generator, bits, signed):
    qmin, qmax = qrange(bits, signed)
    # per-tensor: the zero point at each end and in the middle
    for zp in (qmin, (qmin + qmax) // 2, qmax):
        s, z = per_tensor_params(0.02, qmin, qmax, zp, device)
        x = make_input((517,), s.cpu(), z.cpu(), qmin, qmax, None, generator).to(device)
        assert_same_values(ops.fake_quantize(x, s, z, qmin, qmax),
                           torch_fake_quantize(x, s, z, qmin, qmax), f"per-tensor z={zp}")
    # per-channel
    s, z = per_channel_params(5, qmin, qmax, generator, device)
    x = make_input((5, 103), s.cpu(), z.cpu(), qmin, qmax, 0, generator).to(device)
    assert_same_values(ops.fake_quantize(x, s, z, qmin, qmax, 0),
                       torch_fake_quantize(x, s, z, qmin, qmax, 0), "per-channel")


PER_CHANNEL_CASES = [
    ((7,), 0), ((7,), -1),
    ((5, 33), 0), ((5, 33), 1), ((5, 33), -1), ((5, 33), -2),
    ((33, 5), 1),  # few channels, innermost
    ((3, 17, 4), 0), ((3, 17, 4), 1), ((3, 17, 4), 2), ((3, 17, 4), -1), ((3, 17, 4), -3),
    ((2, 3, 5, 7), 0), ((2, 3, 5, 7), 1), ((2, 3, 5, 7), 2), ((2, 3, 5, 7), 3),
    ((2, 3, 5, 7), -1), ((2, 3, 5, 7), -2), ((2, 3, 5, 7), -3), ((2, 3, 5, 7), -4),
    ((2, 19, 3, 3), 1),  # more channels than a vector
    ((2, 3, 2, 3, 5), 1), ((2, 3, 2, 3, 5), 4),
    ((1, 1), 0), ((4, 1), 1), ((1, 40), 1),  # one channel; one element per channel
    ((3, 40000), 0), ((40000, 3), 1),  # several parallel tasks
]


def _case_id(case):
    shape, axis = case
    return "x".join(map(str, shape)) + f"-axis{axis}"


@pytest.mark.parametrize("case", PER_CHANNEL_CASES, ids=_case_id)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_forward_per_channel_matches_torch(device, generator, case, signed):
    shape, axis = case
    qmin, qmax = qrange(8, signed)
    s, z = per_channel_params(shape[axis], qmin, qmax, generator, device)
    x = make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator).to(device)
    expected = torch_fake_quantize(x, s, z, qmin, qmax, axis)
    assert_same_values(ops.fake_quantize(x, s, z, qmin, qmax, axis), expected, "fake_quantize")
    assert_same_values(ops.fake_quantize_lsq(x, s, z, qmin, qmax, axis, 0.1), expected,
                       "fake_quantize_lsq")


LAYOUT_CASES = [
    # (shape, axis, layout)
    ((4, 6, 5, 3), None, "channels_last"),
    ((4, 6, 5, 3), 1, "channels_last"),
    ((4, 6, 5, 3), 0, "channels_last"),
    ((4, 6, 5, 3), 3, "channels_last"),
    ((4, 6, 5, 3), -3, "channels_last"),
    ((2, 17, 3, 5, 7), 1, "channels_last"),  # channels_last_3d
    ((2, 17, 3, 5, 7), None, "channels_last"),
    ((2, 1, 5, 3), 1, "channels_last"),  # one channel: channels_last and contiguous at once
    ((3, 4, 1, 1), 1, "channels_last"),
    ((33, 17), None, "transposed"),
    ((33, 17), 0, "transposed"),
    ((33, 17), 1, "transposed"),
    ((3, 33, 17), -1, "transposed"),
    ((33, 17), None, "sliced"),
    ((33, 17), 0, "sliced"),
    ((33, 17), -1, "sliced"),
    ((3, 5, 9), 1, "sliced"),
]


def _layout_id(case):
    shape, axis, layout = case
    return f"{layout}-" + "x".join(map(str, shape)) + f"-axis{axis}"


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=_layout_id)
def test_forward_layouts_match_torch_and_keep_strides(device, generator, case):
    shape, axis, layout = case
    qmin, qmax = 0, 255
    if axis is None:
        s, z = per_tensor_params(0.0371, qmin, qmax, 100, device)
    else:
        s, z = per_channel_params(shape[axis], qmin, qmax, generator, device)
    x = with_layout(make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator).to(device),
                    layout)
    expected = torch_fake_quantize(x.contiguous(), s, z, qmin, qmax, axis)
    for name, y in [("fake_quantize", ops.fake_quantize(x, s, z, qmin, qmax, axis)),
                    ("fake_quantize_lsq", ops.fake_quantize_lsq(x, s, z, qmin, qmax, axis))]:
        assert_same_values(y, expected, name)
        # torch.empty_like semantics: dense inputs keep their strides (channels_last stays
        # channels_last), others come back contiguous.
        assert y.stride() == torch.empty_like(x).stride(), (name, y.stride(), x.stride())
        if layout != "sliced":
            assert y.stride() == x.stride(), (name, y.stride(), x.stride())
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert ops.fake_quantize(x, s, z, qmin, qmax, axis).is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("shape,axis", [((0,), None), ((0, 3), None), ((3, 0, 4), None),
                                        ((0, 3), 1), ((3, 0, 4), 0), ((3, 0, 4), -1),
                                        ((0, 3), 0), ((0, 3, 4, 5), 1)])
def test_forward_empty(device, shape, axis):
    qmin, qmax = -128, 127
    channels = 1 if axis is None else shape[axis]
    s = torch.full((channels,), 0.1, device=device)
    z = torch.zeros(channels, dtype=torch.int32, device=device)
    x = torch.empty(shape, device=device)
    if len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    for op in (ops.fake_quantize, ops.fake_quantize_lsq):
        y = op(x, s, z, qmin, qmax, axis)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert y.stride() == torch.empty_like(x).stride()
    dx = ops.fake_quantize_backward(torch.empty_like(x), x, s, z, qmin, qmax, axis)
    assert dx.shape == x.shape
    dx, ds, dz = ops.fake_quantize_lsq_backward(torch.empty_like(x), x, s, z.float(), qmin,
                                                qmax, axis, 1.0)
    assert dx.shape == x.shape
    assert torch.equal(ds.cpu(), torch.zeros(channels))  # an empty sum is 0
    assert torch.equal(dz.cpu(), torch.zeros(channels))


def test_forward_rounds_exact_ties_half_to_even(device):
    # With s = 1/8 every (k + 1/2) * s and 1/s are exact, so x * (1/s) is exactly k + 1/2 and the
    # result is decided by the tie rule alone. Python's round() rounds half to even.
    qmin, qmax = -128, 127
    k = torch.arange(-20, 20, dtype=torch.float64)
    x = ((k + 0.5) / 8).float().to(device)
    s, z = per_tensor_params(0.125, qmin, qmax, 0, device)
    expected = torch.tensor([round(float(v) + 0.5) / 8 for v in k], dtype=torch.float32)
    assert_same_values(ops.fake_quantize(x, s, z, qmin, qmax), expected, "ties")
    # and with a non-zero zero point (ties are broken before adding z)
    s, z = per_tensor_params(0.125, qmin, qmax, 5, device)
    assert_same_values(ops.fake_quantize(x, s, z, qmin, qmax), expected, "ties, z=5")


def test_forward_inverse_scale_is_float32(device):
    # The contract multiplies by 1/s (formed in float32) rather than dividing by s, as PyTorch
    # does. Next to ties the two round differently: pick such inputs (16-bit range, s = 0.0371,
    # the float32 neighbours of (k + 1/2) * s) and check that the operator follows x * (1/s).
    qmin, qmax = -32768, 32767
    s32 = torch.tensor(0.0371, dtype=torch.float32)
    ties = (torch.arange(qmin, qmax, dtype=torch.float32) + 0.5) * s32
    up = torch.nextafter(ties, torch.full_like(ties, float("inf")))
    down = torch.nextafter(ties, torch.full_like(ties, float("-inf")))
    candidates = torch.cat([ties, up, down])
    by_reciprocal = torch.round(candidates * (torch.tensor(1.0) / s32))
    by_division = torch.round(candidates / s32)
    differ = by_reciprocal != by_division
    assert int(differ.sum()) >= 100  # the test means something
    x = candidates[differ]
    s, z = per_tensor_params(0.0371, qmin, qmax, 0, device)
    y = ops.fake_quantize(x.to(device), s, z, qmin, qmax)
    assert_same_values(y, by_reciprocal[differ].clamp(qmin, qmax) * s32, "x * (1/s)")
    assert_same_values(y, torch_fake_quantize(x, s.cpu(), z.cpu(), qmin, qmax), "torch")


# ---------------------------------------------------------------------------------------------
# NaN, inf, far out of range (DESIGN.md: NaN -> NaN, +inf -> qmax end, -inf -> qmin end)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("size", [1, 7, 17, 33, 100])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_nan_and_inf(device, generator, dtype, size, axis):
    qmin, qmax = -128, 127
    shape = (3, size)
    if axis is None:
        s = torch.tensor([0.05], device=device)
        z = torch.tensor([-7], dtype=torch.int32, device=device)
    else:
        s, z = per_channel_params(shape[axis], qmin, qmax, generator, device)
    x = make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator, dtype)
    special = torch.randint(0, 4, shape, generator=generator)  # 0: keep, 1: nan, 2: +inf, 3: -inf
    x = torch.where(special == 1, float("nan"), x)
    x = torch.where(special == 2, float("inf"), x)
    x = torch.where(special == 3, float("-inf"), x).to(device)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    zv = channel_view(z.cpu().to(ct), 2, axis).expand(shape)
    sv = channel_view(s.cpu().to(ct), 2, axis).expand(shape)

    for op in (ops.fake_quantize, ops.fake_quantize_lsq):
        y = op(x, s, z, qmin, qmax, axis).cpu()
        assert y.isnan().equal(special == 1)
        top = ((qmax - zv) * sv).to(dtype)
        bottom = ((qmin - zv) * sv).to(dtype)
        assert torch.equal(y[special == 2], top[special == 2])
        assert torch.equal(y[special == 3], bottom[special == 3])
        assert_same_values(y, reference_forward(x, s, z, qmin, qmax, axis)[0], "reference")

    dy = torch.randn(shape, generator=generator).to(dtype).to(device)
    dx = ops.fake_quantize_backward(dy, x, s, z, qmin, qmax, axis).cpu()
    assert torch.equal(dx[special != 0], torch.zeros_like(dx[special != 0]))
    assert_same_values(dx, torch.where(reference_mask(x, s, z, qmin, qmax, axis), dy.cpu(), 0),
                       "fake_quantize_backward")

    zf = z.float()
    dx, ds, dz = ops.fake_quantize_lsq_backward(dy, x, s, zf, qmin, qmax, axis, 1.0)
    assert torch.equal(dx.cpu()[special != 0], torch.zeros_like(dx.cpu()[special != 0]))
    rdx, rds, rdz, abs_ds, abs_dz, n = reference_lsq_backward(dy, x, s, zf, qmin, qmax, axis)
    assert_same_values(dx, rdx, "lsq dx")
    assert_sum_close(ds, rds, abs_ds, n, dtype, "lsq dscale")
    assert_sum_close(dz, rdz, abs_dz, n, dtype, "lsq dzero_point")


@pytest.mark.parametrize("axis", [None, 1])
def test_nan_gives_zero_scale_and_zero_point_gradients(device, axis):
    # All-NaN input: every gradient is exactly zero (NaN must not leak into the sums).
    x = torch.full((2, 37), float("nan"), device=device)
    channels = 1 if axis is None else 37
    s = torch.full((channels,), 0.1, device=device)
    z = torch.full((channels,), 3.0, device=device)
    dy = torch.ones_like(x)
    assert ops.fake_quantize_lsq(x, s, z, 0, 255, axis).isnan().all()
    dx, ds, dz = ops.fake_quantize_lsq_backward(dy, x, s, z, 0, 255, axis, 1.0)
    assert torch.equal(dx.cpu(), torch.zeros(2, 37))
    assert torch.equal(ds.cpu(), torch.zeros(channels))
    assert torch.equal(dz.cpu(), torch.zeros(channels))


def test_inf_gradients(device):
    # +inf: d/ds = dy * (qmax - z), d/dz = -dy * s; -inf: d/ds = dy * (qmin - z); dx = 0.
    qmin, qmax = 0, 255
    x = torch.tensor([float("inf"), float("-inf")] * 9, device=device)
    s = torch.tensor([0.5], device=device)
    z = torch.tensor([10.0], device=device)
    dy = torch.full_like(x, 2.0)
    y = ops.fake_quantize_lsq(x, s, z, qmin, qmax)
    assert torch.equal(y.cpu(), torch.tensor([(255 - 10) * 0.5, (0 - 10) * 0.5] * 9))
    dx, ds, dz = ops.fake_quantize_lsq_backward(dy, x, s, z, qmin, qmax, None, 1.0)
    assert torch.equal(dx.cpu(), torch.zeros(18))
    assert ds.item() == 9 * 2.0 * (255 - 10) + 9 * 2.0 * (0 - 10)
    assert dz.item() == 18 * -2.0 * 0.5


@pytest.mark.parametrize("axis", [None, 0, -1])
def test_far_out_of_range_saturates(device, axis):
    # Beyond int64 after the division (PyTorch's operators cast to int64 there, so no oracle),
    # up to the largest float32.
    qmin, qmax = -8, 7
    big = [1e20, -1e20, 3e38, -3e38, 1e30, -1e30, 65536.0, -65536.0]
    x = torch.tensor([big] * 3, device=device)
    channels = 1 if axis is None else x.shape[axis]
    s = torch.full((channels,), 1e-3, device=device)
    z = torch.full((channels,), 2, dtype=torch.int32, device=device)
    top, bottom = (qmax - 2) * torch.tensor(1e-3), (qmin - 2) * torch.tensor(1e-3)
    expected = torch.where(torch.tensor([big] * 3) > 0, top, bottom)
    assert_same_values(ops.fake_quantize(x, s, z, qmin, qmax, axis), expected, "saturation")
    dx = ops.fake_quantize_backward(torch.ones_like(x), x, s, z, qmin, qmax, axis)
    assert torch.equal(dx.cpu(), torch.zeros_like(expected))


# ---------------------------------------------------------------------------------------------
# Other dtypes, against the reference (computes in float32, float64 for double)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.float32])
@pytest.mark.parametrize("size", [1, 7, 15, 17, 33, 1000])
@pytest.mark.parametrize("axis", [None, 0, -1])
def test_forward_dtypes_match_reference(device, generator, dtype, size, axis):
    qmin, qmax = -128, 127
    shape = (3, size)
    if axis is None:
        s, z = per_tensor_params(0.0371, qmin, qmax, 11, device)
    else:
        s, z = per_channel_params(shape[axis], qmin, qmax, generator, device)
    x = make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator, dtype).to(device)
    expected = reference_forward(x, s, z, qmin, qmax, axis)[0]
    for op in (ops.fake_quantize, ops.fake_quantize_lsq):
        y = op(x, s, z, qmin, qmax, axis)
        assert y.dtype == dtype
        assert_same_values(y, expected, f"{op} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
@pytest.mark.parametrize("axis", [None, 1, 3])
def test_forward_dtypes_layouts_match_reference(device, generator, dtype, layout, axis):
    qmin, qmax = 0, 15
    shape = (2, 9, 5, 7)
    if axis is None:
        s, z = per_tensor_params(0.25, qmin, qmax, 4, device)
    else:
        s, z = per_channel_params(shape[axis], qmin, qmax, generator, device)
    x = with_layout(make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator, dtype)
                    .to(device), layout)
    y = ops.fake_quantize(x, s, z, qmin, qmax, axis)
    assert_same_values(y, reference_forward(x, s, z, qmin, qmax, axis)[0], "forward")
    assert y.stride() == torch.empty_like(x).stride()


def test_float64_scale_and_float32_input(device, generator):
    # float32 input computes in float32: a float64 scale is rounded to float32 first.
    qmin, qmax = -128, 127
    s64 = torch.tensor([0.1], dtype=torch.float64, device=device)
    z = torch.tensor([0], dtype=torch.int32, device=device)
    x = make_input((1000,), s64.cpu().float(), z.cpu(), qmin, qmax, None, generator).to(device)
    assert_same_values(ops.fake_quantize(x, s64, z, qmin, qmax),
                       torch_fake_quantize(x, s64.float(), z, qmin, qmax), "float64 scale")
    # the scale gradient comes back in the scale's dtype
    dy = torch.randn(x.shape, generator=generator).to(device)
    dx, ds, dz = ops.fake_quantize_lsq_backward(dy, x, s64, z.double(), qmin, qmax, None, 1.0)
    assert ds.dtype == torch.float64 and dz.dtype == torch.float64
    rdx, rds, rdz, mag_ds, mag_dz, n = reference_lsq_backward(dy, x, s64, z, qmin, qmax)
    assert_same_values(dx, rdx, "dx")
    assert_sum_close(ds, rds, mag_ds, n, torch.float32, "dscale")
    assert_sum_close(dz, rdz, mag_dz, n, torch.float32, "dzero_point")


@pytest.mark.parametrize("zp_dtype", [torch.int32, torch.int64, torch.int16, torch.uint8,
                                      torch.float32, torch.float64])
@pytest.mark.parametrize("axis", [None, 0])
def test_zero_point_dtypes(device, generator, zp_dtype, axis):
    qmin, qmax = 0, 255
    if axis is None:
        s, z = per_tensor_params(0.02, qmin, qmax, 200, device, zp_dtype)
    else:
        s, z = per_channel_params(6, qmin, qmax, generator, device, zp_dtype)
    x = make_input((6, 50), s.cpu(), z.cpu(), qmin, qmax, axis, generator).to(device)
    assert_same_values(ops.fake_quantize(x, s, z, qmin, qmax, axis),
                       torch_fake_quantize(x, s, z, qmin, qmax, axis), str(zp_dtype))


@pytest.mark.parametrize("axis", [None, 0])
def test_float_zero_point_rounds_half_even_and_clamps(device, generator, axis):
    # Not integers, so no PyTorch oracle: the reference's clamp(round_half_even(z)).
    qmin, qmax = -8, 7
    zs = [2.5, 3.5, -2.5, 0.49, -0.51, 100.0, -100.0, 7.5]
    for zv in zs:
        channels = 1 if axis is None else 4
        s = torch.full((channels,), 0.25, device=device)
        z = torch.full((channels,), zv, device=device)
        x = make_input((4, 33), s.cpu(), torch.zeros(channels), qmin, qmax, axis,
                       generator).to(device)
        expected = reference_forward(x, s, z, qmin, qmax, axis)[0]
        zeff = min(max(round(zv), qmin), qmax)  # Python rounds half to even
        assert_same_values(expected, reference_forward(x, s, torch.full_like(z, zeff), qmin,
                                                       qmax, axis)[0], "reference")
        assert_same_values(ops.fake_quantize(x, s, z, qmin, qmax, axis), expected, f"z={zv}")
        assert_same_values(ops.fake_quantize_lsq(x, s, z, qmin, qmax, axis), expected,
                           f"lsq z={zv}")
        dy = torch.randn(x.shape, generator=generator).to(device)
        dx, ds, dz = ops.fake_quantize_lsq_backward(dy, x, s, z, qmin, qmax, axis, 1.0)
        rdx, rds, rdz, abs_ds, abs_dz, n = reference_lsq_backward(dy, x, s, z, qmin, qmax, axis)
        assert_same_values(dx, rdx, f"dx z={zv}")
        assert_sum_close(ds, rds, abs_ds, n, torch.float32, f"dscale z={zv}")
        assert_sum_close(dz, rdz, abs_dz, n, torch.float32, f"dzero_point z={zv}")


def test_reference_matches_torch(generator):
    # The reference itself is checked against the oracle, so that agreeing with it means
    # something for the dtypes PyTorch's operators lack.
    qmin, qmax = -128, 127
    s, z = per_channel_params(9, qmin, qmax, generator, "cpu")
    x = make_input((9, 1001), s, z, qmin, qmax, 0, generator)
    assert_same_values(reference_forward(x, s, z, qmin, qmax, 0)[0],
                       torch_fake_quantize(x, s, z, qmin, qmax, 0), "reference")
    xr = x.clone().requires_grad_()
    torch_fake_quantize(xr, s, z, qmin, qmax, 0).backward(torch.ones_like(x))
    assert torch.equal(xr.grad, reference_mask(x, s, z, qmin, qmax, 0).float())


# ---------------------------------------------------------------------------------------------
# Input gradient (straight-through estimator) against PyTorch's backward


GRAD_CASES = [
    ((1000,), None, "contiguous"),
    ((17,), None, "contiguous"),
    ((1000003,), None, "contiguous"),
    ((5, 33), 0, "contiguous"),
    ((5, 33), -1, "contiguous"),
    ((3, 17, 4), 1, "contiguous"),
    ((4, 6, 5, 3), 1, "channels_last"),
    ((4, 6, 5, 3), None, "channels_last"),
    ((4, 6, 5, 3), -1, "channels_last"),
    ((33, 17), 0, "transposed"),
    ((33, 17), None, "sliced"),
    ((33, 17), 1, "sliced"),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=_layout_id)
@pytest.mark.parametrize("grad_layout", ["contiguous", "other"])
def test_input_gradient_matches_torch(device, generator, case, grad_layout):
    shape, axis, layout = case
    qmin, qmax = -128, 127
    if axis is None:
        s, z = per_tensor_params(0.0371, qmin, qmax, -3, device)
    else:
        s, z = per_channel_params(shape[axis], qmin, qmax, generator, device)
    x = with_layout(make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator).to(device),
                    layout)
    dy = torch.randn(shape, generator=generator).to(device)
    if grad_layout == "other":  # the incoming gradient laid out differently from the input
        dy = with_layout(dy, "channels_last" if len(shape) == 4 and layout != "channels_last"
                         else "sliced")

    x_ref = x.detach().clone().requires_grad_()
    torch_fake_quantize(x_ref, s, z, qmin, qmax, axis).backward(dy)
    expected = x_ref.grad

    for name, op, args in [("fake_quantize", ops.fake_quantize, ()),
                           ("fake_quantize_lsq", ops.fake_quantize_lsq, (0.3,))]:
        xg = x.detach().clone().requires_grad_()
        if layout == "sliced":
            xg = with_layout(x.detach(), "sliced").requires_grad_()
        op(xg, s, z, qmin, qmax, axis, *args).backward(dy)
        assert_same_values(xg.grad, expected, name)

    dx = ops.fake_quantize_backward(dy, x, s, z, qmin, qmax, axis)
    assert_same_values(dx, expected, "fake_quantize_backward")
    assert dx.stride() == torch.empty_like(x).stride()
    dx, _, _ = ops.fake_quantize_lsq_backward(dy, x, s, z.float(), qmin, qmax, axis, 0.3)
    assert_same_values(dx, expected, "fake_quantize_lsq_backward")
    assert dx.stride() == torch.empty_like(x).stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("axis", [None, 1])
def test_input_gradient_dtypes_match_reference(device, generator, dtype, axis):
    qmin, qmax = 0, 255
    shape = (3, 5, 33)
    if axis is None:
        s, z = per_tensor_params(0.02, qmin, qmax, 128, device)
    else:
        s, z = per_channel_params(5, qmin, qmax, generator, device)
    x = make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator, dtype).to(device)
    dy = torch.randn(shape, generator=generator).to(dtype).to(device)
    expected = torch.where(reference_mask(x, s, z, qmin, qmax, axis), dy.cpu(), 0)
    xg = x.clone().requires_grad_()
    ops.fake_quantize(xg, s, z, qmin, qmax, axis).backward(dy)
    assert_same_values(xg.grad, expected, "autograd")
    assert_same_values(ops.fake_quantize_backward(dy, x, s, z, qmin, qmax, axis), expected,
                       "fake_quantize_backward")


def test_fake_quantize_gives_no_scale_gradient(device):
    x = torch.randn(10, device=device, requires_grad=True)
    s = torch.tensor([0.1], device=device, requires_grad=True)
    z = torch.tensor([0.0], device=device, requires_grad=True)
    ops.fake_quantize(x, s, z, -128, 127).sum().backward()
    assert x.grad is not None
    assert s.grad is None and z.grad is None


# ---------------------------------------------------------------------------------------------
# LSQ scale and zero-point gradients: PyTorch's learnable operators and the DESIGN.md table


LSQ_CASES = [
    ((1000,), None, "contiguous"),
    ((7,), None, "contiguous"),
    ((33,), None, "contiguous"),
    ((4, 6, 5, 3), None, "channels_last"),
    ((5, 333), 0, "contiguous"),
    ((7, 5, 33), 1, "contiguous"),
    ((4, 19, 6, 5), 1, "contiguous"),
    ((33, 17), -1, "contiguous"),
    ((100, 19), -1, "contiguous"),
    ((4, 19, 6, 5), 1, "channels_last"),
    ((4, 6, 5, 19), -1, "channels_last"),
    ((4, 19, 6, 5), 0, "channels_last"),
    ((2, 11, 3, 4, 5), 1, "channels_last"),
    ((33, 17), 0, "transposed"),
    ((33, 17), 1, "sliced"),
    ((20000, 3), -1, "contiguous"),  # channels innermost: partial sums flushed every 1365 rows
    ((4, 5000), -1, "contiguous"),  # more channels than one flush block
]


@pytest.mark.parametrize("case", LSQ_CASES, ids=_layout_id)
@pytest.mark.parametrize("grad_factor", [0.1, 1.0, 10.0])
def test_lsq_gradients_match_torch_and_reference(device, generator, case, grad_factor):
    shape, axis, layout = case
    qmin, qmax = -128, 127
    if axis is None:
        s, z = per_tensor_params(0.0371, qmin, qmax, 5, device, torch.float32)
    else:
        s, z = per_channel_params(shape[axis], qmin, qmax, generator, device, torch.float32)
    x = make_input(shape, s.cpu(), z.cpu(), qmin, qmax, axis, generator)
    x = with_layout(move_off_learnable_ties(x, s, z, qmin, qmax, axis).to(device), layout)
    dy = torch.randn(shape, generator=generator).to(device)

    def run(fn):
        xg = x.detach().clone().requires_grad_() if layout != "sliced" else \
            with_layout(x.detach(), "sliced").requires_grad_()
        sg = s.detach().clone().requires_grad_()
        zg = z.detach().clone().requires_grad_()
        y = fn(xg, sg, zg, qmin, qmax, axis, grad_factor)
        y.backward(dy)
        return y, xg.grad, sg.grad, zg.grad

    y, dx, ds, dz = run(ops.fake_quantize_lsq)
    ty, tdx, tds, tdz = run(torch_fake_quantize_learnable)
    rdx, rds, rdz, abs_ds, abs_dz, n = reference_lsq_backward(dy, x, s, z, qmin, qmax, axis,
                                                              grad_factor)
    assert_same_values(y, ty, "forward")
    assert_same_values(dx, tdx, "dx vs torch")
    assert_same_values(dx, rdx, "dx vs reference")
    assert ds.shape == s.shape and ds.dtype == s.dtype
    assert dz.shape == z.shape and dz.dtype == z.dtype
    assert_sum_close(ds, rds, abs_ds, n, torch.float32, "dscale vs reference")
    assert_sum_close(dz, rdz, abs_dz, n, torch.float32, "dzero_point vs reference")
    assert_sum_close(ds, tds, 2 * abs_ds, n, torch.float32, "dscale vs torch")
    assert_sum_close(dz, tdz, 2 * abs_dz, n, torch.float32, "dzero_point vs torch")

    # the backward operator directly gives the same
    bdx, bds, bdz = ops.fake_quantize_lsq_backward(dy, x, s, z, qmin, qmax, axis, grad_factor)
    assert_same_values(bdx, dx, "lsq_backward dx")
    assert_same_values(bds, ds, "lsq_backward dscale")
    assert_same_values(bdz, dz, "lsq_backward dzero_point")


def test_lsq_gradients_large(device, generator):
    # The one LSQ case above a million elements: the float32 partial sums must keep their
    # precision (see sum_tolerance).
    qmin, qmax = 0, 255
    s, z = per_tensor_params(0.0371, qmin, qmax, 100, device, torch.float32)
    x = make_input((1000003,), s.cpu(), z.cpu(), qmin, qmax, None, generator).to(device)
    dy = torch.rand(x.shape, generator=generator).to(device)  # one sign: errors add up
    dx, ds, dz = ops.fake_quantize_lsq_backward(dy, x, s, z, qmin, qmax, None, 1.0)
    rdx, rds, rdz, abs_ds, abs_dz, n = reference_lsq_backward(dy, x, s, z, qmin, qmax)
    assert_same_values(dx, rdx, "dx")
    assert_sum_close(ds, rds, abs_ds, n, torch.float32, "dscale")
    assert_sum_close(dz, rdz, abs_dz, n, torch.float32, "dzero_point")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", [((3, 5, 33), None, "contiguous"),
                                  ((3, 5, 33), 1, "contiguous"),
                                  ((3, 5, 33), -1, "contiguous"),
                                  ((2, 9, 5, 7), 1, "channels_last")], ids=_layout_id)
def test_lsq_gradients_dtypes_match_reference(device, generator, dtype, case):
    shape, axis, layout = case
    qmin, qmax = -8, 7
    if axis is None:
        s, z = per_tensor_params(0.125, qmin, qmax, 1, device, torch.float32)
    else:
        s, z = per_channel_params(shape[axis], qmin, qmax, generator, device, torch.float32)
    if dtype == torch.float64:  # float64 all the way (the gradcheck path)
        s, z = s.double(), z.double()
    x = with_layout(make_input(shape, s.cpu().float(), z.cpu(), qmin, qmax, axis, generator,
                               dtype).to(device), layout)
    dy = torch.randn(shape, generator=generator).to(dtype).to(device)
    xg, sg, zg = x.clone().requires_grad_(), s.clone().requires_grad_(), z.clone().requires_grad_()
    y = ops.fake_quantize_lsq(xg, sg, zg, qmin, qmax, axis, 0.5)
    assert y.dtype == dtype
    y.backward(dy)
    rdx, rds, rdz, abs_ds, abs_dz, n = reference_lsq_backward(dy, x, s, z, qmin, qmax, axis, 0.5)
    assert_same_values(y, reference_forward(x, s, z, qmin, qmax, axis)[0], "forward")
    assert_same_values(xg.grad, rdx, "dx")
    assert sg.grad.dtype == s.dtype and zg.grad.dtype == z.dtype
    assert_sum_close(sg.grad, rds, abs_ds, n, dtype, "dscale")
    assert_sum_close(zg.grad, rdz, abs_dz, n, dtype, "dzero_point")


def test_lsq_integer_zero_point(device, generator):
    # An integer zero point cannot learn: autograd gives it no gradient, and the backward
    # operator reports the zero-point gradient in the scale's (float) dtype.
    qmin, qmax = 0, 255
    s, z = per_tensor_params(0.05, qmin, qmax, 20, device, torch.int32)
    x = make_input((100,), s.cpu(), z.cpu(), qmin, qmax, None, generator).to(device)
    xg, sg = x.clone().requires_grad_(), s.clone().requires_grad_()
    ops.fake_quantize_lsq(xg, sg, z, qmin, qmax).sum().backward()
    rdx, rds, rdz, abs_ds, abs_dz, n = reference_lsq_backward(torch.ones_like(x), x, s, z, qmin,
                                                              qmax)
    assert_sum_close(sg.grad, rds, abs_ds, n, torch.float32, "dscale")
    _, _, dz = ops.fake_quantize_lsq_backward(torch.ones_like(x), x, s, z, qmin, qmax, None, 1.0)
    assert dz.dtype == torch.float32 and dz.shape == z.shape
    assert_sum_close(dz, rdz, abs_dz, n, torch.float32, "dzero_point")


def test_lsq_grad_factor_scales_only_scale_and_zero_point(device, generator):
    qmin, qmax = -128, 127
    s, z = per_channel_params(4, qmin, qmax, generator, device, torch.float32)
    x = make_input((4, 300), s.cpu(), z.cpu(), qmin, qmax, 0, generator).to(device)
    dy = torch.randn(x.shape, generator=generator).to(device)
    dx1, ds1, dz1 = ops.fake_quantize_lsq_backward(dy, x, s, z, qmin, qmax, 0, 1.0)
    dx2, ds2, dz2 = ops.fake_quantize_lsq_backward(dy, x, s, z, qmin, qmax, 0, 0.25)
    assert torch.equal(dx1, dx2)
    # 0.25 is a power of two: scaling is exact
    assert torch.equal(ds2, ds1 * 0.25) and torch.equal(dz2, dz1 * 0.25)
    _, ds0, dz0 = ops.fake_quantize_lsq_backward(dy, x, s, z, qmin, qmax, 0, 0.0)
    assert torch.equal(ds0.cpu(), torch.zeros(4)) and torch.equal(dz0.cpu(), torch.zeros(4))


# ---------------------------------------------------------------------------------------------
# Parameter tensors in unusual layouts


def test_strided_and_zero_dim_parameters(device, generator):
    # Scales and zero points that are views (stride 2, storage offset) or 0-dim tensors are read
    # by value, like contiguous ones.
    qmin, qmax = -128, 127
    s, z = per_channel_params(6, qmin, qmax, generator, device)
    x = make_input((6, 40), s.cpu(), z.cpu(), qmin, qmax, 0, generator).to(device)
    s_view = torch.stack([torch.full_like(s, -1.0), s], dim=1)[:, 1]  # stride 2, offset 1
    z_view = torch.stack([torch.full_like(z, 1000), z], dim=1)[:, 1]
    assert s_view.stride() == (2,) and s_view.storage_offset() == 1
    expected = torch_fake_quantize(x, s, z, qmin, qmax, 0)
    assert_same_values(ops.fake_quantize(x, s_view, z_view, qmin, qmax, 0), expected, "views")
    dy = torch.randn(x.shape, generator=generator).to(device)
    got = ops.fake_quantize_lsq_backward(dy, x, s_view, z_view.float(), qmin, qmax, 0, 1.0)
    want = ops.fake_quantize_lsq_backward(dy, x, s, z.float(), qmin, qmax, 0, 1.0)
    for a, b in zip(got, want):
        assert torch.equal(a, b)

    s0, z0 = torch.tensor(0.0371, device=device), torch.tensor(7, dtype=torch.int32, device=device)
    y = ops.fake_quantize(x, s0, z0, qmin, qmax)
    assert_same_values(y, torch_fake_quantize(x, s0, z0, qmin, qmax), "0-dim")
    _, ds, dz = ops.fake_quantize_lsq_backward(dy, x, s0, z0.float(), qmin, qmax, None, 1.0)
    assert ds.shape == () and dz.shape == ()
