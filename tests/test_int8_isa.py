"""The element-wise INT8 kernels (quantize, dequantize, the epilogue around torch._int_mm) of
every instruction set on this machine: they are chosen once per process, so each build runs the
quantize / dequantize / int_mm tests of test_int8_ops.py in a subprocess with
TORCHQAT_CPU_CAPABILITY forcing it. (The GEMM kernels need no subprocess: every PackedLinear
names its kernel, and test_int8_ops.py runs them all.) The parent process runs the automatic
choice."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

ISA_FLAGS = {
    "default": set(),
    "avx2": {"avx2", "fma", "f16c", "bmi2"},
    "avx512": {"avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq",
               "avx512_vnni"},
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


@pytest.mark.parametrize("isa", ["default", "avx512"])
def test_int8_elementwise_isa(isa):
    if not sys.platform.startswith("linux") or not ISA_FLAGS[isa] <= cpu_flags():
        pytest.skip(f"this CPU lacks {isa} (with VNNI)")
    env = dict(os.environ, TORCHQAT_CPU_CAPABILITY=isa)
    env.pop("TORCHQAT_INT8_KERNEL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(TESTS / "test_int8_ops.py"), "-q", "-x",
         "-p", "no:cacheprovider", "-k", "quantize or int_mm or dequantize"],
        env=env, cwd=TESTS.parent, timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, f"TORCHQAT_CPU_CAPABILITY={isa}:\n{result.stdout[-6000:]}"
    assert " passed" in result.stdout
