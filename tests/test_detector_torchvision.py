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
    # LSQ: QAT's gradients reach every learnable scale.
    assert r["scales_moved"] == r["quantizers"]
    m = r["map"]
    assert all(0.0 <= v <= 1.0 for v in m.values()), m
    if hasattr(tq, "convert"):
        assert r["int8_layers"] > 50                                 # of n_conv Conv2d
        # docs/convert.md: layer by layer within float rounding; end to end a rounding tie may
        # flip a code, which keeps the raw head outputs within one output step of the heads'
        # last layers (the bound of docs/export_onnx.md).
        assert r["int8_step_ratio"] <= 1.0
        assert r["torchscript_equal"]
    assert detector_qat.torchvision_problems(r) == []
