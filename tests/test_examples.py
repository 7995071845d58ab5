"""examples/classifier_qat.py: its harder digits set, and a run end to end (``--quick``: one run, a
few epochs) that prints its accuracy table. The full run's targets are checked by running it with
``--check``."""

import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import classifier_qat
    finally:
        sys.path.pop(0)
    return classifier_qat


def test_hard_digits_are_deterministic_and_split_by_source_digit():
    pytest.importorskip("sklearn")
    cq = _example()
    a = cq.load_hard_digits(0, variants=(2, 1, 3))
    b = cq.load_hard_digits(0, variants=(2, 1, 3))
    # 1797 source digits: 25% test (450), then 20% of the rest validation (270), 1077 train.
    sizes = {k: len(v[1]) for k, v in a.items()}
    assert sizes == {"train": 2 * 1077, "val": 270, "test": 3 * 450}
    for k in a:
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1])
        assert a[k][0].shape[1:] == (1, 8, 8)
        assert torch.bincount(a[k][1], minlength=10).min() > 0.08 * sizes[k]   # stratified
    assert not torch.equal(cq.load_hard_digits(1, variants=(2, 1, 3))["test"][0], a["test"][0])
    # Variants of one source digit differ (random deformation and noise), labels repeat.
    x, y = a["test"]
    assert torch.equal(y[0::3], y[1::3]) and not torch.allclose(x[0], x[1])
    # Normalised with the training set's statistics.
    assert abs(a["train"][0].mean()) < 1e-4 and abs(a["train"][0].std() - 1) < 1e-4


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
        # Two epochs on the hard set reach ~75% (chance: 10%); quantized models must not
        # collapse, and one QAT epoch must not make things worse.
        assert acc_float > 60 and acc_ptq > 55 and acc_qat > acc_ptq - 5


def test_mcnemar_p_matches_scipy_binomial_test():
    stats = pytest.importorskip("scipy.stats")
    cq = _example()
    for b, c in [(0, 0), (3, 3), (39, 10), (10, 39), (0, 7), (60, 12), (5, 6)]:
        want = stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
        assert cq.mcnemar_p(b, c) == pytest.approx(want, rel=1e-9)
