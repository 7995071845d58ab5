"""torchqat: quantization-aware training for PyTorch, with C++/CUDA fake-quant operators."""

from .ops import fake_quantize, fake_quantize_lsq

__version__ = "0.1.0"

__all__ = ["fake_quantize", "fake_quantize_lsq", "__version__"]
