"""Bad arguments: every operator raises a RuntimeError whose message names the operator, the
argument and the value (DESIGN.md, STYLE.md rule 4)."""

import re

import pytest
import torch

ops = torch.ops.torchqat

ALL_OPS = ["fake_quantize", "fake_quantize_lsq", "fake_quantize_backward",
           "fake_quantize_lsq_backward"]
LSQ_OPS = ["fake_quantize_lsq", "fake_quantize_lsq_backward"]
BACKWARD_OPS = ["fake_quantize_backward", "fake_quantize_lsq_backward"]

# Value checks of CUDA tensors run on the device (no host sync, DESIGN.md), where a failure is a
# device-side assert that a test cannot catch and that ends the CUDA context.
host_only = pytest.mark.parametrize("device", ["cpu"])


def call(op_name, x, scale, zero_point, quant_min=-128, quant_max=127, axis=None, grad=None,
         grad_factor=1.0):
    if op_name == "fake_quantize":
        return ops.fake_quantize(x, scale, zero_point, quant_min, quant_max, axis)
    if op_name == "fake_quantize_lsq":
        return ops.fake_quantize_lsq(x, scale, zero_point, quant_min, quant_max, axis,
                                     grad_factor)
    g = torch.ones(x.shape, dtype=x.dtype, device=x.device) if grad is None else grad
    if op_name == "fake_quantize_backward":
        return ops.fake_quantize_backward(g, x, scale, zero_point, quant_min, quant_max, axis)
    return ops.fake_quantize_lsq_backward(g, x, scale, zero_point, quant_min, quant_max, axis,
                                          grad_factor)


def message(op_name, text):
    """The message starts with the operator's own name (so "fake_quantize: " does not match
    "fake_quantize_lsq: ...")."""
    return rf"^{re.escape(op_name)}: {text}"


def args(device, channels=None, shape=(4, 5), zp_dtype=torch.float32):
    x = torch.randn(shape, device=device)
    n = 1 if channels is None else channels
    return x, torch.full((n,), 0.1, device=device), torch.zeros(n, dtype=zp_dtype, device=device)


