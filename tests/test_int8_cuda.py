"""The INT8 operators on CUDA against the CPU operators (tests/test_int8_ops.py tests those against
independent references): quantize / dequantize give the same integers and floats, int8_matmul the
same int32 accumulators (operands at the ends of their ranges, K in the thousands, M / N / K not
multiples of 4, both GEMM paths), int8_linear the same floats ("none" / "relu" bit for bit: the
accumulators are exact and the epilogue is the same fma sequence on both; "silu" within a few
ulp, its expf differs), a saved TorchScript module with a PackedLinear runs on CUDA after loading,
device-side checks of the quantization parameters, opcheck, and the INT8 convolution: every CUDA
kernel (1x1 GEMM, depthwise, implicit GEMM with word and byte gathers) gives the CPU's int32
accumulators and, for "none" / "relu", the CPU's floats bit for bit; Int8Conv2d / Int8Conv1d,
a converted model and a loaded TorchScript model run after .to("cuda").

Everything here needs a GPU and a torchqat built with its CUDA kernels; without one the module
is skipped.
"""

import io
import os

import pytest
import torch
import torch.nn.functional as F

import torchqat  # noqa: F401
from isolated import run_isolated
from torchqat import int8

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ops = torch.ops.torchqat
CUDA = "cuda"
GEMMS = ["cublaslt", "dp4a"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randint(lo, hi, shape, dtype, g):
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64).to(dtype)


def special_input(shape, scale, g):
    """Random values plus exact rounding ties, values outside the range, +-inf and NaN."""
    x = torch.randn(shape, generator=g) * 300 * scale
    flat = x.view(-1)
    n = flat.numel()
    ties = (torch.randint(-200, 200, (n,), generator=g).float() + 0.5) * scale
    pick = torch.rand(n, generator=g) < 0.3
    flat[pick] = ties[pick]
    if n > 4:
        flat[0], flat[1], flat[2], flat[3] = float("inf"), float("-inf"), 0.0, float("nan")
    return x


def assert_same_tensor(gpu, cpu):
    """Same dtype, shape, strides and values (NaN inputs quantize to the zero point, so no
    result here holds NaN)."""
    assert gpu.device.type == "cuda"
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
    assert gpu.stride() == cpu.stride(), (gpu.stride(), cpu.stride())
    assert torch.equal(gpu.cpu(), cpu)


# ---------------------------------------------------------------------------------------------
# quantize / dequantize


@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127), (-8, 7), (-32768, 32767), (0, 65535)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("size", [1, 7, 1000, 40001])
def test_quantize_per_tensor_cuda_equals_cpu(qrange, dtype, size):
    qmin, qmax = qrange
    g = gen(size)
    x = special_input((size,), 0.0371, g).to(dtype)
    s = torch.tensor([0.0371])
    for z in [torch.tensor([(qmin + qmax) // 3], dtype=torch.int32), torch.tensor([2.5])]:
        q_cpu = int8.quantize(x, s, z, qmin, qmax)
        q_gpu = int8.quantize(x.to(CUDA), s.to(CUDA), z.to(CUDA), qmin, qmax)
        assert_same_tensor(q_gpu, q_cpu)
        assert_same_tensor(int8.dequantize(q_gpu, s.to(CUDA), z.to(CUDA)),
                           int8.dequantize(q_cpu, s, z))


@pytest.mark.parametrize("axis", [0, 1, -1, 3])
@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127), (-32768, 32767)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "strided"])
def test_quantize_per_channel_cuda_equals_cpu(axis, qrange, layout):
    qmin, qmax = qrange
    g = gen(7)
    if layout == "strided":  # neither contiguous nor dense: both backends copy it first
        full = special_input((3, 34, 5, 18), 0.05, g)
        x, xg = full[:, ::2, :, ::2], full.to(CUDA)[:, ::2, :, ::2]
    else:
        x = special_input((3, 17, 5, 9), 0.05, g)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "transposed":
            x = x.transpose(1, 3).contiguous().transpose(1, 3)
        xg = x.to(CUDA)  # keeps the strides of a dense tensor
    assert xg.stride() == x.stride()
    c = x.size(axis)
    s = torch.rand(c, generator=g, dtype=torch.float64) * 0.05 + 0.01
    z = randint(qmin, qmax, (c,), torch.int64, g)
    q_cpu = int8.quantize(x, s, z, qmin, qmax, axis)
    q_gpu = int8.quantize(xg, s.to(CUDA), z.to(CUDA), qmin, qmax, axis)
    assert_same_tensor(q_gpu, q_cpu)
    y_cpu = int8.dequantize(q_cpu, s, z, axis)
    y_gpu = int8.dequantize(q_gpu, s.to(CUDA), z.to(CUDA), axis)
    assert_same_tensor(y_gpu, y_cpu)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_dequantize_cuda_equals_cpu(dtype):
    g = gen(5)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -70000), min(info.max, 70000)
    q = randint(lo, hi, (4, 33, 7), dtype, g)
    s = torch.rand(33, generator=g) + 0.01
    z = randint(-100, 100, (33,), torch.int64, g)
    assert_same_tensor(int8.dequantize(q.to(CUDA), s.to(CUDA), z.to(CUDA), 1),
                       int8.dequantize(q, s, z, 1))
    s1, z1 = torch.tensor([0.3], dtype=torch.float64), torch.tensor([-3.5])
    assert_same_tensor(int8.dequantize(q.to(CUDA), s1.to(CUDA), z1.to(CUDA)),
                       int8.dequantize(q, s1, z1))


