"""Quantized training modules (``Quant*``): float layers with fake-quantized weights and inputs."""

from .conv import QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose2d
from .linear import QuantLinear
from .quant_module import QuantModuleMixin

__all__ = [
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose2d",
    "QuantLinear",
    "QuantModuleMixin",
]