@host_only
@pytest.mark.parametrize("op_name", ALL_OPS)
@pytest.mark.parametrize("value,shown", [(0.0, "0"), (-0.1, "-0.1"), (float("nan"), "nan"),
                                         (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_scale_not_positive_or_not_finite(device, op_name, value, shown):
    x, s, z = args(device)
    s.fill_(value)
    with pytest.raises(RuntimeError, match=message(op_name, f"scale must be positive and finite, "
                                                            f"got {shown}$")):
        call(op_name, x, s, z)
    # per-channel: the bad channel is named
    x, s, z = args(device, channels=5)
    s[3] = value
    with pytest.raises(RuntimeError, match=message(op_name, f"scale .*got {shown} at index 3")):
        call(op_name, x, s, z, axis=1)


@host_only
@pytest.mark.parametrize("op_name", ALL_OPS)
@pytest.mark.parametrize("scale", [1e-50, 1e-40], ids=["float64-underflows", "float32-subnormal"])
def test_scale_too_small_for_float32(device, op_name, scale):
    # float32 inputs compute with a float32 scale and 1/s formed in float32. A float64 scale of
    # 1e-50 is positive and finite but becomes 0 in float32; a subnormal float32 scale of 1e-40
    # has no finite float32 reciprocal. Either must be refused like scale <= 0, or give finite
    # results: a finite input (here 0) must not turn into NaN (NaN only for NaN inputs).
    # (Accepting such a scale would compute 0 * (1/s) = 0 * inf = NaN at x = 0.)
    x = torch.tensor([0.0, 1.0, -1.0, 1e-41] * 5, device=device)
    s = torch.tensor([scale], dtype=torch.float64 if scale < 1e-45 else torch.float32,
                     device=device)
    z = torch.zeros(1, device=device)
    try:
        out = call(op_name, x, s, z)
    except RuntimeError as err:
        assert re.match(message(op_name, "scale"), str(err)), str(err)
        return
    outs = out if isinstance(out, tuple) else (out,)
    for t in outs:
        assert not t.isnan().any(), f"{op_name}(x={x[:4].tolist()}, scale={scale}) -> {t}"
    # x = 0 is in range whatever the scale (z lies in the range): y = 0, dx = dy
    if op_name in BACKWARD_OPS:
        assert outs[0][0].item() == 1.0, f"{op_name}: dx at x=0 is {outs[0][0].item()}, not dy"
    else:
        assert out[0].item() == 0.0


@host_only
@pytest.mark.parametrize("op_name", ALL_OPS)
def test_scale_error_through_autograd(device, op_name):
    # The forward operators are reached through their autograd kernels when inputs need grad.
    x, s, z = args(device)
    x.requires_grad_()
    s = torch.tensor([-1.0], device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match=message(op_name, "scale must be positive.*got -1")):
        call(op_name, x, s, z)


@pytest.mark.parametrize("op_name", ALL_OPS)
@pytest.mark.parametrize("qmin,qmax", [(5, 5), (10, -10)])
def test_quant_min_not_below_quant_max(device, op_name, qmin, qmax):
    x, s, z = args(device)
    with pytest.raises(RuntimeError, match=message(
            op_name, f"quant_min must be < quant_max, got quant_min={qmin}, quant_max={qmax}")):
        call(op_name, x, s, z, qmin, qmax)


@pytest.mark.parametrize("op_name", ALL_OPS)
@pytest.mark.parametrize("qmin,qmax", [(0, 65536), (-65537, 0), (-40000, 40000)])
def test_range_wider_than_16_bits(device, op_name, qmin, qmax):
    x, s, z = args(device)
    with pytest.raises(RuntimeError, match=message(
            op_name,
            rf"\[quant_min, quant_max\] must span at most 16 bits.*got \[{qmin}, {qmax}\]")):
        call(op_name, x, s, z, qmin, qmax)


@pytest.mark.parametrize("op_name", ALL_OPS)
def test_scale_shape_per_tensor(device, op_name):
    x, _, z = args(device)
    for bad in (torch.full((2,), 0.1), torch.full((1, 1), 0.1), torch.full((0,), 0.1)):
        with pytest.raises(RuntimeError, match=message(
                op_name, r"scale must hold one element for per-tensor quantization \(axis=None\), "
                         rf"got shape \[{', '.join(map(str, bad.shape))}\]")):
            call(op_name, x, bad.to(device), z)
    s = torch.full((1,), 0.1, device=device)
    with pytest.raises(RuntimeError, match=message(op_name, "zero_point must hold one element.*"
                                                            r"got shape \[3\]")):
        call(op_name, x, s, torch.zeros(3, device=device))


@pytest.mark.parametrize("op_name", ALL_OPS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_scale_shape_per_channel(device, op_name, axis):
    x = torch.randn(4, 5, device=device)
    channels = x.shape[axis]
    good_s = torch.full((channels,), 0.1, device=device)
    good_z = torch.zeros(channels, device=device)
    for bad in (torch.full((channels + 1,), 0.1), torch.full((1,), 0.1),
                torch.full((1, channels), 0.1)):
        shown = ", ".join(map(str, bad.shape))
        with pytest.raises(RuntimeError, match=message(
                op_name, rf"scale must have shape \[{channels}\] \(input.size\({axis % 2}\)\) "
                         rf"for per-channel quantization, got shape \[{shown}\]")):
            call(op_name, x, bad.to(device), good_z, axis=axis)
    with pytest.raises(RuntimeError, match=message(op_name, rf"zero_point must have shape "
                                                            rf"\[{channels}\]")):
        call(op_name, x, good_s, torch.zeros(channels + 2, device=device), axis=axis)


@pytest.mark.parametrize("op_name", ALL_OPS)
@pytest.mark.parametrize("axis", [2, 7, -3, -9])
def test_bad_axis(device, op_name, axis):
    x, s, z = args(device, channels=5)
    with pytest.raises(RuntimeError, match=message(
            op_name, rf"axis must be in \[-2, 1\] for a 2-dimensional input, got axis={axis}")):
        call(op_name, x, s, z, axis=axis)


@pytest.mark.parametrize("op_name", ALL_OPS)
def test_axis_of_scalar_input(device, op_name):
    x = torch.tensor(0.3, device=device)
    s = torch.full((1,), 0.1, device=device)
    z = torch.zeros(1, device=device)
    with pytest.raises(RuntimeError, match=message(op_name, "axis must be in .*got axis=0")):
        call(op_name, x, s, z, axis=0)


@host_only
@pytest.mark.parametrize("op_name", ALL_OPS)
@pytest.mark.parametrize("zp", [128, -129, 1000])
def test_integer_zero_point_out_of_range(device, op_name, zp):
    x, s, _ = args(device)
    z = torch.tensor([zp], dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match=message(
            op_name, rf"zero_point must lie in \[quant_min, quant_max\] = \[-128, 127\], "
                     rf"got {zp}$")):
        call(op_name, x, s, z)
    x, s, _ = args(device, channels=5)
    z = torch.zeros(5, dtype=torch.int64, device=device)
    z[2] = zp
    with pytest.raises(RuntimeError, match=message(op_name, rf"zero_point .*got {zp} at index 2")):
        call(op_name, x, s, z, axis=1)


@host_only
@pytest.mark.parametrize("op_name", ALL_OPS)
def test_float_zero_point_not_finite(device, op_name):
    x, s, _ = args(device)
    for value, shown in ((float("nan"), "nan"), (float("inf"), "inf")):
        z = torch.tensor([value], device=device)
        with pytest.raises(RuntimeError, match=message(op_name, f"zero_point must be finite, "
                                                                f"got {shown}")):
            call(op_name, x, s, z)


@pytest.mark.parametrize("op_name", ALL_OPS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool])
def test_integer_input(device, op_name, dtype):
    x = torch.ones(4, 5, dtype=dtype, device=device)
    s = torch.full((1,), 0.1, device=device)
    z = torch.zeros(1, device=device)
    shown = {torch.int32: "Int", torch.int64: "Long", torch.int8: "Char", torch.uint8: "Byte",
             torch.bool: "Bool"}[dtype]
    with pytest.raises(RuntimeError, match=message(
            op_name, f"input must be float32, float64, float16 or bfloat16, got {shown}")):
        call(op_name, x, s, z)


@pytest.mark.parametrize("op_name", ALL_OPS)
def test_scale_and_zero_point_dtypes(device, op_name):
    x = torch.randn(4, 5, device=device)
    with pytest.raises(RuntimeError, match=message(op_name, "scale must be float32 or float64, "
                                                            "got Half")):
        call(op_name, x, torch.full((1,), 0.1, dtype=torch.float16, device=device),
             torch.zeros(1, device=device))
    with pytest.raises(RuntimeError, match=message(op_name, "zero_point must be an integer, "
                                                            "float32 or float64 tensor, got Half")):
        call(op_name, x, torch.full((1,), 0.1, device=device),
             torch.zeros(1, dtype=torch.float16, device=device))


@pytest.mark.parametrize("op_name", BACKWARD_OPS)
@pytest.mark.parametrize("grad_shape", [(5, 4), (4, 5, 1), (20,), (4, 6)])
def test_grad_wrong_shape(device, op_name, grad_shape):
    x, s, z = args(device)
    g = torch.ones(grad_shape, device=device)
    shown = ", ".join(map(str, grad_shape))
    with pytest.raises(RuntimeError, match=message(
            op_name, rf"grad must have input's shape \[4, 5\], got \[{shown}\]")):
        call(op_name, x, s, z, grad=g)


@pytest.mark.parametrize("op_name", BACKWARD_OPS)
def test_grad_wrong_dtype(device, op_name):
    x, s, z = args(device)
    g = torch.ones(4, 5, dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match=message(op_name, "grad must have input's dtype Float, "
                                                            "got Double")):
        call(op_name, x, s, z, grad=g)


@pytest.mark.parametrize("op_name", LSQ_OPS)
@pytest.mark.parametrize("value,shown", [(float("inf"), "inf"), (float("-inf"), "-inf"),
                                         (float("nan"), "nan")])
def test_grad_factor_not_finite(device, op_name, value, shown):
    x, s, z = args(device)
    with pytest.raises(RuntimeError, match=message(op_name, f"grad_factor must be finite, "
                                                            f"got {shown}")):
        call(op_name, x, s, z, grad_factor=value)


def _other_device(device):
    if device == "cuda":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    # The meta device cannot stand in for a second device here: a meta scale sends the call to
    # the Meta (fake) kernel, which returns an empty CPU tensor without checking devices.
    pytest.skip("needs a second real device (CUDA)")


@pytest.mark.parametrize("op_name", ALL_OPS)
@pytest.mark.parametrize("which", ["scale", "zero_point", "grad"])
def test_device_mismatch(device, op_name, which):
    other = _other_device(device)
    if which == "grad" and op_name not in BACKWARD_OPS:
        pytest.skip("forward operators take no grad")
    x, s, z = args(device)
    g = torch.ones_like(x)
    if which == "scale":
        s = s.to(other)
    elif which == "zero_point":
        z = z.to(other)
    else:
        g = g.to(other)
    with pytest.raises(RuntimeError, match=message(op_name, f"{which} must be on input's device")):
        call(op_name, x, s, z, grad=g)
