"""examples/classifier_qat.py runs end to end (``--quick``: one run, a few epochs) and prints its
accuracy table. The full run's targets are checked by running it with ``--check``."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_classifier_qat_quick():
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "classifier_qat.py"), "--quick"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "float" in out and "PTQ" in out and "QAT" in out
    rows = [re.findall(r"\d+\.\d+", line) for line in out.splitlines()
            if line.startswith(("8-bit", "4-bit"))]
    assert len(rows) == 2
    for row in rows:
        acc_float, acc_ptq, acc_qat, loss_float, loss_ptq, loss_qat = map(float, row)
        # A few epochs already learn digits; quantized models must not collapse.
        assert acc_float > 85 and acc_ptq > 80 and acc_qat > 80
