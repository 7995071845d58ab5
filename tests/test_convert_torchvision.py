"""convert on torchvision models (random init): resnet18 and the SSDlite detector. Every INT8
layer is checked against the QAT layers it replaced on the input it received (the two bounds of
tests/test_convert.py). Needs torchvision (the CUDA venv: see docs/convert.md)."""

import pytest
import torch
from torch import nn

import torchqat as tq
from test_convert import (HAS_CONV, assert_end_to_end_close, check_model_layers, count_types,
                          qat_model)

torchvision = pytest.importorskip("torchvision")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAS_CONV, reason="this torchqat build has no int8_conv2d")]


def test_convert_resnet18():
    torch.manual_seed(0)
    batches = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    qat = qat_model(torchvision.models.resnet18(weights=None, num_classes=10), batches)
    int8_model = tq.convert(qat)
    counts = count_types(int8_model)
    assert counts["Int8Conv2d"] == 20 and counts["Int8Linear"] == 1
    assert counts.get("BatchNorm2d", 0) == 0                     # all 20 folded
    assert int8_model.conv1.activation == "relu"                 # the stem's ReLU fuses
    assert isinstance(int8_model.layer1[0].relu, nn.ReLU)        # called twice: stays
    out, n = check_model_layers(qat, int8_model, torch.randn(2, 3, 64, 64))
    assert n == 21
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        assert_end_to_end_close(int8_model(x), qat(x))


def test_convert_ssdlite_detector():
    torch.manual_seed(1)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5)
    images = [[torch.rand(3, 320, 320)]]
    qat = qat_model(model, images, train_steps=0, calibrate_forward=lambda m, b: m(b))
    int8_model = tq.convert(qat)
    counts = count_types(int8_model)
    assert counts["Int8Conv2d"] > 50
    assert counts.get("BatchNorm2d", 0) == 0
    out, n = check_model_layers(qat, int8_model, [torch.rand(3, 320, 320)])
    assert n == counts["Int8Conv2d"]
    assert set(out[0]) == {"boxes", "scores", "labels"}