def test_quantize_cuda_empty():
    x = torch.empty(0, 5, device=CUDA)
    s, z = torch.tensor([1.0], device=CUDA), torch.tensor([0], device=CUDA)
    assert int8.quantize(x, s, z, 0, 255).shape == (0, 5)
    assert int8.dequantize(torch.empty(0, 5, dtype=torch.uint8, device=CUDA), s, z).shape == (0, 5)


@pytest.mark.parametrize("call,message", [
    ("int8.quantize(x, torch.tensor([-0.1], device='cuda'), torch.tensor([0], device='cuda'), "
     "0, 255)", "quantize: scale must be positive and finite, got -0.1"),
    ("int8.quantize(x, torch.tensor([0.1], device='cuda'), torch.tensor([300], device='cuda'), "
     "0, 255)", "quantize: zero_point must lie in [quant_min, quant_max] = [0, 255], got 300"),
    ("int8.dequantize(x.to(torch.uint8), torch.tensor([float('inf')], device='cuda'), "
     "torch.tensor([0], device='cuda'))", "dequantize: scale must be positive and finite, got inf"),
    ("int8.int8_linear(x, torch.tensor([0.0], device='cuda'), torch.tensor([0], device='cuda'), "
     "0, 255, p)", "int8_linear: input_scale must be positive and finite, got 0"),
    ("int8.int8_linear(x, torch.tensor([0.1], device='cuda'), torch.tensor([-3], device='cuda'), "
     "0, 255, p)", "int8_linear: input_zero_point must lie in [quant_min, quant_max] = [0, 255], "
     "got -3"),
])
def test_parameter_checks_on_the_device(call, message):
    """Bad values are found on the device (no host synchronisation): the kernel prints the
    operator, the argument and the value, then a device assertion fails."""
    r = run_isolated(f"""
        import torch, torchqat
        from torchqat import int8
        x = torch.randn(4, 8, device='cuda')
        p = int8.pack_linear(torch.ones(3, 8, dtype=torch.int8), torch.ones(3))
        {call}
        torch.cuda.synchronize()
    """)
    assert r.returncode != 0
    assert message in r.stdout + r.stderr, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# int8_matmul: exact int32 accumulators


@pytest.fixture(params=GEMMS)
def gemm(request, monkeypatch):
    """Both GEMM paths: cuBLASLt and our dp4a kernel (TORCHQAT_CUDA_INT8_GEMM is read per call).
    cuBLASLt may decline a shape; then the test of that shape uses dp4a."""
    monkeypatch.setenv("TORCHQAT_CUDA_INT8_GEMM", "auto" if request.param == "cublaslt" else "dp4a")
    return request.param


SHAPES = [(1, 1, 1), (3, 17, 33), (17, 33, 3), (33, 3, 17), (1, 1000, 17), (1000, 3, 5),
          (7, 65, 130), (64, 128, 64), (257, 129, 1001), (5, 33, 6001)]


@pytest.mark.parametrize("signed", [False, True])
def test_int8_matmul_cuda_equals_cpu(gemm, signed):
    g = gen(11)
    for m, n, k in SHAPES:
        w = randint(-128, 127, (n, k), torch.int8, g)
        packed = int8.pack_linear(w, torch.ones(n))
        lo, hi, dtype = (-128, 127, torch.int8) if signed else (0, 255, torch.uint8)
        a = randint(lo, hi, (m, k), dtype, g)
        z = int(randint(lo, hi, (), torch.int64, g))
        acc = int8.int8_matmul(a.to(CUDA), z, packed)
        assert acc.dtype == torch.int32 and acc.shape == (m, n) and acc.is_cuda
        assert torch.equal(acc.cpu(), int8.int8_matmul(a, z, packed)), (m, n, k)


