"""The INT8 2-D convolution (CPU): int8_conv2d_acc against an exact reference (F.conv2d in
float64 on integers, exact below 2^53) for every kernel path (each GEMM kernel over im2col
tiles, the pointwise GEMM, the direct depthwise kernel) at the ends of the operand ranges;
int8_conv2d against a float64 evaluation of its epilogue and against the QAT computation
F.conv2d(fake_quantize(x), fake_quantize(W), b) -> folded BN -> activation, with the tolerances
derived in docs/numerics.md; PackedConv2d save / load through TorchScript, opcheck,
torch.compile / torch.export, and errors. The im2col and depthwise kernels of every instruction
set run in subprocesses (TORCHQAT_CPU_CAPABILITY), as test_int8_isa.py does for the linear path.
"""

import io
import os
import pickletools
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import torchqat
from torchqat import int8

ops = torch.ops.torchqat
GEMM_KERNELS = int8.available_kernels()
U = 2.0**-24  # unit roundoff of float32
TESTS = Path(__file__).resolve().parent


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randint(lo, hi, shape, dtype, g):
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64).to(dtype)


def reference_acc(q_x, z_x, q_w, stride, padding, dilation, groups):
    """sum over each window of (q_x - z_x) * q_w, padding 0: F.unfold (im2col) of q_x - z_x and a
    per-group product in float64, exact while every partial sum stays below 2^53. (F.conv2d in
    float64 computes the same integers, but its grouped path is ~1 s per call here.)"""
    n, c, h, w = q_x.shape
    o, cg, kh, kw = q_w.shape
    cols = F.unfold(q_x.double() - z_x, (kh, kw), dilation, padding, stride)  # [N, C kh kw, L]
    cols = cols.view(n, groups, cg * kh * kw, -1)
    wg = q_w.double().reshape(groups, o // groups, cg * kh * kw)
    y = torch.einsum("gok,ngkl->ngol", wg, cols).reshape(n, o, -1)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return y.view(n, o, ho, wo).round().to(torch.int64)


# (N, C, O, H, W, kernel, stride, padding, dilation, groups)
CONFIGS = [
    (2, 5, 7, 9, 11, 1, 1, 0, 1, 1),  # pointwise, C not a multiple of any vector width
    (1, 8, 16, 8, 8, 1, 1, 0, 1, 1),  # pointwise, C % 4 == 0: the GEMM reads the input itself
    (1, 8, 12, 9, 7, 1, 2, 0, 1, 1),  # 1x1 stride 2 (downsample)
    (2, 3, 8, 13, 12, 3, 1, 1, 1, 1),
    (1, 6, 10, 11, 9, 3, 2, 1, 1, 2),  # groups 2, stride 2
    (1, 4, 6, 10, 10, 5, 1, 3, 2, 1),  # dilation 2, padding 3
    (1, 3, 16, 23, 21, 7, 2, 3, 1, 1),  # the stem
    (3, 6, 4, 5, 6, 3, 1, 0, 1, 2),
    (1, 4, 5, 6, 7, (3, 1), (1, 2), (1, 0), (2, 1), 1),  # rectangular everything
    (2, 16, 16, 9, 9, 3, 1, 1, 1, 16),  # depthwise
    (1, 13, 13, 7, 8, 5, 2, 2, 1, 13),  # depthwise, odd channels, stride 2
    (1, 12, 12, 6, 6, 3, 1, 1, 2, 12),  # depthwise, dilation 2
    (1, 40, 40, 5, 5, 7, 1, 3, 1, 40),  # depthwise 7x7, channels past one register block
    (1, 20, 24, 9, 10, 3, 1, 1, 1, 1),  # appended (tests index rows above): im2col runs of 60, 40
]


def is_depthwise(cfg):
    _, c, o, *_, groups = cfg
    return groups == c == o


def config_id(cfg):
    return "N{}C{}O{}_{}x{}_k{}s{}p{}d{}g{}".format(*cfg).replace(" ", "")


def kernels_for(cfg):
    return (["depthwise"] if is_depthwise(cfg) else []) + GEMM_KERNELS


CASES = [(cfg, k) for cfg in CONFIGS for k in kernels_for(cfg)]


def make_input(cfg, signed, g):
    n, c, _, h, w, *_ = cfg
    lo, hi, dtype = (-128, 127, torch.int8) if signed else (0, 255, torch.uint8)
    return randint(lo, hi, (n, c, h, w), dtype, g), int(randint(lo, hi, (), torch.int64, g))


def pack(q_w, cfg, kernel, **kw):
    _, _, o, _, _, _, stride, padding, dilation, groups = cfg
    return int8.pack_conv2d(q_w, kw.pop("s_w", torch.ones(o)), stride=stride, padding=padding,
                            dilation=dilation, groups=groups, kernel=kernel, **kw)


def weight_shape(cfg):
    _, c, o, _, _, k, _, _, _, groups = cfg
    kh, kw = (k, k) if isinstance(k, int) else k
    return (o, c // groups, kh, kw)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("cfg,kernel", CASES, ids=[f"{config_id(c)}-{k}" for c, k in CASES])
def test_acc_exact(cfg, kernel, signed):
    g = gen(zlib.crc32(config_id(cfg).encode()))
    q_w = randint(-128, 127, weight_shape(cfg), torch.int8, g)
    packed = pack(q_w, cfg, kernel)
    assert packed.kernel() == kernel
    x, z = make_input(cfg, signed, g)
    acc = int8.int8_conv2d_acc(x, z, packed)
    _, _, _, _, _, _, stride, padding, dilation, groups = cfg
    ref = reference_acc(x, z, q_w, stride, padding, dilation, groups)
    assert acc.dtype == torch.int32 and acc.shape == ref.shape
    assert acc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(acc.to(torch.int64), ref)
    # Any memory format of the input gives the same integers.
    cl = int8.int8_conv2d_acc(x.contiguous(memory_format=torch.channels_last), z, packed)
    assert torch.equal(cl, acc)
    strided = torch.cat([x, x], dim=3)[..., : x.size(3)]  # neither contiguous nor channels_last
    assert torch.equal(int8.int8_conv2d_acc(strided, z, packed), acc)


@pytest.mark.parametrize("kernel", GEMM_KERNELS + ["depthwise"])
def test_acc_at_range_ends(kernel):
    """All 255 x all -127 (where AVX2's vpmaddubsw would saturate), 0 x 127 with z = 255 and
    the signed ends, with padding (its positions must contribute exactly 0) and deep K."""
    if kernel == "depthwise":
        c, groups, k = 70, 70, 5
        shape = (c, 1, k, k)
    else:
        c, groups, k = 520, 1, 3  # K = 4680, not a multiple of any vector width
        shape = (9, c, k, k)
    cases = [
        (torch.full((1, c, 5, 6), 255, dtype=torch.uint8), 0, -127),
        (torch.full((1, c, 5, 6), 255, dtype=torch.uint8), 0, 127),
        (torch.full((1, c, 5, 6), 0, dtype=torch.uint8), 255, 127),
        (torch.full((1, c, 5, 6), 0, dtype=torch.uint8), 255, -128),
        (torch.full((1, c, 5, 6), -128, dtype=torch.int8), 127, -128),
        (torch.full((1, c, 5, 6), 127, dtype=torch.int8), -128, -127),
    ]
    for x, z, wv in cases:
        q_w = torch.full(shape, wv, dtype=torch.int8)
        packed = int8.pack_conv2d(q_w, torch.ones(shape[0]), padding=k // 2, groups=groups,
                                  kernel=kernel)
        acc = int8.int8_conv2d_acc(x, z, packed)
        ref = reference_acc(x, z, q_w, 1, k // 2, 1, groups)
        assert torch.equal(acc.to(torch.int64), ref), (kernel, z, wv)
        # The centre sees the whole window: (x - z) * w * K.
        full = (int(x.flatten()[0]) - z) * wv * shape[1] * k * k
        assert int(acc[0, 0, 2, 2]) == full


def test_acc_deep_reduction():
    """K = 2048 * 3 * 3 = 18432 at the operand ends: sums near -6e8 stay exact in int32."""
    c = 2048
    x = torch.full((1, c, 3, 3), 255, dtype=torch.uint8)
    q_w = torch.full((2, c, 3, 3), -128, dtype=torch.int8)
    for kernel in [k for k in GEMM_KERNELS if k != "int_mm"]:
        acc = int8.int8_conv2d_acc(x, 0, int8.pack_conv2d(q_w, torch.ones(2), kernel=kernel))
        assert acc.flatten().tolist() == [-255 * 128 * c * 9] * 2


def test_acc_batch_and_tiles():
    """Enough output rows for many im2col tiles per thread, batch 3, odd sizes."""
    g = gen(5)
    q_w = randint(-127, 127, (33, 7, 3, 3), torch.int8, g)
    x = randint(0, 255, (3, 7, 31, 29), torch.uint8, g)
    for kernel in GEMM_KERNELS:
        packed = int8.pack_conv2d(q_w, torch.ones(33), stride=1, padding=1, kernel=kernel)
        acc = int8.int8_conv2d_acc(x, 17, packed)
        assert torch.equal(acc.to(torch.int64), reference_acc(x, 17, q_w, 1, 1, 1, 1)), kernel


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_every_instruction_set(isa):
    """The im2col and depthwise kernels of every instruction set (chosen once per process)."""
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    need = {"default": set(), "avx2": {"avx2", "fma"},
            "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}}[isa]
    if not need <= flags:
        pytest.skip(f"this CPU lacks {isa}")
    if ops.cpu_capability() == isa and "TORCHQAT_CPU_CAPABILITY" not in os.environ:
        pytest.skip(f"{isa} is this process's own choice; the other tests ran it")
    env = dict(os.environ, TORCHQAT_CPU_CAPABILITY=isa)
    env.pop("TORCHQAT_INT8_KERNEL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(TESTS / "test_int8_conv.py"), "-q", "-x",
         "-p", "no:cacheprovider", "-k",
         "(acc_exact and (depthwise or avx2 or vnni_emulated)) or range_ends or float64"],
        env=env, cwd=TESTS.parent, timeout=600, capture_output=True, text=True)
    assert result.returncode == 0, f"TORCHQAT_CPU_CAPABILITY={isa}:\n{result.stdout[-6000:]}"
    assert " passed" in result.stdout


def test_auto_kernel_choice(monkeypatch):
    monkeypatch.delenv("TORCHQAT_INT8_KERNEL", raising=False)
    dw = torch.ones(8, 1, 3, 3, dtype=torch.int8)
    assert int8.pack_conv2d(dw, torch.ones(8), groups=8).kernel() == "depthwise"
    # A depthwise multiplier > 1 (two outputs per input channel) is a grouped GEMM.
    assert int8.pack_conv2d(torch.ones(16, 1, 3, 3, dtype=torch.int8), torch.ones(16),
                            groups=8).kernel() == GEMM_KERNELS[0]
    w = torch.ones(4, 3, 3, 3, dtype=torch.int8)
    assert int8.pack_conv2d(w, torch.ones(4)).kernel() == GEMM_KERNELS[0]
    # Where the CPU runs oneDNN's brgemm (AMX-INT8), "auto" takes it for convolutions larger than
    # 1 x 1 with a depth of 256 or more, where it was measured faster (int8_kernels.h).
    deep = int8.pack_conv2d(torch.ones(8, 32, 3, 3, dtype=torch.int8), torch.ones(8))
    assert deep.kernel() == ("brgemm" if "brgemm" in GEMM_KERNELS else GEMM_KERNELS[0])
    for shallow in (torch.ones(8, 28, 3, 3, dtype=torch.int8),     # K = 252
                    torch.ones(8, 512, 1, 1, dtype=torch.int8),    # 1 x 1
                    torch.ones(8, 3, 7, 7, dtype=torch.int8)):     # K = 147
        assert int8.pack_conv2d(shallow, torch.ones(8)).kernel() == GEMM_KERNELS[0]
    assert int8.pack_linear(torch.ones(4, 4096, dtype=torch.int8),
                            torch.ones(4)).kernel() == GEMM_KERNELS[0]
    monkeypatch.setenv("TORCHQAT_INT8_KERNEL", "reference")
    assert int8.pack_conv2d(w, torch.ones(4)).kernel() == "reference"
    assert int8.pack_conv2d(dw, torch.ones(8), groups=8).kernel() == "depthwise"


# ---------------------------------------------------------------------------------------------
# int8_conv2d: the epilogue and the QAT computation


def make_conv(cfg, g, bias=True, bn=False):
    """Float weights, their per-channel symmetric int8 quantization and the folded-BN params."""
    o = weight_shape(cfg)[0]
    w = torch.randn(weight_shape(cfg), generator=g) * 0.1
    s_w = w.abs().amax(dim=(1, 2, 3)) / 127
    q_w = int8.quantize(w, s_w, torch.zeros(o, dtype=torch.int32), -127, 127, 0)
    b = torch.randn(o, generator=g) if bias else None
    mult = shift = None
    if bn:
        mult = torch.rand(o, generator=g) + 0.5
        shift = torch.randn(o, generator=g)
    return w, s_w, q_w, b, mult, shift


def channel(v, like):
    return v.double().view(1, -1, 1, 1).expand_as(like)


FLOAT_CONFIGS = [CONFIGS[0], CONFIGS[1], CONFIGS[4], CONFIGS[6], CONFIGS[9], CONFIGS[10]]


@pytest.mark.parametrize("cfg", FLOAT_CONFIGS, ids=[config_id(c) for c in FLOAT_CONFIGS])
@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127)])
@pytest.mark.parametrize("bias,bn", [(True, False), (False, False), (True, True)])
def test_epilogue_vs_float64(cfg, qrange, bias, bn):
    """y within u (4 |m| P + 2 |m| |b| + |shift|) of the exact epilogue of the exact integers
    (P = |acc s_x s_w|): the bound int8_linear's epilogue meets (docs/numerics.md)."""
    qmin, qmax = qrange
    g = gen(21)
    _, s_w, q_w, b, mult, shift = make_conv(cfg, g, bias, bn)
    n, c, _, h, w_, _, stride, padding, dilation, groups = cfg
    x = torch.randn(n, c, h, w_, generator=g) * 2
    s_x, z_x = torch.tensor([0.013]), torch.tensor([(qmin + qmax) // 2 + 7])
    packed = pack(q_w, cfg, "auto", s_w=s_w, bias=b, out_multiplier=mult, out_shift=shift)
    y = int8.int8_conv2d(x, s_x, z_x, qmin, qmax, packed)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    q_x = int8.quantize(x, s_x, z_x, qmin, qmax)
    acc = reference_acc(q_x, int(z_x), q_w, stride, padding, dilation, groups).double()
    p = acc * s_x.double() * channel(s_w, acc)  # s_x * s_w exact in float64
    exact = p + (channel(b, acc) if b is not None else 0)
    m = channel(mult, acc) if bn else torch.ones_like(acc)
    sh = channel(shift, acc) if bn else torch.zeros_like(acc)
    exact = exact * m + sh
    bb = channel(b, acc).abs() if b is not None else 0
    tol = U * (4 * m.abs() * p.abs() + 2 * m.abs() * bb + sh.abs()) * (1 + 1e-6) + 1e-30
    assert ((y.double() - exact).abs() <= tol).all()


@pytest.mark.parametrize("kernel", GEMM_KERNELS)
def test_identical_on_every_kernel_and_activations(kernel):
    """Exact accumulators and one fma-based epilogue: every kernel gives the same floats."""
    g = gen(22)
    for cfg in [CONFIGS[3], CONFIGS[9]]:
        _, s_w, q_w, b, mult, shift = make_conv(cfg, g, bias=True, bn=True)
        n, c, _, h, w_, *_ = cfg
        x = torch.randn(n, c, h, w_, generator=g)
        s_x, z_x = torch.tensor([0.02]), torch.tensor([3])
        kw = dict(s_w=s_w, bias=b, out_multiplier=mult, out_shift=shift)
        ref_packed = pack(q_w, cfg, "reference", **kw)
        ref = int8.int8_conv2d(x, s_x, z_x, 0, 255, ref_packed)
        packed = pack(q_w, cfg, kernel, **kw)
        assert torch.equal(int8.int8_conv2d(x, s_x, z_x, 0, 255, packed), ref)
        assert torch.equal(int8.int8_conv2d(x, s_x, z_x, 0, 255, packed, "relu"), F.relu(ref))
        # The fused SiLU (core::silu) is the same floats on every kernel, and within a few ulp
        # of ATen's (test_int8_ops.py: test_silu_epilogue_against_aten_over_its_range).
        y_silu = int8.int8_conv2d(x, s_x, z_x, 0, 255, packed, "silu")
        assert torch.equal(y_silu, int8.int8_conv2d(x, s_x, z_x, 0, 255, ref_packed, "silu"))
        assert torch.allclose(y_silu, F.silu(ref), rtol=8 * U, atol=1e-30)
        if is_depthwise(cfg):
            dw = pack(q_w, cfg, "depthwise", **kw)
            assert torch.equal(int8.int8_conv2d(x, s_x, z_x, 0, 255, dw), ref)


def qat_reference(x, s_x, z_x, qmin, qmax, w, s_w, b, mult, shift, cfg, activation):
    """The QAT layer in float32: conv(fq(x), fq(W), b), then the BN affine, then the activation;
    also S = conv(|fq(x)|, |fq(W)|) + |b| in float64 (for the tolerance)."""
    _, _, o, _, _, _, stride, padding, dilation, groups = cfg
    fq_x = torchqat.fake_quantize(x.float(), s_x, z_x, qmin, qmax)
    fq_w = torchqat.fake_quantize(w, s_w, torch.zeros(o, dtype=torch.int32), -127, 127, 0)
    y = F.conv2d(fq_x, fq_w, b, stride, padding, dilation, groups)
    if mult is not None:
        y = y * mult.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    y = {"none": lambda t: t, "relu": F.relu, "silu": F.silu}[activation](y)
    s = F.conv2d(fq_x.double().abs(), fq_w.double().abs(), None, stride, padding, dilation,
                 groups)
    if b is not None:
        s = s + channel(b, s).abs()
    return y, s


def qat_tolerance(k, s, mult, shift, activation, y_ref):
    """|y_int8 - y_qat| (docs/numerics.md): the QAT convolution errs by (gamma_{K+2} + 4u) S, its
    BN affine (multiply, add) by u (2 |m| S + |shift|), the INT8 epilogue by u (4 |m| S + 2 |m|
    S + |shift|); relu is 1-Lipschitz and exact; silu is at most 1.1-Lipschitz and each side's
    silu rounds within a few u of |y|."""
    gamma = (k + 2) * U / (1 - (k + 2) * U)
    m = channel(mult, s).abs() if mult is not None else torch.ones_like(s)
    sh = channel(shift, s).abs() if shift is not None else torch.zeros_like(s)
    tol = (m * (gamma + 12 * U) * s + 2 * U * sh) * (1 + 1e-6) + 1e-30
    if activation == "silu":
        tol = 1.1 * tol + 16 * U * y_ref.double().abs()
    return tol


QAT_CONFIGS = [CONFIGS[0], CONFIGS[3], CONFIGS[4], CONFIGS[5], CONFIGS[6], CONFIGS[8],
               CONFIGS[9], CONFIGS[10], (1, 64, 32, 10, 10, 3, 1, 1, 1, 1)]


@pytest.mark.parametrize("cfg", QAT_CONFIGS, ids=[config_id(c) for c in QAT_CONFIGS])
@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127)])
@pytest.mark.parametrize("activation,bn", [("none", False), ("relu", True), ("silu", True)])
def test_matches_qat_conv(cfg, qrange, activation, bn):
    qmin, qmax = qrange
    g = gen(23)
    w, s_w, q_w, b, mult, shift = make_conv(cfg, g, bias=True, bn=bn)
    n, c, _, h, w_, *_ = cfg
    x = torch.randn(n, c, h, w_, generator=g) * 3  # some values clamp
    s_x, z_x = torch.tensor([0.02]), torch.tensor([(qmin + qmax) // 2 + 5])
    packed = pack(q_w, cfg, "auto", s_w=s_w, bias=b, out_multiplier=mult, out_shift=shift)
    y = int8.int8_conv2d(x, s_x, z_x, qmin, qmax, packed, activation)
    y_qat, s = qat_reference(x, s_x, z_x, qmin, qmax, w, s_w, b, mult, shift, cfg, activation)
    k = q_w[0].numel()
    tol = qat_tolerance(k, s, mult, shift, activation, y_qat)
    assert ((y.double() - y_qat.double()).abs() <= tol).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_and_memory_formats(dtype):
    g = gen(24)
    cfg = CONFIGS[3]
    w, s_w, q_w, b, _, _ = make_conv(cfg, g)
    n, c, _, h, w_, *_ = cfg
    x = (torch.randn(n, c, h, w_, generator=g) * 2).to(dtype)
    s_x, z_x = torch.tensor([0.03]), torch.tensor([-4])
    packed = pack(q_w, cfg, "auto", s_w=s_w, bias=b)
    y = int8.int8_conv2d(x, s_x, z_x, -128, 127, packed)
    # float16 / bfloat16 convert to float32 exactly: the same as a float32 input.
    assert torch.equal(y, int8.int8_conv2d(x.float(), s_x, z_x, -128, 127, packed))
    assert torch.equal(y, int8.int8_conv2d(x.contiguous(memory_format=torch.channels_last), s_x,
                                           z_x, -128, 127, packed))
    y_qat, s = qat_reference(x, s_x, z_x, -128, 127, w, s_w, b, None, None, cfg, "none")
    assert ((y.double() - y_qat.double()).abs() <= qat_tolerance(q_w[0].numel(), s, None, None,
                                                                 "none", y_qat)).all()


def test_empty_batch():
    packed = int8.pack_conv2d(torch.ones(5, 3, 3, 3, dtype=torch.int8), torch.ones(5), padding=1)
    y = int8.int8_conv2d(torch.empty(0, 3, 8, 7), torch.tensor([0.1]), torch.tensor([0]), 0, 255,
                         packed)
    assert y.shape == (0, 5, 8, 7) and y.dtype == torch.float32
    acc = int8.int8_conv2d_acc(torch.empty(0, 3, 8, 7, dtype=torch.uint8), 0, packed)
    assert acc.shape == (0, 5, 8, 7) and acc.dtype == torch.int32


# ---------------------------------------------------------------------------------------------
# PackedConv2d: read back, TorchScript save / load, format version


class Int8ConvModule(torch.nn.Module):
    def __init__(self, packed):
        super().__init__()
        self.packed = packed
        self.register_buffer("s_x", torch.tensor([0.05]))
        self.register_buffer("z_x", torch.tensor([128]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchqat.int8_conv2d(x, self.s_x, self.z_x, 0, 255, self.packed, "relu")


def test_packed_conv2d_reads_back():
    g = gen(31)
    cfg = CONFIGS[4]
    _, s_w, q_w, b, mult, shift = make_conv(cfg, g, bias=True, bn=True)
    packed = pack(q_w, cfg, "auto", s_w=s_w, bias=b, out_multiplier=mult, out_shift=shift)
    assert torch.equal(packed.weight(), q_w) and torch.equal(packed.weight_scale(), s_w)
    assert torch.equal(packed.bias(), b)
    assert torch.equal(packed.out_multiplier(), mult) and torch.equal(packed.out_shift(), shift)
    assert packed.stride() == [2, 2] and packed.padding() == [1, 1]
    assert packed.dilation() == [1, 1] and packed.groups() == 2
    assert packed.in_channels() == 6 and packed.out_channels() == 10
    assert packed.kernel_size() == [3, 3] and packed.kernel() == GEMM_KERNELS[0]
    bare = int8.pack_conv2d(q_w, s_w, groups=2)
    assert bare.bias() is None and bare.out_multiplier() is None and bare.out_shift() is None
    q_w2 = q_w.clone()
    p2 = int8.pack_conv2d(q_w2, s_w, groups=2)
    q_w2.fill_(0)  # the packed object owns a copy
    assert torch.equal(p2.weight(), q_w)


def saved_module(packed):
    m = torch.jit.script(Int8ConvModule(packed))
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    return m, buf.getvalue()


@pytest.mark.parametrize("kernel", ["reference", "depthwise"])
def test_packed_conv2d_torchscript_save_load(kernel):
    g = gen(32)
    cfg = CONFIGS[9] if kernel == "depthwise" else CONFIGS[5]
    _, s_w, q_w, b, mult, shift = make_conv(cfg, g, bias=True, bn=True)
    packed = pack(q_w, cfg, kernel, s_w=s_w, bias=b, out_multiplier=mult, out_shift=shift)
    m, data = saved_module(packed)
    loaded = torch.jit.load(io.BytesIO(data))
    n, c, _, h, w_, *_ = cfg
    x = torch.randn(n, c, h, w_, generator=g)
    expected = Int8ConvModule(packed)(x)
    assert torch.equal(m(x), expected)
    assert torch.equal(loaded(x), expected)
    # Loading re-packs for this machine ("auto") from the unpacked weights and parameters.
    lp = loaded.packed
    assert lp.kernel() == ("depthwise" if kernel == "depthwise" else GEMM_KERNELS[0])
    assert torch.equal(lp.weight(), q_w) and torch.equal(lp.out_shift(), shift)
    assert (lp.stride(), lp.padding(), lp.dilation(), lp.groups()) == (
        packed.stride(), packed.padding(), packed.dilation(), packed.groups())


def with_version(data: bytes, version: int) -> bytes:
    """The saved archive with PackedConv2d's format version replaced: in data.pkl the object is
    GLOBAL '__torch__.torch.classes.torchqat PackedConv2d', NEWOBJ, then its state tuple, whose
    first item, the version, is the next small integer (BININT1)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            payload = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                seen_class, edited = False, False
                for op, arg, pos in pickletools.genops(payload):
                    if op.name == "GLOBAL" and arg.endswith("torchqat PackedConv2d"):
                        seen_class = True
                    elif seen_class and op.name == "BININT1":
                        assert arg == 1 and 0 <= version < 256
                        payload = payload[: pos + 1] + bytes([version]) + payload[pos + 2 :]
                        edited = True
                        break
                assert edited, "no PackedConv2d version found in data.pkl"
            dst.writestr(info, payload)
    return out.getvalue()


def test_packed_conv2d_unknown_version_raises():
    g = gen(33)
    _, s_w, q_w, b, _, _ = make_conv(CONFIGS[3], g)
    _, data = saved_module(pack(q_w, CONFIGS[3], "auto", s_w=s_w, bias=b))
    torch.jit.load(io.BytesIO(with_version(data, 1)))  # the edit itself keeps a valid file
    with pytest.raises(RuntimeError, match=r"PackedConv2d: cannot load packed weights of format "
                                           r"version 9; this build of torchqat reads version 1"):
        torch.jit.load(io.BytesIO(with_version(data, 9)))


# ---------------------------------------------------------------------------------------------
# opcheck, torch.compile, torch.export


def test_opcheck():
    """As for int8_linear: opcheck's schema and AOT-dispatch utilities cannot compare a
    TorchScript class argument, so the fake kernels and the autograd registration are checked
    here, and tracing by the test below."""
    g = gen(40)
    utils = ("test_autograd_registration", "test_faketensor")
    for cfg in [CONFIGS[8], CONFIGS[9]]:  # rectangular parameters; depthwise
        _, s_w, q_w, b, _, _ = make_conv(cfg, g)
        packed = pack(q_w, cfg, "auto", s_w=s_w, bias=b)
        n, c, _, h, w_, *_ = cfg
        x = torch.randn(n, c, h, w_, generator=g)
        torch.library.opcheck(ops.int8_conv2d, (x, torch.tensor([0.1]), torch.tensor([3]), 0,
                                                255, packed, "relu"), test_utils=utils)
        a = randint(-128, 127, (n, c, h, w_), torch.int8, g)
        torch.library.opcheck(ops.int8_conv2d_acc, (a, -3, packed), test_utils=utils)


class CompiledConv(torch.nn.Module):
    def __init__(self, packed):
        super().__init__()
        self.packed = packed
        self.register_buffer("s_x", torch.tensor([0.05]))
        self.register_buffer("z_x", torch.tensor([-3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.torchqat.int8_conv2d(torch.relu(x) - 0.5, self.s_x, self.z_x, -128, 127,
                                           self.packed, "silu")
        return y * 2


def test_torch_compile_and_export():
    g = gen(41)
    cfg = CONFIGS[4]
    _, s_w, q_w, b, mult, shift = make_conv(cfg, g, bias=True, bn=True)
    m = CompiledConv(pack(q_w, cfg, "auto", s_w=s_w, bias=b, out_multiplier=mult,
                          out_shift=shift))
    x = torch.randn(2, 6, 11, 9, generator=g)
    expected = m(x)
    got = torch.compile(m, backend="eager", fullgraph=True)(x)
    assert torch.equal(got, expected)
    ep = torch.export.export(m, (x,), strict=False)
    assert any(n.target is torch.ops.torchqat.int8_conv2d.default for n in ep.graph.nodes)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    assert torch.equal(torch.export.load(buf).module()(x), expected)


# ---------------------------------------------------------------------------------------------
# Errors name the operator, the argument and the value


def test_pack_conv2d_errors():
    w, s = torch.ones(4, 3, 3, 3, dtype=torch.int8), torch.ones(4)
    with pytest.raises(RuntimeError, match="PackedConv2d: weight must be int8, got Float"):
        int8.pack_conv2d(w.float(), s)
    with pytest.raises(RuntimeError, match=r"PackedConv2d: weight must have shape \[out_channels"):
        int8.pack_conv2d(w[0], s)
    with pytest.raises(RuntimeError, match=r"PackedConv2d: weight_scale must have shape \[4\]"):
        int8.pack_conv2d(w, torch.ones(3))
    with pytest.raises(RuntimeError, match="PackedConv2d: weight_scale must be positive"):
        int8.pack_conv2d(w, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(RuntimeError, match=r"PackedConv2d: bias must have shape \[4\]"):
        int8.pack_conv2d(w, s, torch.ones(5))
    with pytest.raises(RuntimeError, match="PackedConv2d: out_multiplier and out_shift must be"):
        int8.pack_conv2d(w, s, None, None, torch.ones(4))
    with pytest.raises(RuntimeError, match=r"PackedConv2d: stride must be positive, got \[0, 1\]"):
        int8.pack_conv2d(w, s, stride=(0, 1))
    with pytest.raises(RuntimeError, match=r"PackedConv2d: padding must be non-negative, got "
                                           r"\[-1, -1\]"):
        int8.pack_conv2d(w, s, padding=-1)
    with pytest.raises(RuntimeError, match=r"PackedConv2d: dilation must be positive"):
        int8.pack_conv2d(w, s, dilation=0)
    with pytest.raises(RuntimeError, match=r"PackedConv2d: stride must have 2 elements"):
        torch.classes.torchqat.PackedConv2d(w, s, None, None, None, [1, 1, 1], [0, 0], [1, 1], 1,
                                            "auto")
    with pytest.raises(ValueError, match=r"pack_conv2d: padding must be an int or 2 ints"):
        int8.pack_conv2d(w, s, padding=(1, 1, 1))
    with pytest.raises(RuntimeError, match=r"PackedConv2d: out_channels \(weight.size\(0\) = 4\) "
                                           r"must be divisible by groups = 3"):
        int8.pack_conv2d(w, s, groups=3)
    with pytest.raises(RuntimeError, match="PackedConv2d: groups must be positive, got 0"):
        int8.pack_conv2d(w, s, groups=0)
    with pytest.raises(RuntimeError, match="PackedConv2d: in_channels / groups \\* kernel_h \\* "
                                           "kernel_w must be at most 65793"):
        int8.pack_conv2d(torch.ones(1, 8124, 3, 3, dtype=torch.int8), torch.ones(1))
    with pytest.raises(RuntimeError, match="PackedConv2d: kernel 'depthwise' needs groups"):
        int8.pack_conv2d(w, s, kernel="depthwise")
    with pytest.raises(RuntimeError, match="int8 kernel must be 'auto', "):
        int8.pack_conv2d(w, s, kernel="fast")
    with pytest.raises(RuntimeError, match="PackedConv2d: weight must be a CPU tensor"):
        int8.pack_conv2d(w.to("meta"), s)


def test_int8_conv2d_errors():
    packed = int8.pack_conv2d(torch.ones(4, 3, 3, 3, dtype=torch.int8), torch.ones(4))
    x, s, z = torch.randn(2, 3, 8, 8), torch.tensor([0.1]), torch.tensor([0])
    with pytest.raises(RuntimeError, match="int8_conv2d: input must be float32, float16 or "
                                           "bfloat16, got Double"):
        int8.int8_conv2d(x.double(), s, z, -128, 127, packed)
    with pytest.raises(RuntimeError, match=r"int8_conv2d: input must have shape \[N, C, H, W\], "
                                           r"got shape \[3, 8, 8\]"):
        int8.int8_conv2d(x[0], s, z, -128, 127, packed)
    with pytest.raises(RuntimeError, match=r"int8_conv2d: input must have 3 channels \(in_channels"
                                           r" of packed\), got shape \[2, 2, 8, 8\]"):
        int8.int8_conv2d(x[:, :2], s, z, -128, 127, packed)
    with pytest.raises(RuntimeError, match=r"int8_conv2d: the output would be empty: input of "
                                           r"height x width 2 x 8"):
        int8.int8_conv2d(x[:, :, :2], s, z, -128, 127, packed)
    with pytest.raises(RuntimeError, match=r"int8_conv2d: \[quant_min, quant_max\] must lie "
                                           r"within \[0, 255\] or \[-128, 127\]"):
        int8.int8_conv2d(x, s, z, -1000, 1000, packed)
    with pytest.raises(RuntimeError, match="int8_conv2d: quant_min must be less than quant_max"):
        int8.int8_conv2d(x, s, z, 5, 5, packed)
    with pytest.raises(RuntimeError, match="int8_conv2d: input_scale and input_zero_point must "
                                           "hold one element each"):
        int8.int8_conv2d(x, torch.ones(3), torch.zeros(3, dtype=torch.int32), -128, 127, packed)
    with pytest.raises(RuntimeError, match="int8_conv2d: input_scale must be positive and finite, "
                                           "got -1"):
        int8.int8_conv2d(x, -torch.ones(1), z, -128, 127, packed)
    with pytest.raises(RuntimeError, match=r"int8_conv2d: input_zero_point must lie in "
                                           r"\[quant_min, quant_max\] = \[0, 255\], got 300"):
        int8.int8_conv2d(x, s, torch.tensor([300]), 0, 255, packed)
    with pytest.raises(RuntimeError, match="int8_conv2d: activation must be 'none', 'relu' or "
                                           "'silu', got 'gelu'"):
        int8.int8_conv2d(x, s, z, -128, 127, packed, "gelu")
    with pytest.raises(RuntimeError, match="int8_conv2d_acc: input must be uint8 or int8, got "
                                           "Float"):
        int8.int8_conv2d_acc(x, 0, packed)
    with pytest.raises(RuntimeError, match=r"int8_conv2d_acc: input_zero_point must lie in "
                                           r"\[0, 255\] for Byte input, got -1"):
        int8.int8_conv2d_acc(x.to(torch.uint8), -1, packed)
    with pytest.raises(RuntimeError, match=r"int8_conv2d_acc: input must have 3 channels"):
        int8.int8_conv2d_acc(torch.zeros(1, 4, 5, 5, dtype=torch.int8), 0, packed)
    # Meta tensors reach the fake kernel (shape inference).
    y = int8.int8_conv2d(x.to("meta"), s.to("meta"), z.to("meta"), -128, 127, packed)
    assert y.device.type == "meta" and y.shape == (2, 4, 6, 6)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_torch_compile_inductor_function():
    """A plain function (the packed object a global of it) through the default inductor backend;
    the result keeps the operator's channels_last layout."""
    g = gen(42)
    cfg = CONFIGS[3]
    _, s_w, q_w, b, _, _ = make_conv(cfg, g)
    packed = pack(q_w, cfg, "auto", s_w=s_w, bias=b)
    s_x, z_x = torch.tensor([0.05]), torch.tensor([3])

    def f(x):
        return int8.int8_conv2d(torch.relu(x), s_x, z_x, 0, 255, packed, "silu") + 1

    x = torch.randn(2, 3, 13, 12, generator=g)
    expected = f(x)
    got = torch.compile(f, fullgraph=True)(x)
    assert torch.equal(got, expected) and got.stride() == expected.stride()


def test_packed_objects_compare_by_identity():
    """`==` on a packed object is identity, for any right-hand side: torch.export's
    lift_constants_pass compares packed objects with the int hashes it keys them by, and raised
    NotImplementedError where a class had no __eq__ (packed_common.h says when)."""
    conv = int8.pack_conv2d(torch.ones(4, 3, 3, 3, dtype=torch.int8), torch.ones(4))
    twin = int8.pack_conv2d(torch.ones(4, 3, 3, 3, dtype=torch.int8), torch.ones(4))
    lin = int8.pack_linear(torch.ones(4, 3, dtype=torch.int8), torch.ones(4))
    assert conv == conv and lin == lin
    assert not conv == twin and conv != twin
    assert not conv == lin and not lin == conv
    assert not conv == hash(conv) and not lin == 3 and not conv == "x"
