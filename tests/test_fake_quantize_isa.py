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