def test_int8_matmul_cuda_at_range_ends(gemm):
    """All 255 x all -127 (and the other corners) at K in the thousands, M / N / K odd."""
    for m, n, k in [(3, 17, 4096), (6, 64, 4099), (1, 1, 4096), (33, 5, 65793)]:
        cases = [
            (torch.full((m, k), 255, dtype=torch.uint8), 0, -127),
            (torch.full((m, k), 255, dtype=torch.uint8), 0, -128),
            (torch.full((m, k), 0, dtype=torch.uint8), 255, 127),
            (torch.full((m, k), -128, dtype=torch.int8), 127, -128),
            (torch.full((m, k), 127, dtype=torch.int8), -128, -127),
        ]
        for a, z, wv in cases:
            w = torch.full((n, k), wv, dtype=torch.int8)
            packed = int8.pack_linear(w, torch.ones(n))
            acc = int8.int8_matmul(a.to(CUDA), z, packed)
            expected = (int(a[0, 0]) - z) * wv * k
            assert acc.unique().tolist() == [expected], (gemm, m, n, k, z, wv)
            assert torch.equal(acc.cpu(), int8.int8_matmul(a, z, packed))


def test_int8_matmul_cuda_batched_and_non_contiguous(gemm):
    g = gen(12)
    w = randint(-127, 127, (33, 70), torch.int8, g)
    packed = int8.pack_linear(w, torch.ones(33))
    a = randint(0, 255, (2, 5, 140), torch.uint8, g)[..., ::2]  # [*, K], not contiguous
    acc = int8.int8_matmul(a.to(CUDA), 3, packed)
    assert acc.shape == (2, 5, 33)
    assert torch.equal(acc.cpu(), int8.int8_matmul(a, 3, packed))
    empty = int8.int8_matmul(torch.empty(0, 70, dtype=torch.uint8, device=CUDA), 3, packed)
    assert empty.shape == (0, 33) and empty.is_cuda


# ---------------------------------------------------------------------------------------------
# int8_linear


def make_layer(n, k, g, bias=True, bn=False):
    w = torch.randn(n, k, generator=g) * 0.1
    s_w = w.abs().amax(dim=1) / 127
    q_w = int8.quantize(w, s_w, torch.zeros(n, dtype=torch.int32), -127, 127, 0)
    b = torch.randn(n, generator=g) if bias else None
    mult = shift = None
    if bn:
        mult = torch.rand(n, generator=g) + 0.5
        shift = torch.randn(n, generator=g)
    return q_w, s_w, b, mult, shift


def silu_close(gpu, cpu):
    """silu's expf differs between CUDA's libdevice and the CPU's vectorised exp: a few ulp of
    the result, plus the absolute error where y is tiny."""
    return torch.allclose(gpu.cpu(), cpu, rtol=8 * 2.0**-24, atol=1e-30)


