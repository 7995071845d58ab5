"""The INT8 CPU operators: quantize / dequantize against fake_quantize (bit for bit), every GEMM
kernel's int32 accumulators against an int64 reference (exact, at the ends of the operand ranges),
the float epilogue against float64 and against the QAT computation (derived tolerances, see
docs/numerics.md), PackedLinear save/load through TorchScript, opcheck, and errors.

Every kernel path runs in this one process: each PackedLinear is packed for an explicit kernel
(torchqat.int8.available_kernels()). The environment variables that steer "auto" are tested in
subprocesses.
"""

import io
import pickletools
import zipfile

import pytest
import torch
import torch.nn.functional as F

import torchqat
from torchqat import int8

ops = torch.ops.torchqat
KERNELS = int8.available_kernels()
# What "auto" packs for in this process (TORCHQAT_CPU_CAPABILITY may lower it).
AUTO_KERNEL = int8.pack_linear(torch.ones(1, 1, dtype=torch.int8), torch.ones(1)).kernel()
U = 2.0**-24  # unit roundoff of float32


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randint(lo, hi, shape, dtype, g):
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64).to(dtype)


def reference_accumulators(a, zero_point, w):
    """sum_k (a - z) * w[n, k] in int64."""
    return (a.to(torch.int64) - zero_point) @ w.to(torch.int64).T


# ---------------------------------------------------------------------------------------------
# quantize / dequantize


