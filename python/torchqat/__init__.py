"""torchqat: quantization-aware training for PyTorch, with C++/CUDA fake-quant operators."""

from .ops import fake_quantize, fake_quantize_lsq
from .config import QATConfig, QuantSpec
from .quantizers import FakeQuantizer
from .nn import QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose2d, QuantLinear
from .prepare import calibrate, prepare_qat
from .report import QuantReport, SensitivityReport, plot_report, report, sensitivity

__version__ = "0.1.0"

__all__ = [
    "fake_quantize",
    "fake_quantize_lsq",
    "__version__",
    "QATConfig",
    "QuantSpec",
    "FakeQuantizer",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose2d",
    "QuantLinear",
    "prepare_qat",
    "calibrate",
    "report",
    "plot_report",
    "sensitivity",
    "QuantReport",
    "SensitivityReport",
]
