"""Quantized training modules (``Quant*``): float layers with fake-quantized weights and inputs;
INT8 inference modules (``Int8*``) that :func:`torchqat.convert` makes of them."""

from .conv import QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose2d
from .linear import QuantLinear
from .int8 import Int8Conv1d, Int8Conv2d, Int8Linear
from .quant_module import QuantModuleMixin

__all__ = [
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose2d",
    "QuantLinear",
    "QuantModuleMixin",
    "Int8Conv1d",
    "Int8Conv2d",
    "Int8Linear",
]