@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127), (-100, 100), (0, 127)])
@pytest.mark.parametrize("bias,bn", [(True, False), (False, False), (True, True)])
def test_int8_linear_cuda_equals_cpu(gemm, qrange, bias, bn):
    qmin, qmax = qrange
    g = gen(21)
    for m, n, k in [(3, 17, 33), (1, 1000, 17), (33, 3, 4096), (129, 65, 1001)]:
        q_w, s_w, b, mult, shift = make_layer(n, k, g, bias, bn)
        packed = int8.pack_linear(q_w, s_w, b, mult, shift)
        x = torch.randn(m, k, generator=g) * 2
        s_x = torch.tensor([0.013])
        z_x = randint(qmin, qmax, (1,), torch.int32, g)
        args_gpu = (x.to(CUDA), s_x.to(CUDA), z_x.to(CUDA), qmin, qmax, packed)
        for act in ["none", "relu"]:
            y_cpu = int8.int8_linear(x, s_x, z_x, qmin, qmax, packed, act)
            y_gpu = int8.int8_linear(*args_gpu, act)
            assert y_gpu.is_cuda and y_gpu.dtype == torch.float32
            assert torch.equal(y_gpu.cpu(), y_cpu), (gemm, act, m, n, k)
        assert silu_close(int8.int8_linear(*args_gpu, "silu"),
                          int8.int8_linear(x, s_x, z_x, qmin, qmax, packed, "silu"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_int8_linear_cuda_half_inputs_and_batch_dims(dtype):
    g = gen(22)
    q_w, s_w, b, mult, shift = make_layer(70, 130, g, bias=True, bn=True)
    packed = int8.pack_linear(q_w, s_w, b, mult, shift)
    x = torch.randn(2, 9, 130, generator=g).to(dtype)
    s_x, z_x = torch.tensor([0.02], dtype=torch.float64), torch.tensor([3.4])  # float z -> 3
    y_cpu = int8.int8_linear(x, s_x, z_x, 0, 255, packed)
    y_gpu = int8.int8_linear(x.to(CUDA), s_x.to(CUDA), z_x.to(CUDA), 0, 255, packed)
    assert y_gpu.shape == (2, 9, 70)
    assert torch.equal(y_gpu.cpu(), y_cpu)
    empty = int8.int8_linear(torch.empty(0, 3, 130, device=CUDA), s_x.to(CUDA), z_x.to(CUDA),
                             0, 255, packed)
    assert empty.shape == (0, 3, 70) and empty.is_cuda


def test_int8_linear_cuda_errors():
    packed = int8.pack_linear(torch.ones(3, 5, dtype=torch.int8), torch.ones(3))
    x = torch.randn(2, 5, device=CUDA)
    s, z = torch.tensor([0.1], device=CUDA), torch.tensor([0], device=CUDA)
    with pytest.raises(RuntimeError, match=r"int8_linear: input_scale must be on input's device"):
        int8.int8_linear(x, s.cpu(), z, -128, 127, packed)
    with pytest.raises(RuntimeError, match=r"int8_linear: input_scale must be on input's device "
                                           r"\(cpu\), got cuda"):
        int8.int8_linear(x.cpu(), s, z, -128, 127, packed)  # dispatched to CUDA by s and z
    with pytest.raises(RuntimeError, match=r"int8_linear: input must have shape \[\*, 5\]"):
        int8.int8_linear(x[:, :4], s, z, -128, 127, packed)
    # The range check is the CPU operator's (int8_common.h): same messages on both devices.
    with pytest.raises(RuntimeError, match=r"int8_linear: quant_min must be less than quant_max, "
                                           r"got \[5, 5\]"):
        int8.int8_linear(x, s, z, 5, 5, packed)
    with pytest.raises(RuntimeError, match=r"int8_linear: \[quant_min, quant_max\] must lie "
                                           r"within \[0, 255\] or \[-128, 127\]"):
        int8.int8_linear(x, s, z, -1000, 1000, packed)
    with pytest.raises(RuntimeError, match="int8_linear: activation must be 'none', 'relu' or "
                                           "'silu', got 'gelu'"):
        int8.int8_linear(x, s, z, -128, 127, packed, "gelu")
    with pytest.raises(RuntimeError, match=r"int8_matmul: input_zero_point must lie in "
                                           r"\[0, 255\] for Byte input, got -1"):
        int8.int8_matmul(x.to(torch.uint8), -1, packed)
    with pytest.raises(RuntimeError, match="TORCHQAT_CUDA_INT8_GEMM must be auto, cublaslt or "
                                           "dp4a, got 'fast'"):
        os.environ["TORCHQAT_CUDA_INT8_GEMM"] = "fast"
        try:
            int8.int8_matmul(x.to(torch.uint8), 0, packed)
        finally:
            del os.environ["TORCHQAT_CUDA_INT8_GEMM"]


# ---------------------------------------------------------------------------------------------
# PackedLinear: one object, both devices; TorchScript save on CPU, load and run on CUDA


class Int8LinearModule(torch.nn.Module):
    def __init__(self, packed, s_x, z_x):
        super().__init__()
        self.packed = packed
        self.register_buffer("s_x", s_x)
        self.register_buffer("z_x", z_x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchqat.int8_linear(x, self.s_x, self.z_x, 0, 255, self.packed, "relu")


def test_packed_linear_serves_cpu_and_cuda():
    g = gen(31)
    q_w, s_w, b, mult, shift = make_layer(9, 20, g, bias=True, bn=True)
    packed = int8.pack_linear(q_w, s_w, b, mult, shift)
    x = torch.randn(4, 20, generator=g)
    s_x, z_x = torch.tensor([0.05]), torch.tensor([128])
    y_cpu = int8.int8_linear(x, s_x, z_x, 0, 255, packed)
    for _ in range(2):  # the second call reuses the device copy
        y_gpu = int8.int8_linear(x.to(CUDA), s_x.to(CUDA), z_x.to(CUDA), 0, 255, packed)
        assert torch.equal(y_gpu.cpu(), y_cpu)
    assert torch.equal(int8.int8_linear(x, s_x, z_x, 0, 255, packed), y_cpu)  # CPU unchanged
    assert packed.weight().device.type == "cpu"


def test_saved_torchscript_module_runs_on_cuda_after_load():
    g = gen(32)
    q_w, s_w, b, mult, shift = make_layer(33, 70, g, bias=True, bn=True)
    module = Int8LinearModule(int8.pack_linear(q_w, s_w, b, mult, shift), torch.tensor([0.05]),
                              torch.tensor([128]))
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    x = torch.randn(5, 70, generator=g)
    expected = module(x)
    buf.seek(0)
    on_gpu = torch.jit.load(buf, map_location=CUDA)
    assert torch.equal(on_gpu(x.to(CUDA)).cpu(), expected)
    buf.seek(0)
    moved = torch.jit.load(buf).to(CUDA)  # loaded on the CPU, then moved like any module
    assert torch.equal(moved(x.to(CUDA)).cpu(), expected)


# ---------------------------------------------------------------------------------------------
# opcheck on CUDA


def test_quantize_dequantize_opcheck_cuda():
    g = gen(6)
    x = torch.randn(4, 6, 5, generator=g).to(CUDA)
    s = (torch.rand(6, generator=g) * 0.1 + 0.01).to(CUDA)
    z = randint(-10, 10, (6,), torch.int32, g).to(CUDA)
    torch.library.opcheck(ops.quantize, (x, s, z, -128, 127, 1))
    torch.library.opcheck(ops.quantize, (x, s[:1], z[:1], 0, 65535))
    q = int8.quantize(x, s, z, -128, 127, 1)
    torch.library.opcheck(ops.dequantize, (q, s, z, 1))
    torch.library.opcheck(ops.dequantize, (q.to(torch.int16), s[:1], z[:1]))


def test_int8_linear_opcheck_cuda():
    g = gen(40)
    q_w, s_w, b, _, _ = make_layer(6, 24, g)
    packed = int8.pack_linear(q_w, s_w, b)
    utils = ("test_autograd_registration", "test_faketensor")
    x = torch.randn(3, 24, generator=g).to(CUDA)
    torch.library.opcheck(ops.int8_linear, (x, torch.tensor([0.1], device=CUDA),
                                            torch.tensor([3], device=CUDA), 0, 255, packed,
                                            "relu"), test_utils=utils)
    a = randint(0, 255, (3, 24), torch.uint8, g).to(CUDA)
    torch.library.opcheck(ops.int8_matmul, (a, 3, packed), test_utils=utils)


# ---------------------------------------------------------------------------------------------
# INT8 convolution (csrc/ops/cuda/int8_conv2d.cu) through PackedConv2d's operators. The kernel a
# case runs: "gemm" (1x1, stride 1, no padding, one group), "depthwise" (groups == C), else the
# implicit GEMM ("words": one group, 32-bit loads; "bytes": grouped, byte gathers).


CONV_CASES = [
    # (N, C, H, W, O, k, stride, padding, dilation, groups)     kernel it exercises
    (2, 32, 9, 9, 48, 1, 1, 0, 1, 1),       # gemm
    (1, 5, 7, 9, 11, 1, 1, 0, 1, 1),        # gemm, odd C and O
    (3, 7, 5, 4, 9, 1, 1, 0, 2, 1),         # gemm (dilation of a 1x1 kernel is moot)
    (1, 3, 17, 19, 16, 3, 2, 1, 1, 1),      # words: stem-like, C not a multiple of 4
    (2, 20, 8, 8, 24, 3, 1, 1, 1, 1),       # words, channels padded to 32
    (1, 16, 11, 7, 8, 3, 1, 2, 2, 1),       # words, dilation 2
    (2, 64, 8, 8, 33, 1, 2, 0, 1, 1),       # words: 1x1 stride 2
    (1, 8, 6, 6, 8, 1, 1, 1, 1, 1),         # words: 1x1 with padding (a ring of zero points)
    (2, 16, 20, 20, 130, 3, 1, 1, 1, 1),    # words, several 64 x 64 tiles both ways
    (1, 4, 5, 6, 7, (3, 1), (1, 2), (1, 0), (2, 1), 1),  # words, rectangular everything
    (1, 3, 2, 2, 5, 3, 1, 2, 1, 1),         # words, input smaller than the kernel (padding)
    (1, 12, 9, 9, 18, 3, 1, 1, 1, 3),       # bytes: grouped
    (1, 6, 10, 11, 9, 3, 2, 1, 1, 3),       # bytes: odd channels per group, stride 2
    (2, 8, 7, 7, 4, 3, 1, 1, 1, 2),         # bytes: 4 input, 2 output channels per group
    (2, 32, 10, 10, 32, 3, 1, 1, 1, 32),    # depthwise
    (1, 13, 7, 8, 13, 5, 2, 2, 1, 13),      # depthwise, odd channels, stride 2
    (1, 12, 6, 6, 12, 3, 1, 1, 2, 12),      # depthwise, dilation 2
    (1, 8, 7, 7, 16, 5, 2, 2, 1, 8),        # depthwise, channel multiplier 2
]


def conv_case_id(case):
    return "N{}C{}H{}W{}O{}_k{}s{}p{}d{}g{}".format(*case).replace(" ", "")


def make_packed_conv(case, g, bias=True, bn=True):
    n, c, h, w_, o, k, stride, padding, dilation, groups = case
    kh, kw = (k, k) if isinstance(k, int) else k
    weight = randint(-127, 127, (o, c // groups, kh, kw), torch.int8, g)
    s_w = torch.rand(o, generator=g) * 0.01 + 0.001
    b = torch.randn(o, generator=g) if bias else None
    mult = torch.rand(o, generator=g) + 0.5 if bn else None
    shift = torch.randn(o, generator=g) if bn else None
    return int8.pack_conv2d(weight, s_w, b, mult, shift, stride=stride, padding=padding,
                            dilation=dilation, groups=groups)


@pytest.mark.parametrize("case", CONV_CASES, ids=[conv_case_id(c) for c in CONV_CASES])
def test_int8_conv2d_acc_cuda_equals_cpu(gemm, case):
    n, c, h, w_ = case[:4]
    g = gen(50)
    packed = make_packed_conv(case, g)
    for qx, z in [(randint(0, 255, (n, c, h, w_), torch.uint8, g), 117),
                  (randint(-128, 127, (n, c, h, w_), torch.int8, g), -5),
                  (torch.full((n, c, h, w_), 255, dtype=torch.uint8), 0),
                  (torch.full((n, c, h, w_), 0, dtype=torch.uint8), 255),
                  (torch.full((n, c, h, w_), -128, dtype=torch.int8), 127)]:
        acc_cpu = int8.int8_conv2d_acc(qx, z, packed)
        acc_gpu = int8.int8_conv2d_acc(qx.to(CUDA), z, packed)
        assert_same_tensor(acc_gpu, acc_cpu)
        assert acc_gpu.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", CONV_CASES, ids=[conv_case_id(c) for c in CONV_CASES])
@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127)])
def test_int8_conv2d_cuda_equals_cpu(gemm, case, qrange):
    """The epilogue is the CPU's fma sequence (int8_gemm.cu, built with --fmad=false): "none"
    and "relu" are bit for bit the CPU's, "silu" within a few ulp (expf)."""
    qmin, qmax = qrange
    n, c, h, w_ = case[:4]
    g = gen(51)
    for bias, bn in [(True, True), (False, False)]:
        packed = make_packed_conv(case, g, bias, bn)
        x = special_input((n, c, h, w_), 0.02, g)
        s_x = torch.tensor([0.02])
        for z_x in [torch.tensor([(qmin + qmax) // 2 + 10], dtype=torch.int32),
                    torch.tensor([2.5])]:
            args = (s_x, z_x, qmin, qmax, packed)
            args_gpu = (s_x.to(CUDA), z_x.to(CUDA), qmin, qmax, packed)
            for act in ["none", "relu"]:
                assert_same_tensor(int8.int8_conv2d(x.to(CUDA), *args_gpu, act),
                                   int8.int8_conv2d(x, *args, act))
            assert silu_close(int8.int8_conv2d(x.to(CUDA), *args_gpu, "silu"),
                              int8.int8_conv2d(x, *args, "silu"))


def test_int8_conv2d_cuda_deep_reduction_at_range_ends(gemm):
    """All 255 x all -127 (and the other corners) with K = 9 * 512 = 4608 and K = 512 (1x1)."""
    for k, groups, c in [(3, 1, 512), (1, 1, 512), (3, 2, 1024)]:
        for qv, z, wv in [(255, 0, -127), (255, 0, -128), (0, 255, 127)]:
            o = 6
            weight = torch.full((o, c // groups, k, k), wv, dtype=torch.int8)
            packed = int8.pack_conv2d(weight, torch.ones(o), padding=k // 2, groups=groups)
            qx = torch.full((1, c, 5, 5), qv, dtype=torch.uint8)
            acc = int8.int8_conv2d_acc(qx.to(CUDA), z, packed)
            center = int(acc[0, 0, 2, 2])
            assert center == (qv - z) * wv * (c // groups) * k * k, (k, groups, qv, z, wv)
            assert_same_tensor(acc, int8.int8_conv2d_acc(qx, z, packed))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_int8_conv2d_cuda_input_dtypes_and_layouts(dtype, layout):
    g = gen(52)
    case = CONV_CASES[4]
    n, c, h, w_ = case[:4]
    packed = make_packed_conv(case, g)
    full = torch.randn(n, c, h, 2 * w_, generator=g).to(dtype)
    x = full[..., ::2] if layout == "strided" else full[..., :w_].contiguous()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    xg = full.to(CUDA)[..., ::2] if layout == "strided" else x.to(CUDA)
    s_x, z_x = torch.tensor([0.03], dtype=torch.float64), torch.tensor([3.4])  # float z -> 3
    assert_same_tensor(int8.int8_conv2d(xg, s_x.to(CUDA), z_x.to(CUDA), 0, 255, packed, "relu"),
                       int8.int8_conv2d(x, s_x, z_x, 0, 255, packed, "relu"))


def test_int8_conv2d_cuda_empty_batch():
    packed = make_packed_conv(CONV_CASES[4], gen(53))
    s, z = torch.tensor([0.1], device=CUDA), torch.tensor([3], device=CUDA)
    y = int8.int8_conv2d(torch.empty(0, 20, 8, 8, device=CUDA), s, z, 0, 255, packed)
    assert y.shape == (0, 24, 8, 8) and y.device.type == CUDA and y.dtype == torch.float32
    acc = int8.int8_conv2d_acc(torch.empty(0, 20, 8, 8, dtype=torch.uint8, device=CUDA), 3, packed)
    assert acc.shape == (0, 24, 8, 8) and acc.device.type == CUDA and acc.dtype == torch.int32


def error_message(fn):
    with pytest.raises(RuntimeError) as info:
        fn()
    return str(info.value).splitlines()[0]


def test_int8_conv2d_cuda_errors_match_cpu():
    """The same checks and messages as the CPU operators (tests/test_int8_conv.py checks those)."""
    packed = int8.pack_conv2d(torch.ones(4, 3, 3, 3, dtype=torch.int8), torch.ones(4))
    x, s, z = torch.randn(2, 3, 8, 8), torch.tensor([0.1]), torch.tensor([0])
    calls = [
        lambda x, s, z: int8.int8_conv2d(x.double(), s, z, -128, 127, packed),
        lambda x, s, z: int8.int8_conv2d(x[0], s, z, -128, 127, packed),
        lambda x, s, z: int8.int8_conv2d(x[:, :2], s, z, -128, 127, packed),
        lambda x, s, z: int8.int8_conv2d(x[:, :, :2], s, z, -128, 127, packed),
        lambda x, s, z: int8.int8_conv2d(x, s, z, -1000, 1000, packed),
        lambda x, s, z: int8.int8_conv2d(x, s, z, 5, 5, packed),
        lambda x, s, z: int8.int8_conv2d(x, s.repeat(3), z.repeat(3), -128, 127, packed),
        lambda x, s, z: int8.int8_conv2d(x, s, z, -128, 127, packed, "gelu"),
        lambda x, s, z: int8.int8_conv2d_acc(x, 0, packed),
        lambda x, s, z: int8.int8_conv2d_acc(x.to(torch.uint8), -1, packed),
        lambda x, s, z: int8.int8_conv2d_acc(x[:, :2].to(torch.int8), 0, packed),
    ]
    for call in calls:
        cpu = error_message(lambda: call(x, s, z))
        assert error_message(lambda: call(x.to(CUDA), s.to(CUDA), z.to(CUDA))) == cpu
    # Mixed devices: the CUDA kernel runs whenever one tensor is on the GPU.
    for args, name in [((x.to(CUDA), s, z.to(CUDA)), "input_scale"),
                       ((x.to(CUDA), s.to(CUDA), z), "input_zero_point"),
                       ((x, s.to(CUDA), z.to(CUDA)), "input_scale")]:
        with pytest.raises(RuntimeError, match=f"int8_conv2d: {name} must be on input's device"):
            int8.int8_conv2d(*args, -128, 127, packed)


@pytest.mark.parametrize("call,message", [
    ("int8.int8_conv2d(x, torch.tensor([float('nan')], device='cuda'), "
     "torch.tensor([0], device='cuda'), 0, 255, p)",
     "int8_conv2d: input_scale must be positive and finite, got nan"),
    ("int8.int8_conv2d(x, torch.tensor([0.1], device='cuda'), torch.tensor([256], device='cuda'), "
     "0, 255, p)", "int8_conv2d: input_zero_point must lie in [quant_min, quant_max] = [0, 255], "
     "got 256"),
])
def test_int8_conv2d_parameter_checks_on_the_device(call, message):
    r = run_isolated(f"""
        import torch, torchqat
        from torchqat import int8
        x = torch.randn(1, 3, 8, 8, device='cuda')
        p = int8.pack_conv2d(torch.ones(4, 3, 3, 3, dtype=torch.int8), torch.ones(4))
        {call}
        torch.cuda.synchronize()
    """)
    assert r.returncode != 0
    assert message in r.stdout + r.stderr, r.stdout + r.stderr


def test_packed_conv2d_serves_cpu_and_cuda():
    g = gen(54)
    packed = make_packed_conv(CONV_CASES[3], g)
    x = torch.randn(1, 3, 17, 19, generator=g)
    s_x, z_x = torch.tensor([0.05]), torch.tensor([128])
    y_cpu = int8.int8_conv2d(x, s_x, z_x, 0, 255, packed)
    for _ in range(2):  # the second call reuses the device copy
        y_gpu = int8.int8_conv2d(x.to(CUDA), s_x.to(CUDA), z_x.to(CUDA), 0, 255, packed)
        assert_same_tensor(y_gpu, y_cpu)
    assert torch.equal(int8.int8_conv2d(x, s_x, z_x, 0, 255, packed), y_cpu)  # CPU unchanged
    assert packed.weight().device.type == "cpu"


def test_int8_conv2d_opcheck_cuda():
    g = gen(55)
    packed = make_packed_conv(CONV_CASES[11], g)
    utils = ("test_autograd_registration", "test_faketensor")  # as on the CPU (test_int8_conv.py)
    x = torch.randn(1, 12, 9, 9, generator=g).to(CUDA)
    torch.library.opcheck(ops.int8_conv2d, (x, torch.tensor([0.1], device=CUDA),
                                            torch.tensor([3], device=CUDA), 0, 255, packed,
                                            "relu"), test_utils=utils)
    a = randint(0, 255, (1, 12, 9, 9), torch.uint8, g).to(CUDA)
    torch.library.opcheck(ops.int8_conv2d_acc, (a, 3, packed), test_utils=utils)


# -- modules and models moved to the GPU ------------------------------------------------------


def calibrated_qat_model(model, shape, seed):
    import torchqat as tq

    torch.manual_seed(seed)
    qat = tq.prepare_qat(model)
    tq.calibrate(qat, [torch.randn(*shape) for _ in range(2)], progress=False)
    return qat.eval()


class ConvNet(torch.nn.Module):
    """Every CUDA conv kernel (3x3 + BN + ReLU, depthwise, 1x1, strided dilated grouped), a
    Conv1d over the flattened rows and a Linear head. Only layout changes between the INT8
    layers and ReLU (fused) as the activation: the GPU's output is the CPU's bit for bit."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16),
            nn.Conv2d(16, 24, 1), nn.ReLU(),
            nn.Conv2d(24, 24, 3, stride=2, padding=2, dilation=2, groups=3), nn.ReLU(),
        )
        self.conv1d = nn.Conv1d(24, 8, 3, padding=1)
        self.head = nn.Linear(8 * 64, 5)

    def forward(self, x):
        y = self.features(x)                   # [N, 24, 8, 8] for 16 x 16 inputs
        y = torch.relu(self.conv1d(y.flatten(2)))
        return self.head(y.flatten(1))


def test_converted_model_runs_on_cuda():
    import torchqat as tq

    qat = calibrated_qat_model(ConvNet(), (2, 3, 16, 16), seed=60)
    model = tq.convert(qat)
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("Int8Conv2d") == 4 and "Int8Conv1d" in kinds and "Int8Linear" in kinds
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        gpu = model.to(CUDA)
        assert gpu.features[0].input_scale.device.type == CUDA
        out = gpu(x.to(CUDA))
    assert out.device.type == CUDA
    assert torch.equal(out.cpu(), expected)


def test_int8_conv_modules_after_to_cuda():
    import torchqat as tq
    from torchqat.nn import Int8Conv1d, Int8Conv2d

    for model, shape, cls in [(torch.nn.Conv2d(6, 10, 3, stride=2, padding=1, groups=2),
                               (2, 6, 9, 9), Int8Conv2d),
                              (torch.nn.Conv1d(5, 7, 3, padding=2, dilation=2), (2, 5, 11),
                               Int8Conv1d)]:
        qat = calibrated_qat_model(torch.nn.Sequential(model), shape, seed=61)
        int8_model = tq.convert(qat)
        layer = int8_model[0]
        assert isinstance(layer, cls)
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = layer(x)
            layer.to(CUDA)
            assert_same_tensor(layer(x.to(CUDA)), expected)
            layer.to("cpu")  # and back: the CPU kernel again
            assert torch.equal(layer(x), expected)


def test_saved_torchscript_conv_model_runs_on_cuda_after_load():
    import torchqat as tq

    qat = calibrated_qat_model(ConvNet(), (2, 3, 16, 16), seed=62)
    model = tq.convert(qat)
    scripted = torch.jit.script(model)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    buf.seek(0)
    on_gpu = torch.jit.load(buf, map_location=CUDA)
    with torch.no_grad():
        assert torch.equal(on_gpu(x.to(CUDA)).cpu(), expected)
    buf.seek(0)
    moved = torch.jit.load(buf).to(CUDA)  # loaded on the CPU, then moved like any module
    with torch.no_grad():
        assert torch.equal(moved(x.to(CUDA)).cpu(), expected)