def reference_quantize(x, scale, zero_point, qmin, qmax, axis=None):
    """clamp(round_half_even(x * (1/s)) + z) in x's compute type (float32 for float32 input)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = scale.to(dt)
    inv = 1.0 / s
    z = zero_point.to(dt)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        inv, z = inv.view(shape), z.view(shape)
    v = torch.round(x.to(dt) * inv) + z
    v = torch.where(torch.isnan(v), z.expand_as(v), v)
    return v.clamp(qmin, qmax)


RANGES = [(0, 255), (-128, 127), (-8, 7), (0, 15), (-32768, 32767), (0, 65535), (-127, 127)]
EXPECTED_DTYPE = {
    (0, 255): torch.uint8,
    (-128, 127): torch.int8,
    (-8, 7): torch.int8,
    (0, 15): torch.uint8,
    (-32768, 32767): torch.int16,
    (0, 65535): torch.int32,
    (-127, 127): torch.int8,
}


def special_input(shape, scale, g):
    """Random values plus exact rounding ties, values outside the range and +-inf."""
    x = torch.randn(shape, generator=g) * 300 * scale
    flat = x.view(-1)
    n = flat.numel()
    ties = (torch.randint(-200, 200, (n,), generator=g).float() + 0.5) * scale
    pick = torch.rand(n, generator=g) < 0.3
    flat[pick] = ties[pick]
    if n > 4:
        flat[0], flat[1], flat[2] = float("inf"), float("-inf"), 0.0
    return x


@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("size", [1, 7, 33, 1000, 40000])
def test_quantize_per_tensor_is_fake_quantize(qrange, size):
    qmin, qmax = qrange
    g = gen(size)
    s = torch.tensor([0.0371])
    z = torch.tensor([(qmin + qmax) // 3], dtype=torch.int32)
    x = special_input((size,), 0.0371, g)
    q = int8.quantize(x, s, z, qmin, qmax)
    assert q.dtype == EXPECTED_DTYPE[qrange]
    assert torch.equal(q.to(torch.int64), reference_quantize(x, s, z, qmin, qmax).to(torch.int64))
    y = int8.dequantize(q, s, z)
    assert y.dtype == torch.float32
    assert torch.equal(y, torchqat.fake_quantize(x, s, z, qmin, qmax))
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, s, z, qmin, qmax))


@pytest.mark.parametrize("axis", [0, 1, -1, 3])
@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127), (-32768, 32767)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_quantize_per_channel_is_fake_quantize(axis, qrange, layout):
    qmin, qmax = qrange
    g = gen(7)
    x = special_input((3, 17, 5, 9), 0.05, g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(1, 3).contiguous().transpose(1, 3)
    c = x.size(axis)
    s = torch.rand(c, generator=g) * 0.05 + 0.01
    z = randint(qmin, qmax, (c,), torch.int32, g)
    q = int8.quantize(x, s, z, qmin, qmax, axis)
    assert q.stride() == torch.empty_like(x, dtype=q.dtype).stride()
    ref = reference_quantize(x, s, z, qmin, qmax, axis if axis >= 0 else axis + x.dim())
    assert torch.equal(q.to(torch.int64), ref.to(torch.int64))
    y = int8.dequantize(q, s, z, axis)
    assert y.stride() == x.stride() or not x.is_non_overlapping_and_dense()
    assert torch.equal(y, torchqat.fake_quantize(x, s, z, qmin, qmax, axis))
    # PyTorch's per-channel operator turns +inf into quant_min (an integer conversion overflow),
    # so the oracle is asked about finite elements only.
    finite = torch.isfinite(x)
    oracle = torch.fake_quantize_per_channel_affine(x, s, z, axis % 4, qmin, qmax)
    assert torch.equal(y[finite], oracle[finite])


def test_quantize_non_dense_input_and_float_zero_point():
    g = gen(3)
    x = special_input((40, 30), 0.1, g)[::2, ::3]  # neither contiguous nor dense
    s = torch.tensor([0.1])
    zf = torch.tensor([2.5])  # float zero point: rounds half to even, to 2
    q = int8.quantize(x, s, zf, -128, 127)
    assert q.shape == x.shape and q.is_contiguous()
    assert torch.equal(q, reference_quantize(x, s, torch.tensor([2.0]), -128, 127).to(torch.int8))
    assert torch.equal(int8.dequantize(q, s, zf), torchqat.fake_quantize(x, s, zf, -128, 127))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_quantize_other_float_dtypes(dtype):
    g = gen(4)
    x = special_input((3, 1000), 0.02, g).to(dtype)
    s = torch.rand(3, generator=g) * 0.02 + 0.01
    z = randint(0, 255, (3,), torch.int32, g)
    q = int8.quantize(x, s, z, 0, 255, 0)
    assert torch.equal(q, reference_quantize(x, s, z, 0, 255, 0).to(torch.uint8))
    # fake_quantize returns x's dtype; dequantize float32: equal after rounding to x's dtype.
    fq = torchqat.fake_quantize(x, s, z, 0, 255, 0)
    if dtype == torch.float64:
        # float64 quantizes in float64 (1/s in float64); the integers agree with fake_quantize's.
        assert torch.equal(torch.round(fq / s.double().view(-1, 1)) + z.view(-1, 1),
                           q.double())
    else:
        assert torch.equal(int8.dequantize(q, s, z, 0).to(dtype), fq)


def test_quantize_nan_becomes_zero_point():
    x = torch.tensor([float("nan"), 1.0, float("nan")])
    q = int8.quantize(x, torch.tensor([0.5]), torch.tensor([7]), 0, 255)
    assert q.tolist() == [7, 9, 7]
    assert int8.dequantize(q, torch.tensor([0.5]), torch.tensor([7])).tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_dequantize_matches_reference(dtype):
    g = gen(5)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -70000), min(info.max, 70000)
    q = randint(lo, hi, (4, 33, 7), dtype, g)
    s = torch.rand(33, generator=g) + 0.01
    z = randint(-100, 100, (33,), torch.int64, g)
    y = int8.dequantize(q, s, z, 1)
    ref = (q.to(torch.float32) - z.view(1, -1, 1).float()) * s.view(1, -1, 1)
    assert torch.equal(y, ref)
    # per-tensor, float64 scale (used as float32), float zero point rounded half to even
    y = int8.dequantize(q, torch.tensor([0.3], dtype=torch.float64), torch.tensor([-3.5]))
    assert torch.equal(y, (q.to(torch.float32) + 4.0) * torch.tensor(0.3, dtype=torch.float32))


def test_quantize_empty():
    x = torch.empty(0, 5)
    assert int8.quantize(x, torch.tensor([1.0]), torch.tensor([0]), 0, 255).shape == (0, 5)
    assert int8.dequantize(torch.empty(0, 5, dtype=torch.uint8), torch.tensor([1.0]),
                           torch.tensor([0])).shape == (0, 5)


def test_quantize_dequantize_opcheck():
    g = gen(6)
    x = torch.randn(4, 6, 5, generator=g)
    s = torch.rand(6, generator=g) * 0.1 + 0.01
    z = randint(-10, 10, (6,), torch.int32, g)
    torch.library.opcheck(ops.quantize, (x, s, z, -128, 127, 1))
    torch.library.opcheck(ops.quantize, (x, s[:1], z[:1], 0, 65535))
    q = int8.quantize(x, s, z, -128, 127, 1)
    torch.library.opcheck(ops.dequantize, (q, s, z, 1))
    torch.library.opcheck(ops.dequantize, (q.to(torch.int16), s[:1], z[:1]))


# ---------------------------------------------------------------------------------------------
# GEMM kernels: exact int32 accumulators

SHAPES = [(1, 1, 1), (3, 17, 33), (17, 33, 3), (33, 3, 17), (1, 1000, 17), (1000, 3, 5),
          (7, 65, 130), (64, 128, 64)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("signed", [False, True])
def test_kernel_accumulators_exact(kernel, signed):
    g = gen(11)
    for m, n, k in SHAPES:
        w = randint(-128, 127, (n, k), torch.int8, g)
        packed = int8.pack_linear(w, torch.ones(n), kernel=kernel)
        assert packed.kernel() == kernel
        lo, hi, dtype = (-128, 127, torch.int8) if signed else (0, 255, torch.uint8)
        a = randint(lo, hi, (m, k), dtype, g)
        z = int(randint(lo, hi, (), torch.int64, g))
        acc = int8.int8_matmul(a, z, packed)
        assert acc.dtype == torch.int32 and acc.shape == (m, n)
        assert torch.equal(acc.to(torch.int64), reference_accumulators(a, z, w)), (m, n, k)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_accumulators_at_range_ends(kernel):
    """All 255 x all -127 (where vpmaddubsw would saturate), all 0 x 127 with z = 255, and the
    signed ends, at K = 4096 and with K not a multiple of any vector width."""
    for m, n, k in [(3, 17, 4096), (6, 64, 4099), (1, 1, 4096)]:
        cases = [
            (torch.full((m, k), 255, dtype=torch.uint8), 0, -127),
            (torch.full((m, k), 255, dtype=torch.uint8), 0, 127),
            (torch.full((m, k), 0, dtype=torch.uint8), 255, 127),
            (torch.full((m, k), 0, dtype=torch.uint8), 255, -128),
            (torch.full((m, k), -128, dtype=torch.int8), 127, -128),
            (torch.full((m, k), 127, dtype=torch.int8), -128, -127),
        ]
        for a, z, wv in cases:
            w = torch.full((n, k), wv, dtype=torch.int8)
            acc = int8.int8_matmul(a, z, int8.pack_linear(w, torch.ones(n), kernel=kernel))
            expected = (int(a[0, 0]) - z) * wv * k
            assert acc.unique().tolist() == [expected], (kernel, m, n, k, z, wv)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_deep_random(kernel):
    g = gen(12)
    m, n, k = 5, 33, 6000
    w = randint(-127, 127, (n, k), torch.int8, g)
    a = randint(0, 255, (2, m, k), torch.uint8, g)  # 3-D input: [*, K]
    acc = int8.int8_matmul(a, 3, int8.pack_linear(w, torch.ones(n), kernel=kernel))
    assert acc.shape == (2, m, n)
    assert torch.equal(acc.to(torch.int64), reference_accumulators(a, 3, w))


def test_kernel_largest_depth():
    """K = 65793, all operands at their ends: the accumulators reach -(2^31 - 1) + ... without
    overflowing int32."""
    k = 65793
    w = torch.full((2, k), -128, dtype=torch.int8)
    a = torch.full((1, k), 255, dtype=torch.uint8)
    for kernel in [kk for kk in KERNELS if kk in ("avx512_vnni", "avx2", "reference")]:
        acc = int8.int8_matmul(a, 0, int8.pack_linear(w, torch.ones(2), kernel=kernel))
        assert acc.tolist() == [[-255 * 128 * k] * 2]


# ---------------------------------------------------------------------------------------------
# int8_linear: the epilogue and the QAT computation


def make_layer(n, k, g, bias=True, bn=False):
    """Float weights, their per-channel symmetric int8 quantization and the folded-BN params."""
    w = torch.randn(n, k, generator=g) * 0.1
    s_w = w.abs().amax(dim=1) / 127
    q_w = int8.quantize(w, s_w, torch.zeros(n, dtype=torch.int32), -127, 127, 0)
    b = torch.randn(n, generator=g) if bias else None
    mult = shift = None
    if bn:
        mult = torch.rand(n, generator=g) + 0.5
        shift = torch.randn(n, generator=g)
    return w, s_w, q_w, b, mult, shift


def epilogue_tolerance(p, b, mult, shift):
    """|y - y_exact| for y = fma(fma(float(acc), fl(s_x s_w), b), m, sh), acc exact, P = |acc s_x
    s_w|: rounding alpha, converting acc and each fma add at most one rounding each, so
    err <= u (4 |m| P + 2 |m| |b| + |sh|) (docs/numerics.md)."""
    m = torch.ones_like(p) if mult is None else mult.double().abs()
    sh = torch.zeros_like(p) if shift is None else shift.double().abs()
    bb = torch.zeros_like(p) if b is None else b.double().abs()
    return U * (4 * m * p + 2 * m * bb + sh) * (1 + 1e-6) + 1e-30


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127), (-100, 100)])
@pytest.mark.parametrize("bias,bn", [(True, False), (False, False), (True, True)])
def test_int8_linear_epilogue_vs_float64(kernel, qrange, bias, bn):
    qmin, qmax = qrange
    g = gen(21)
    for m, n, k in [(3, 17, 33), (1, 1000, 17), (33, 3, 4096)]:
        w, s_w, q_w, b, mult, shift = make_layer(n, k, g, bias, bn)
        x = torch.randn(m, k, generator=g) * 2
        s_x = torch.tensor([0.013])
        z_x = randint(qmin, qmax, (1,), torch.int32, g)
        packed = int8.pack_linear(q_w, s_w, b, mult, shift, kernel=kernel)
        y = int8.int8_linear(x, s_x, z_x, qmin, qmax, packed)
        q_x = int8.quantize(x, s_x, z_x, qmin, qmax)
        acc = reference_accumulators(q_x, int(z_x), q_w).double()
        alpha = s_x.double() * s_w.double()  # exact in float64
        exact = acc * alpha + (b.double() if b is not None else 0)
        if bn:
            exact = exact * mult.double() + shift.double()
        tol = epilogue_tolerance((acc * alpha).abs(), b, mult, shift)
        assert ((y.double() - exact).abs() <= tol).all(), (kernel, m, n, k)


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_linear_identical_on_every_kernel_and_activations(kernel):
    """Exact accumulators and one fma-based epilogue: every kernel gives the same floats."""
    g = gen(22)
    n, k = 70, 130
    _, s_w, q_w, b, mult, shift = make_layer(n, k, g, bias=True, bn=True)
    x = torch.randn(2, 9, k, generator=g)
    s_x, z_x = torch.tensor([0.02]), torch.tensor([3])
    ref = int8.pack_linear(q_w, s_w, b, mult, shift, kernel="reference")
    packed = int8.pack_linear(q_w, s_w, b, mult, shift, kernel=kernel)
    y_none = int8.int8_linear(x, s_x, z_x, 0, 255, packed)
    assert y_none.shape == (2, 9, n)
    assert torch.equal(y_none, int8.int8_linear(x, s_x, z_x, 0, 255, ref))
    assert torch.equal(int8.int8_linear(x, s_x, z_x, 0, 255, packed, "relu"), F.relu(y_none))
    y_silu = int8.int8_linear(x, s_x, z_x, 0, 255, packed, "silu")
    assert torch.equal(y_silu, int8.int8_linear(x, s_x, z_x, 0, 255, ref, "silu"))
    assert silu_close(y_silu, F.silu(y_none))


def silu_close(y, expected):
    """The epilogue's SiLU (core::silu, its own float32 exp) against ATen's: both within ~2 ulp of
    the exact value, so a few ulp apart, plus an absolute 1e-30 where the result is tiny."""
    return torch.allclose(y, expected, rtol=8 * U, atol=1e-30)


def test_silu_epilogue_against_aten_over_its_range():
    """t = q * s_w[n] for every int8 code q and 400 weight scales up to 0.8, so t runs from -102
    to 102 (where exp(-t) over- and underflows): the fused SiLU stays within a few ulp of
    F.silu(t) everywhere."""
    s_w = torch.linspace(1e-3, 0.8, 400)
    packed = int8.pack_linear(torch.ones(400, 1, dtype=torch.int8), s_w)
    x = torch.arange(-128.0, 128.0).unsqueeze(1)
    args = (x, torch.tensor([1.0]), torch.tensor([0]), -128, 127, packed)
    t = int8.int8_linear(*args)
    assert t.min() < -100 and t.max() > 100
    assert silu_close(int8.int8_linear(*args, "silu"), F.silu(t))


def qat_tolerance(k, abs_terms, b):
    """|y_int8 - y_qat| for y_qat = F.linear(fq(x), fq(W), b) in float32: fq(x), fq(W) and each
    product round once (3u), a sum of K + 2 terms in any order (bias, addmm's extra add) adds
    gamma_{K+2} = (K+2)u / (1 - (K+2)u) of the sum of |terms|; y_int8 is within 4u of exact
    (above). Total: (gamma_{K+2} + 8u) (sum_k |fq(x)_k fq(W)_k| + |b|)."""
    gamma = (k + 2) * U / (1 - (k + 2) * U)
    bb = 0 if b is None else b.double().abs()
    return (gamma + 8 * U) * (abs_terms + bb) * (1 + 1e-6) + 1e-30


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127)])
def test_int8_linear_matches_qat_linear(kernel, qrange):
    qmin, qmax = qrange
    g = gen(23)
    for m, n, k, dtype in [(4, 33, 1000, torch.float32), (17, 5, 4096, torch.float32),
                           (3, 17, 64, torch.float16)]:
        w, s_w, q_w, b, _, _ = make_layer(n, k, g)
        x = (torch.randn(m, k, generator=g) * 3).to(dtype)  # some values clamp
        s_x = torch.tensor([0.02])
        z_x = torch.tensor([(qmin + qmax) // 2 + 5])
        packed = int8.pack_linear(q_w, s_w, b, kernel=kernel)
        y = int8.int8_linear(x, s_x, z_x, qmin, qmax, packed)
        fq_x = torchqat.fake_quantize(x.float(), s_x, z_x, qmin, qmax)
        fq_w = torchqat.fake_quantize(w, s_w, torch.zeros(n, dtype=torch.int32), -127, 127, 0)
        y_qat = F.linear(fq_x, fq_w, b)
        abs_terms = fq_x.double().abs() @ fq_w.double().abs().T
        assert ((y.double() - y_qat.double()).abs() <= qat_tolerance(k, abs_terms, b)).all()


def test_int8_linear_empty_batch():
    g = gen(24)
    _, s_w, q_w, b, _, _ = make_layer(5, 8, g)
    packed = int8.pack_linear(q_w, s_w, b)
    y = int8.int8_linear(torch.empty(0, 3, 8), torch.tensor([0.1]), torch.tensor([0]), -128, 127,
                         packed)
    assert y.shape == (0, 3, 5) and y.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# PackedLinear: read back, TorchScript save / load, format version


class Int8LinearModule(torch.nn.Module):
    def __init__(self, packed, s_x, z_x):
        super().__init__()
        self.packed = packed
        self.register_buffer("s_x", s_x)
        self.register_buffer("z_x", z_x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchqat.int8_linear(x, self.s_x, self.z_x, 0, 255, self.packed, "relu")


def test_packed_linear_reads_back():
    g = gen(31)
    _, s_w, q_w, b, mult, shift = make_layer(9, 20, g, bias=True, bn=True)
    packed = int8.pack_linear(q_w, s_w, b, mult, shift)
    assert packed.in_features() == 20 and packed.out_features() == 9
    assert torch.equal(packed.weight(), q_w) and torch.equal(packed.weight_scale(), s_w)
    assert torch.equal(packed.bias(), b)
    assert torch.equal(packed.out_multiplier(), mult) and torch.equal(packed.out_shift(), shift)
    assert packed.kernel() == AUTO_KERNEL
    bare = int8.pack_linear(q_w, s_w)
    assert bare.bias() is None and bare.out_multiplier() is None and bare.out_shift() is None
    # The packed object owns a copy: changing the caller's tensor does not change it.
    q_w2 = q_w.clone()
    p2 = int8.pack_linear(q_w2, s_w)
    q_w2.fill_(0)
    assert torch.equal(p2.weight(), q_w)


def saved_module(packed):
    m = torch.jit.script(Int8LinearModule(packed, torch.tensor([0.05]), torch.tensor([128])))
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    return m, buf.getvalue()


@pytest.mark.parametrize("kernel", KERNELS)
def test_packed_linear_torchscript_save_load(kernel):
    g = gen(32)
    _, s_w, q_w, b, mult, shift = make_layer(33, 70, g, bias=True, bn=True)
    packed = int8.pack_linear(q_w, s_w, b, mult, shift, kernel=kernel)
    m, data = saved_module(packed)
    loaded = torch.jit.load(io.BytesIO(data))
    x = torch.randn(5, 70, generator=g)
    expected = Int8LinearModule(packed, torch.tensor([0.05]), torch.tensor([128]))(x)
    assert torch.equal(m(x), expected)
    assert torch.equal(loaded(x), expected)
    # Loading re-packs for this machine ("auto"), from the unpacked weights it saved.
    assert loaded.packed.kernel() == AUTO_KERNEL
    assert torch.equal(loaded.packed.weight(), q_w)
    assert torch.equal(loaded.packed.out_shift(), shift)


def with_version(data: bytes, version: int) -> bytes:
    """The saved archive with PackedLinear's format version replaced. In data.pkl the object is
    GLOBAL '__torch__.torch.classes.torchqat PackedLinear', NEWOBJ, then its state tuple, whose
    first item, the version, is the next small integer (BININT1)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            payload = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                seen_class, edited = False, False
                for op, arg, pos in pickletools.genops(payload):
                    if op.name == "GLOBAL" and arg.endswith("torchqat PackedLinear"):
                        seen_class = True
                    elif seen_class and op.name == "BININT1":
                        assert arg == 1 and 0 <= version < 256
                        payload = payload[: pos + 1] + bytes([version]) + payload[pos + 2 :]
                        edited = True
                        break
                assert edited, "no PackedLinear version found in data.pkl"
            dst.writestr(info, payload)
    return out.getvalue()


def test_packed_linear_unknown_version_raises():
    g = gen(33)
    _, s_w, q_w, b, _, _ = make_layer(4, 8, g)
    _, data = saved_module(int8.pack_linear(q_w, s_w, b))
    torch.jit.load(io.BytesIO(with_version(data, 1)))  # the edit itself keeps a valid file
    with pytest.raises(RuntimeError, match=r"PackedLinear: cannot load packed weights of format "
                                           r"version 7; this build of torchqat reads version 1"):
        torch.jit.load(io.BytesIO(with_version(data, 7)))


def test_auto_kernel_follows_environment(monkeypatch):
    """"auto" reads the variables at every packing (the element-wise kernels, chosen once per
    process, were chosen before this test by the calls above; test_int8_isa.py covers them)."""
    torch.ops.torchqat.cpu_capability()
    int8.quantize(torch.ones(2), torch.ones(1), torch.zeros(1), 0, 255)
    w, s = torch.ones(3, 5, dtype=torch.int8), torch.ones(3)
    monkeypatch.delenv("TORCHQAT_INT8_KERNEL", raising=False)
    monkeypatch.delenv("TORCHQAT_CPU_CAPABILITY", raising=False)
    assert int8.pack_linear(w, s).kernel() == KERNELS[0]  # the best this CPU runs
    if "brgemm" in KERNELS:  # AMX: "auto" takes it for convolutions only (test_int8_conv.py)
        assert KERNELS[0] == "avx512_vnni"
        assert int8.pack_linear(w, s, kernel="brgemm").kernel() == "brgemm"
        monkeypatch.setenv("TORCHQAT_INT8_KERNEL", "brgemm")
        assert int8.pack_linear(w, s).kernel() == "brgemm"
        monkeypatch.delenv("TORCHQAT_INT8_KERNEL")
    monkeypatch.setenv("TORCHQAT_CPU_CAPABILITY", "default")
    assert int8.pack_linear(w, s).kernel() == "reference"
    if "avx2" in KERNELS:
        monkeypatch.setenv("TORCHQAT_CPU_CAPABILITY", "avx2")
        assert int8.pack_linear(w, s).kernel() == "avx2"
    monkeypatch.setenv("TORCHQAT_INT8_KERNEL", "int_mm")  # wins over the capability
    assert int8.pack_linear(w, s).kernel() == "int_mm"
    assert int8.pack_linear(w, s, kernel="reference").kernel() == "reference"  # explicit wins
    monkeypatch.setenv("TORCHQAT_INT8_KERNEL", "bogus")
    with pytest.raises(RuntimeError, match="int8 kernel must be 'auto', 'brgemm', 'avx512_vnni', "
                                           "'avx2', 'reference', 'int_mm', 'vnni_emulated' or "
                                           "'avx2_u7', got 'bogus'"):
        int8.pack_linear(w, s)
    monkeypatch.delenv("TORCHQAT_INT8_KERNEL")
    monkeypatch.setenv("TORCHQAT_CPU_CAPABILITY", "sse9")
    with pytest.raises(RuntimeError, match="TORCHQAT_CPU_CAPABILITY must be default, avx2 or "
                                           "avx512, got 'sse9'"):
        int8.pack_linear(w, s)


def test_unavailable_brgemm_raises():
    if "brgemm" in KERNELS:
        pytest.skip("this machine runs brgemm")
    with pytest.raises(RuntimeError, match="int8 kernel 'brgemm' needs AVX-512 VNNI and AMX-INT8"):
        int8.pack_linear(torch.ones(2, 2, dtype=torch.int8), torch.ones(2), kernel="brgemm")


def test_unavailable_kernel_raises():
    if "avx512_vnni" in KERNELS:
        pytest.skip("this CPU has AVX-512 VNNI")
    with pytest.raises(RuntimeError, match="int8 kernel 'avx512_vnni' needs AVX-512"):
        int8.pack_linear(torch.ones(2, 2, dtype=torch.int8), torch.ones(2), kernel="avx512_vnni")


# ---------------------------------------------------------------------------------------------
# Errors name the operator and the argument


def test_quantize_errors():
    x, s, z = torch.randn(4, 3), torch.tensor([0.1]), torch.tensor([0])
    with pytest.raises(RuntimeError, match="quantize: input must be float32"):
        int8.quantize(x.to(torch.int32), s, z, 0, 255)
    with pytest.raises(RuntimeError, match=r"quantize: scale must have shape \[3\]"):
        int8.quantize(x, s, z, 0, 255, 1)
    with pytest.raises(RuntimeError, match="quantize: scale must be positive and finite, got -0.1"):
        int8.quantize(x, -s, z, 0, 255)
    with pytest.raises(RuntimeError, match=r"quantize: zero_point must lie in \[quant_min, "):
        int8.quantize(x, s, torch.tensor([300]), 0, 255)
    with pytest.raises(RuntimeError, match="dequantize: input must be uint8, int8, int16 or int32"):
        int8.dequantize(x, s, z)
    with pytest.raises(RuntimeError, match=r"dequantize: zero_point must have shape \[3\]"):
        int8.dequantize(x.to(torch.uint8), torch.ones(3), z, 1)
    with pytest.raises(RuntimeError, match="dequantize: axis must be in"):
        int8.dequantize(x.to(torch.uint8), s, z, 2)
    with pytest.raises(RuntimeError, match="dequantize: scale must be positive and finite"):
        int8.dequantize(x.to(torch.uint8), torch.tensor([float("inf")]), z)


def test_pack_linear_errors():
    w, s = torch.ones(3, 5, dtype=torch.int8), torch.ones(3)
    with pytest.raises(RuntimeError, match="PackedLinear: weight must be int8, got Float"):
        int8.pack_linear(w.float(), s)
    with pytest.raises(RuntimeError, match=r"PackedLinear: weight must have shape \[out_features"):
        int8.pack_linear(w[0], s)
    with pytest.raises(RuntimeError, match=r"PackedLinear: weight_scale must have shape \[3\]"):
        int8.pack_linear(w, torch.ones(4))
    with pytest.raises(RuntimeError, match="PackedLinear: weight_scale must be positive"):
        int8.pack_linear(w, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(RuntimeError, match="PackedLinear: weight_scale must be float32"):
        int8.pack_linear(w, s.double())
    with pytest.raises(RuntimeError, match=r"PackedLinear: bias must have shape \[3\]"):
        int8.pack_linear(w, s, torch.ones(5))
    with pytest.raises(RuntimeError, match="PackedLinear: out_multiplier and out_shift must be"):
        int8.pack_linear(w, s, None, torch.ones(3))
    with pytest.raises(RuntimeError, match="PackedLinear: weight must be a CPU tensor"):
        int8.pack_linear(w.to("meta"), s)
    with pytest.raises(RuntimeError, match="PackedLinear: in_features must be at most 65793"):
        int8.pack_linear(torch.ones(1, 65794, dtype=torch.int8), torch.ones(1))
    with pytest.raises(RuntimeError, match="int8 kernel must be 'auto', "):
        int8.pack_linear(w, s, kernel="fast")


def test_int8_linear_errors():
    packed = int8.pack_linear(torch.ones(3, 5, dtype=torch.int8), torch.ones(3))
    x, s, z = torch.randn(2, 5), torch.tensor([0.1]), torch.tensor([0])
    with pytest.raises(RuntimeError, match="int8_linear: input must be float32, float16 or "
                                           "bfloat16, got Double"):
        int8.int8_linear(x.double(), s, z, -128, 127, packed)
    with pytest.raises(RuntimeError, match=r"int8_linear: input must have shape \[\*, 5\] "
                                           r"\(in_features of packed\), got shape \[2, 4\]"):
        int8.int8_linear(x[:, :4], s, z, -128, 127, packed)
    with pytest.raises(RuntimeError, match=r"int8_linear: \[quant_min, quant_max\] must lie "
                                           r"within \[0, 255\] or \[-128, 127\]"):
        int8.int8_linear(x, s, z, -1000, 1000, packed)
    # An empty range would clamp every activation to one value: refused on every device.
    for qmin, qmax in [(5, 5), (10, -10)]:
        with pytest.raises(RuntimeError, match=rf"int8_linear: quant_min must be less than "
                                               rf"quant_max, got \[{qmin}, {qmax}\]"):
            int8.int8_linear(x, s, z, qmin, qmax, packed)
    with pytest.raises(RuntimeError, match="int8_linear: input_scale and input_zero_point must "
                                           "hold one element each"):
        int8.int8_linear(x, torch.ones(5), torch.zeros(5, dtype=torch.int32), -128, 127, packed)
    with pytest.raises(RuntimeError, match="int8_linear: input_scale must be positive and finite, "
                                           "got 0"):
        int8.int8_linear(x, torch.tensor([0.0]), z, -128, 127, packed)
    with pytest.raises(RuntimeError, match="int8_linear: input_scale must be at least"):
        int8.int8_linear(x, torch.tensor([1e-40], dtype=torch.float64), z, -128, 127, packed)
    with pytest.raises(RuntimeError, match="int8_linear: input_scale must be float32 or float64"):
        int8.int8_linear(x, torch.tensor([1]), z, -128, 127, packed)
    with pytest.raises(RuntimeError, match=r"int8_linear: input_zero_point must lie in "
                                           r"\[quant_min, quant_max\] = \[-128, 127\], got 200"):
        int8.int8_linear(x, s, torch.tensor([200]), -128, 127, packed)
    with pytest.raises(RuntimeError, match="int8_linear: input_zero_point must be finite"):
        int8.int8_linear(x, s, torch.tensor([float("nan")]), -128, 127, packed)
    with pytest.raises(RuntimeError, match="int8_linear: activation must be 'none', 'relu' or "
                                           "'silu', got 'gelu'"):
        int8.int8_linear(x, s, z, -128, 127, packed, "gelu")
    # Meta tensors reach the fake kernel (shape inference); CUDA inputs reach the CUDA kernels
    # (tests/test_int8_cuda.py).
    y = int8.int8_linear(x.to("meta"), s.to("meta"), z.to("meta"), -128, 127, packed)
    assert y.device.type == "meta" and y.shape == (2, 3)
    with pytest.raises(RuntimeError, match="int8_matmul: input must be uint8 or int8, got Float"):
        int8.int8_matmul(x, 0, packed)
    with pytest.raises(RuntimeError, match=r"int8_matmul: input_zero_point must lie in "
                                           r"\[-128, 127\] for Char input, got 200"):
        int8.int8_matmul(x.to(torch.int8), 200, packed)


# ---------------------------------------------------------------------------------------------
# torch.compile and torch.export (PackedLinear has a fake class in torchqat/_ops.py)


class CompiledInt8Module(torch.nn.Module):
    def __init__(self, packed):
        super().__init__()
        self.packed = packed
        self.register_buffer("s_x", torch.tensor([0.05]))
        self.register_buffer("z_x", torch.tensor([-3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.torchqat.int8_linear(torch.relu(x) - 0.5, self.s_x, self.z_x, -128, 127,
                                           self.packed, "silu")
        return y * 2


def test_int8_linear_opcheck():
    """opcheck's schema and AOT-dispatch utilities call len() / == on every argument, which a
    TorchScript class does not implement; the fake kernel and the autograd registration are
    checked here, and tracing by the test below."""
    g = gen(40)
    _, s_w, q_w, b, _, _ = make_layer(6, 24, g)
    packed = int8.pack_linear(q_w, s_w, b)
    utils = ("test_autograd_registration", "test_faketensor")
    x = torch.randn(3, 24, generator=g)
    torch.library.opcheck(ops.int8_linear, (x, torch.tensor([0.1]), torch.tensor([3]), 0, 255,
                                            packed, "relu"), test_utils=utils)
    a = randint(0, 255, (3, 24), torch.uint8, g)
    torch.library.opcheck(ops.int8_matmul, (a, 3, packed), test_utils=utils)


def test_int8_linear_torch_compile_and_export():
    g = gen(41)
    _, s_w, q_w, b, mult, shift = make_layer(6, 24, g, bias=True, bn=True)
    m = CompiledInt8Module(int8.pack_linear(q_w, s_w, b, mult, shift))
    x = torch.randn(2, 3, 24, generator=g)
    expected = m(x)
    assert torch.equal(torch.compile(m, backend="eager", fullgraph=True)(x), expected)
    ep = torch.export.export(m, (x,), strict=False)
    assert any(n.target is torch.ops.torchqat.int8_linear.default for n in ep.graph.nodes)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    assert torch.equal(torch.export.load(buf).module()(x), expected)


# -- avx2_u7: the AVX2 kernel for 7-bit unsigned activations ---------------------------------

needs_avx2 = pytest.mark.skipif("avx2" not in int8.available_kernels(),
                                reason="this CPU lacks AVX2 (avx2_u7 needs it)")


@needs_avx2
@pytest.mark.parametrize("k", [4, 4099, 65793])
def test_avx2_u7_exact_at_its_range_ends(k):
    """Codes 127 against weights -128 and 127, K up to the deepest exact reduction: vpmaddubsw's
    pair sums (127 * 128 * 2 = 32512) cannot saturate, so the accumulators are exact."""
    n = 3
    w = torch.tensor([-128, 127, -127], dtype=torch.int8).repeat_interleave(k).view(n, k)
    x = torch.full((2, k), 127.0)
    args = (torch.tensor([1.0]), torch.tensor([0]), 0, 127)
    y = int8.int8_linear(x, *args, int8.pack_linear(w, torch.ones(n), kernel="avx2_u7"))
    expected = torch.tensor([-128.0, 127.0, -127.0]) * 127 * k  # one rounding, like float(acc)
    assert torch.equal(y, expected.expand(2, n))
    assert torch.equal(y, int8.int8_linear(x, *args, int8.pack_linear(w, torch.ones(n),
                                                                      kernel="reference")))


@needs_avx2
@pytest.mark.parametrize("qrange", [(0, 127), (0, 100), (20, 127)])
@pytest.mark.parametrize("act", ["none", "relu", "silu"])
def test_avx2_u7_linear_equals_reference(qrange, act):
    qmin, qmax = qrange
    g = gen(31)
    for m, n, k in [(1, 5, 3), (7, 33, 129), (13, 16, 4), (50, 70, 301)]:
        _, s_w, q_w, b, mult, shift = make_layer(n, k, g, bias=True, bn=True)
        x = torch.randn(m, k, generator=g) * 2
        z = randint(qmin, qmax, (1,), torch.int32, g)
        args = (x, torch.tensor([0.02]), z, qmin, qmax)
        u7 = int8.pack_linear(q_w, s_w, b, mult, shift, kernel="avx2_u7")
        ref = int8.pack_linear(q_w, s_w, b, mult, shift, kernel="reference")
        assert u7.kernel() == "avx2_u7"
        assert torch.equal(int8.int8_linear(*args, u7, act), int8.int8_linear(*args, ref, act))


@needs_avx2
@pytest.mark.parametrize("cfg", [(2, 3, 8, 13, 12, 3, 1, 1, 1, 1),
                                 (1, 6, 10, 11, 9, 3, 2, 1, 1, 2),
                                 (1, 8, 16, 8, 8, 1, 1, 0, 1, 1),
                                 (1, 20, 24, 9, 10, 3, 1, 1, 1, 1)])
def test_avx2_u7_conv_equals_reference(cfg):
    n, c, o, h, w_, k, stride, padding, dilation, groups = cfg
    g = gen(32)
    q_w = randint(-127, 127, (o, c // groups, k, k), torch.int8, g)
    x = torch.randn(n, c, h, w_, generator=g)
    args = (x, torch.tensor([0.03]), torch.tensor([40]), 0, 127)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    u7 = int8.pack_conv2d(q_w, torch.rand(o, generator=g) + 0.1, kernel="avx2_u7", **kw)
    ref = int8.pack_conv2d(q_w, u7.weight_scale(), kernel="reference", **kw)
    assert torch.equal(int8.int8_conv2d(*args, u7, "silu"), int8.int8_conv2d(*args, ref, "silu"))


@needs_avx2
def test_avx2_u7_refuses_what_it_cannot_multiply_exactly():
    w = torch.ones(4, 8, dtype=torch.int8)
    packed = int8.pack_linear(w, torch.ones(4), kernel="avx2_u7")
    x = torch.randn(2, 8)
    for qmin, qmax in [(0, 255), (0, 128), (-64, 63), (-128, 127)]:
        with pytest.raises(RuntimeError, match=r"int8_linear: the packed weights use kernel "
                           r"'avx2_u7', which is exact only for activation ranges within "
                           r"\[0, 127\] \(7-bit unsigned\), got \[quant_min, quant_max\] = "
                           + rf"\[{qmin}, {qmax}\]"):
            int8.int8_linear(x, torch.tensor([0.1]), torch.tensor([0]), qmin, qmax, packed)
    with pytest.raises(RuntimeError, match=r"int8_matmul: the packed weights use kernel "
                       r"'avx2_u7', which is exact only for activation bytes in \[0, 127\]"):
        int8.int8_matmul(torch.full((2, 8), 200, dtype=torch.uint8), 0, packed)
    conv = int8.pack_conv2d(torch.ones(4, 2, 3, 3, dtype=torch.int8), torch.ones(4),
                            kernel="avx2_u7")
    with pytest.raises(RuntimeError, match=r"int8_conv2d: the packed weights use kernel 'avx2_u7'"):
        int8.int8_conv2d(torch.randn(1, 2, 5, 5), torch.tensor([0.1]), torch.tensor([0]), 0, 255,
                         conv)
    with pytest.raises(RuntimeError, match=r"int8_conv2d_acc: the packed weights use kernel "
                       r"'avx2_u7'"):
        int8.int8_conv2d_acc(torch.zeros(1, 2, 5, 5, dtype=torch.uint8), 0, conv)


@needs_avx2
def test_avx2_u7_saved_weights_repack_with_auto(tmp_path):
    """The kernel is a choice for one activation range, not a property of the weights: a saved
    pack loads with the machine's "auto" kernel and gives the same floats."""
    g = gen(33)
    _, s_w, q_w, b, _, _ = make_layer(9, 20, g)
    packed = int8.pack_linear(q_w, s_w, b, kernel="avx2_u7")

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.packed = packed

        def forward(self, x):
            return torch.ops.torchqat.int8_linear(x, torch.tensor([0.05]), torch.tensor([3]), 0,
                                                  127, self.packed, "relu")

    x = torch.randn(4, 20, generator=g)
    path = tmp_path / "u7.pt"
    torch.jit.save(torch.jit.script(Layer()), str(path))
    loaded = torch.jit.load(str(path))
    assert loaded.packed.kernel() == int8.available_kernels()[0]
    assert torch.equal(loaded(x), Layer()(x))
