"""Runs code in a fresh interpreter. A failed device-side check (a CUDA kernel's assertion, how
torchqat reports bad quantization parameters of CUDA tensors without a host synchronisation)
cannot be caught by a test and leaves the process's CUDA context unusable, so tests that
provoke one run it here and read the message from the child's output."""

import os
import subprocess
import sys
import textwrap


def run_isolated(code: str) -> subprocess.CompletedProcess:
    """Runs `code` (dedented) in a new Python process with this process's import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)
