"""Shared fixtures. CUDA tests are the CPU tests parametrised by device: `device` yields "cpu"
always and "cuda" when a GPU is visible (marked `cuda`, so `-m "not cuda"` deselects it)."""

import os
import sys

import pytest
import torch

# The test helpers (tests/fake_quantize_reference.py) import as plain modules.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torchqat  # noqa: E402,F401  (loads the operator library once, before any test)

DEVICES = [pytest.param("cpu", id="cpu")]
if torch.cuda.is_available():
    DEVICES.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator with a fixed seed: data are made on the CPU, then moved to `device`."""
    return torch.Generator().manual_seed(20240521)
