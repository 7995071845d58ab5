"""Loads the compiled operator library and registers the fake (meta) implementations that let
``torch.compile`` and ``torch.export`` trace the operators without running them."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import torch

_LIBRARY_NAME = "_C"


def _library_path() -> Path:
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"{_LIBRARY_NAME}{suffix}"
        if candidate.exists():
            return candidate
    # Editable installs may keep the built library outside the source tree.
    spec = importlib.util.find_spec(f"torchqat.{_LIBRARY_NAME}")
    if spec is not None and spec.origin and Path(spec.origin).exists():
        return Path(spec.origin)
    raise ImportError(
        "torchqat: the compiled operator library torchqat._C was not found next to "
        f"{here}. Build it against the installed torch with "
        "`pip install --no-build-isolation -e .` (or run `make test`)."
    )


def _load_library() -> Path:
    path = _library_path()
    try:
        torch.ops.load_library(str(path))
    except OSError as err:  # e.g. built against another torch
        raise ImportError(
            f"torchqat: could not load {path} ({err}). It was probably built against a "
            f"different torch than the installed {torch.__version__}; rebuild with "
            "`pip install --no-build-isolation -e .`."
        ) from err
    return path


LIBRARY_PATH = _load_library()


def _check_devices(op: str, input, **others) -> None:
    # The C++ wrappers check this too; a fake implementation runs instead of them whenever one
    # argument is a meta tensor, so it must refuse a mix of devices the same way.
    for name, t in others.items():
        if t.device != input.device:
            raise RuntimeError(
                f"{op}: {name} must be on input's device ({input.device}), got {t.device}"
            )


def _same_layout(t: torch.Tensor) -> torch.Tensor:
    # The operators return results laid out like the input (torch.empty_like semantics).
    return torch.empty_like(t)


@torch.library.register_fake("torchqat::fake_quantize")
def _fake_quantize_fake(input, scale, zero_point, quant_min, quant_max, axis=None):
    _check_devices("fake_quantize", input, scale=scale, zero_point=zero_point)
    return _same_layout(input)


@torch.library.register_fake("torchqat::fake_quantize_lsq")
def _fake_quantize_lsq_fake(input, scale, zero_point, quant_min, quant_max, axis=None,
                            grad_factor=1.0):
    _check_devices("fake_quantize_lsq", input, scale=scale, zero_point=zero_point)
    return _same_layout(input)


@torch.library.register_fake("torchqat::fake_quantize_backward")
def _fake_quantize_backward_fake(grad, input, scale, zero_point, quant_min, quant_max,
                                 axis=None):
    _check_devices("fake_quantize_backward", input, grad=grad, scale=scale, zero_point=zero_point)
    return _same_layout(input)


@torch.library.register_fake("torchqat::fake_quantize_lsq_backward")
def _fake_quantize_lsq_backward_fake(grad, input, scale, zero_point, quant_min, quant_max,
                                     axis=None, grad_factor=1.0):
    _check_devices("fake_quantize_lsq_backward", input, grad=grad, scale=scale,
                   zero_point=zero_point)
    zp_dtype = zero_point.dtype if zero_point.dtype.is_floating_point else scale.dtype
    return (
        _same_layout(input),
        torch.empty_like(scale, memory_format=torch.contiguous_format),
        torch.empty(zero_point.shape, dtype=zp_dtype, device=zero_point.device),
    )


def _quantized_dtype(quant_min: int, quant_max: int) -> torch.dtype:
    # The smallest of uint8, int8, int16, int32 that holds [quant_min, quant_max].
    if quant_min >= 0 and quant_max <= 255:
        return torch.uint8
    if quant_min >= -128 and quant_max <= 127:
        return torch.int8
    if quant_min >= -32768 and quant_max <= 32767:
        return torch.int16
    return torch.int32


@torch.library.register_fake("torchqat::quantize")
def _quantize_fake(input, scale, zero_point, quant_min, quant_max, axis=None):
    return torch.empty_like(input, dtype=_quantized_dtype(quant_min, quant_max))


@torch.library.register_fake("torchqat::dequantize")
def _dequantize_fake(input, scale, zero_point, axis=None):
    return torch.empty_like(input, dtype=torch.float32)
