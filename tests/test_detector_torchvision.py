"""The detector job's torchvision flow (``examples/detector_qat.py --only-torchvision``):
torchvision's SSDlite320-MobileNetV3 (random init) on the digits detection set, through
prepare_qat, calibrate, QAT steps, COCO evaluation, convert and TorchScript, in quick mode.
Needs torchvision (the CUDA venv; ``make model-test``)."""

import os
import sys

import pytest
import torch

import torchqat as tq

pytest.importorskip("sklearn")
pytest.importorskip("pycocotools")
torchvision = pytest.importorskip("torchvision")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import detector_qat  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def one_thread():
    """Small convolutions on a shared 2-core machine: a second OpenMP thread waiting for a busy
    core made them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_torchvision_flow_quick(one_thread, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHQAT_CACHE", str(tmp_path / "cache"))
    r = detector_qat.torchvision_flow()

    # Every Conv2d of the detector is quantized, with a weight and an input quantizer.
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in
                 torchvision.models.detection.ssdlite320_mobilenet_v3_large(
                     weights=None, weights_backbone=None, num_classes=11).modules())
    assert r["quantizers"] == 2 * n_conv
    losses = torch.tensor(r["losses"])
    assert len(losses) == 8 and torch.isfinite(losses).all()       # 64 images, batches of 8
    # LSQ: a learnable scale moves exactly when a gradient reaches it; every loss term goes
    # through the trunk, so all its scales get one (the extra blocks and coarse-level heads may
    # not in 8 steps: matched anchors and hard-negative mining).
    assert r["scales_moved"] == r["scales_with_grad"]
    without = detector_qat.quantizers_without_grad(r)
    assert not [n for n in without if n.startswith("backbone.features.")], without
    assert len(r["scales_with_grad"]) >= 0.75 * r["quantizers"]
    assert r["scales_at_floor"] == 0        # BatchNorm statistics estimated before calibration
    m = r["map"]
    assert all(0.0 <= v <= 1.0 for v in m.values()), m
    if hasattr(tq, "convert"):
        assert r["int8_layers"] > 50                                 # of n_conv Conv2d
        # docs/convert.md: every INT8 layer within float rounding of the QAT layers it replaced,
        # on the input it received (tests/test_convert.py's two bounds).
        from test_convert import check_model_layers
        with torch.no_grad():
            _, n = check_model_layers(r["qat_model"], r["int8_model"], r["images"])
        assert n == r["int8_layers"]
        assert 0 <= r["int8_step_ratio"] < float("inf")
        assert r["torchscript_equal"]
    assert detector_qat.torchvision_problems(r) == []
