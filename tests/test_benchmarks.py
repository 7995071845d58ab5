"""Smoke test of the QAT-step benchmark: it runs end to end and prints its summary (benchmarks
are not timed in tests; this only keeps the script from rotting)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_qat_step_runs_and_prints_its_summary():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(ROOT, "python")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_qat_step.py"), "--threads", "1",
         "--reps", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout
    assert re.search(r"^  float +\d+\.\d +1\.00$", out, re.M), out
    assert re.search(r"^  torchqat +\d+\.\d +\d\.\d\d$", out, re.M), out
    assert re.search(r"^  1 thread: .*TinyDetector \d\.\d\d$", out, re.M), out
    # The benchmark's model has trained BatchNorm statistics: calibrate does not warn.
    assert "initial running statistics" not in run.stderr
