"""Every CPU kernel build (default, AVX2, AVX-512) on this machine: the kernel set is chosen once
per process, so each instruction set runs the forward and backward numerics tests of
test_fake_quantize.py (PyTorch oracle and reference) and test_silu_fusion.py (the fused LSQ + SiLU
backward) in a subprocess with
TORCHQAT_CPU_CAPABILITY forcing it. The parent process runs the automatic choice."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

ISA_FLAGS = {
    "default": set(),
    "avx2": {"avx2", "fma", "f16c", "bmi2"},
    "avx512": {"avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
}


def cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def run_with_isa(isa: str, argv, timeout=300):
    env = dict(os.environ, TORCHQAT_CPU_CAPABILITY=isa)
    return subprocess.run([sys.executable, *argv], env=env, cwd=TESTS.parent, timeout=timeout,
                          capture_output=True, text=True)


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_isa_numerics(isa):
    if not sys.platform.startswith("linux") or not ISA_FLAGS[isa] <= cpu_flags():
        pytest.skip(f"this CPU lacks {isa}")
    # CPU only (-m "not cuda"); the large cases are covered by the parent process.
    result = run_with_isa(isa, ["-m", "pytest", str(TESTS / "test_fake_quantize.py"),
                                str(TESTS / "test_silu_fusion.py"), "-q", "-x",
                                "-m", "not cuda", "-k", "not large", "-p", "no:cacheprovider"])
    assert result.returncode == 0, f"TORCHQAT_CPU_CAPABILITY={isa}:\n{result.stdout[-6000:]}"
    assert " passed" in result.stdout


CALL_ONE_OP = (
    "import torch, torchqat; "
    "torch.ops.torchqat.fake_quantize(torch.ones(3), torch.ones(1), torch.zeros(1), 0, 255)"
)


def test_isa_request_beyond_cpu_is_an_error():
    flags = cpu_flags()
    missing = [isa for isa in ("avx512", "avx2") if not ISA_FLAGS[isa] <= flags]
    if not sys.platform.startswith("linux") or not missing:
        pytest.skip("this CPU has every instruction set")
    result = run_with_isa(missing[0], ["-c", CALL_ONE_OP])
    assert result.returncode != 0
    assert f"TORCHQAT_CPU_CAPABILITY={missing[0]}, but this CPU lacks" in result.stderr


def test_isa_unknown_value_is_an_error():
    result = run_with_isa("sse9", ["-c", CALL_ONE_OP])
    assert result.returncode != 0
    assert "TORCHQAT_CPU_CAPABILITY must be default, avx2 or avx512, got 'sse9'" in result.stderr


# Every per-element output of the CPU kernels, computed under one instruction set and saved. The
# inputs hold what separates kernel implementations: round-half-even ties, values on and past the
# range's ends, signed zeros, infinities and NaN (in x and in the incoming gradient), odd sizes
# (vector tails) and both layouts (per tensor; per channel along dim 0 and along a channels-last
# dim 1).
PER_ELEMENT_OUTPUTS = r"""
import sys, torch, torchqat
ops = torch.ops.torchqat
g = torch.Generator().manual_seed(0)

def special(n):
    x = torch.randn(n, generator=g) * 3
    x[: n // 4] = (torch.round(x[: n // 4] * 4) + 0.5) / 4  # ties at the 0.25 scale
    x[n // 4 : n // 4 + 8] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"),
                                           float("nan"), 1e30, -1e30, 2.5])
    return x

out = {}
cases = {
    "tensor": (special(1037).view(1037), None, torch.tensor([0.25]), torch.tensor([3.0])),
    "channel0": (special(7 * 45).view(7, 5, 9), 0, torch.rand(7, generator=g) + 0.1,
                 torch.arange(7.0) - 3),
    "channels_last": (special(2 * 19 * 6 * 5).view(2, 19, 6, 5)
                      .contiguous(memory_format=torch.channels_last), 1,
                      torch.rand(19, generator=g) + 0.1, torch.arange(19.0) - 9),
}
for name, (x, axis, s, z) in cases.items():
    qmin, qmax = -128, 127
    dy = torch.randn(x.shape, generator=g)
    dy.view(-1)[:4] = torch.tensor([float("nan"), -0.0, 0.0, float("inf")])
    dy = dy.to(memory_format=torch.channels_last) if x.dim() == 4 else dy
    out[name + "/forward"] = ops.fake_quantize_lsq(x, s, z, qmin, qmax, axis, 1.0)
    out[name + "/fake_quantize"] = ops.fake_quantize(x, s, z.round().int(), qmin, qmax, axis)
    out[name + "/ste"] = ops.fake_quantize_backward(dy, x, s, z.round().int(), qmin, qmax, axis)
    dx, _, _ = ops.fake_quantize_lsq_backward(dy, x, s, z, qmin, qmax, axis, 1.0)
    out[name + "/lsq_dx"] = dx
    inplace = dy.clone()
    ops.fake_quantize_lsq_backward_(inplace, x, s, z, qmin, qmax, axis, 1.0)
    out[name + "/lsq_dx_inplace"] = inplace
    pre = x.clone()
    silu = torch.nn.functional.silu(pre)
    dpre, _, _ = ops.fake_quantize_lsq_after_silu_backward(dy, silu, pre, s, z, qmin, qmax, axis,
                                                           1.0)
    out[name + "/after_silu_dpre"] = dpre
torch.save({k: v.contiguous() for k, v in out.items()}, sys.argv[1])
"""


def test_isa_per_element_outputs_are_the_same_bits(tmp_path):
    """The kernel builds differ in vector width and in how comparisons are formed (at::vec masks
    on AVX2, mask registers in the AVX-512 overloads): every per-element output must be the same
    float, bit for bit (NaN: the same positions; any payload)."""
    flags = cpu_flags()
    isas = [isa for isa in ("default", "avx2", "avx512") if ISA_FLAGS[isa] <= flags]
    if not sys.platform.startswith("linux") or len(isas) < 2:
        pytest.skip("fewer than two instruction sets on this CPU")
    import torch

    results = {}
    for isa in isas:
        path = tmp_path / f"{isa}.pt"
        r = run_with_isa(isa, ["-c", PER_ELEMENT_OUTPUTS, str(path)])
        assert r.returncode == 0, f"{isa}:\n{r.stderr[-4000:]}"
        results[isa] = torch.load(path)
    base = results["default"]
    assert len(base) == 18  # 3 layouts x 6 outputs
    for isa in isas[1:]:
        for key, ref in base.items():
            got = results[isa][key]
            nan = torch.isnan(ref)
            assert torch.equal(nan, torch.isnan(got)), f"{isa} {key}: NaN positions differ"
            bits_ref = ref[~nan].view(torch.int32)
            bits_got = got[~nan].view(torch.int32)
            mismatch = (bits_ref != bits_got).nonzero()
            assert mismatch.numel() == 0, (
                f"{isa} {key}: {mismatch.numel()} elements differ from the default build, first "
                f"{ref[~nan][mismatch[0]].item()!r} vs {got[~nan][mismatch[0]].item()!r}")
