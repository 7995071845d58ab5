"""Loads the compiled operator library and registers the fake (meta) implementations that let
``torch.compile`` and ``torch.export`` trace the operators without running them."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from pathlib import Path

import torch

_LIBRARY_NAME = "_C"


def _library_path() -> Path:
    # An explicit path wins: a library built elsewhere, e.g. CI's CUDA build in build/cuda/lib
    # tested against the CUDA torch of a second environment.
    explicit = os.environ.get("TORCHQAT_LIBRARY")
    if explicit:
        if not Path(explicit).is_file():
            raise ImportError(f"torchqat: TORCHQAT_LIBRARY={explicit!r} is not a file")
        return Path(explicit)
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
                            grad_factor=1.0, min_scale=0.0):
    _check_devices("fake_quantize_lsq", input, scale=scale, zero_point=zero_point)
    return _same_layout(input)


@torch.library.register_fake("torchqat::fake_quantize_backward")
def _fake_quantize_backward_fake(grad, input, scale, zero_point, quant_min, quant_max,
                                 axis=None):
    _check_devices("fake_quantize_backward", input, grad=grad, scale=scale, zero_point=zero_point)
    return _same_layout(input)


def _lsq_parameter_grads(scale, zero_point):
    """The scale and zero-point gradients of the LSQ backward operators: scale's shape and dtype;
    zero_point's shape, in its float dtype or else scale's."""
    zp_dtype = zero_point.dtype if zero_point.dtype.is_floating_point else scale.dtype
    return (torch.empty_like(scale, memory_format=torch.contiguous_format),
            torch.empty(zero_point.shape, dtype=zp_dtype, device=zero_point.device))


@torch.library.register_fake("torchqat::fake_quantize_lsq_backward")
def _fake_quantize_lsq_backward_fake(grad, input, scale, zero_point, quant_min, quant_max,
                                     axis=None, grad_factor=1.0):
    _check_devices("fake_quantize_lsq_backward", input, grad=grad, scale=scale,
                   zero_point=zero_point)
    return (_same_layout(input),) + _lsq_parameter_grads(scale, zero_point)


@torch.library.register_fake("torchqat::fake_quantize_backward_")
def _fake_quantize_backward_inplace_fake(grad, input, scale, zero_point, quant_min, quant_max,
                                         axis=None):
    _check_devices("fake_quantize_backward_", input, grad=grad, scale=scale,
                   zero_point=zero_point)


@torch.library.register_fake("torchqat::fake_quantize_lsq_backward_")
def _fake_quantize_lsq_backward_inplace_fake(grad, input, scale, zero_point, quant_min,
                                             quant_max, axis=None, grad_factor=1.0):
    _check_devices("fake_quantize_lsq_backward_", input, grad=grad, scale=scale,
                   zero_point=zero_point)
    return _lsq_parameter_grads(scale, zero_point)


# fake_quantize_lsq_after_silu needs none: its CompositeExplicitAutograd kernel calls
# fake_quantize_lsq, whose fake implementation is above.
@torch.library.register_fake("torchqat::fake_quantize_lsq_after_silu_backward")
def _fake_quantize_lsq_after_silu_backward_fake(grad, input, pre_activation, scale, zero_point,
                                                quant_min, quant_max, axis=None,
                                                grad_factor=1.0):
    _check_devices("fake_quantize_lsq_after_silu_backward", input, grad=grad,
                   pre_activation=pre_activation, scale=scale, zero_point=zero_point)
    return (_same_layout(input),) + _lsq_parameter_grads(scale, zero_point)


@torch.library.register_fake("torchqat::fake_quantize_lsq_after_silu_backward_")
def _fake_quantize_lsq_after_silu_backward_inplace_fake(grad, input, pre_activation, scale,
                                                        zero_point, quant_min, quant_max,
                                                        axis=None, grad_factor=1.0):
    _check_devices("fake_quantize_lsq_after_silu_backward_", input, grad=grad,
                   pre_activation=pre_activation, scale=scale, zero_point=zero_point)
    return _lsq_parameter_grads(scale, zero_point)


@torch.library.register_fake("torchqat::fake_quantize_lsq_input_maps")
def _fake_quantize_lsq_input_maps_fake(input, scale, zero_point, quant_min, quant_max):
    _check_devices("fake_quantize_lsq_input_maps", input, scale=scale, zero_point=zero_point)
    clipped = torch.library.get_ctx().new_dynamic_size()
    return (torch.empty(input.shape, dtype=input.dtype, device=input.device),
            torch.empty(clipped, dtype=torch.long, device=input.device))


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
    _check_devices("quantize", input, scale=scale, zero_point=zero_point)
    return torch.empty_like(input, dtype=_quantized_dtype(quant_min, quant_max))


@torch.library.register_fake("torchqat::dequantize")
def _dequantize_fake(input, scale, zero_point, axis=None):
    _check_devices("dequantize", input, scale=scale, zero_point=zero_point)
    return torch.empty_like(input, dtype=torch.float32)


@torch._library.register_fake_class("torchqat::PackedLinear")
class _FakePackedLinear:
    """What torch.compile / torch.export see of a PackedLinear while tracing: the tensors of
    its __obj_flatten__ (as fake tensors), and the same methods."""

    def __init__(self, w_int8, w_scale, b, bn_multiplier, bn_shift, kernel_name):
        self.w_int8 = w_int8
        self.w_scale = w_scale
        self.b = b
        self.bn_multiplier = bn_multiplier
        self.bn_shift = bn_shift
        self.kernel_name = kernel_name

    @classmethod
    def __obj_unflatten__(cls, flat):
        return cls(**dict(flat))

    def in_features(self):
        return self.w_int8.shape[1]

    def out_features(self):
        return self.w_int8.shape[0]

    def weight(self):
        return self.w_int8

    def weight_scale(self):
        return self.w_scale

    def bias(self):
        return self.b

    def out_multiplier(self):
        return self.bn_multiplier

    def out_shift(self):
        return self.bn_shift

    def kernel(self):
        return self.kernel_name


@torch.library.register_fake("torchqat::int8_linear")
def _int8_linear_fake(input, input_scale, input_zero_point, quant_min, quant_max, packed,
                      activation="none"):
    _check_devices("int8_linear", input, input_scale=input_scale,
                   input_zero_point=input_zero_point)
    return input.new_empty((*input.shape[:-1], packed.out_features()), dtype=torch.float32)


@torch.library.register_fake("torchqat::int8_matmul")
def _int8_matmul_fake(input, input_zero_point, packed):
    return input.new_empty((*input.shape[:-1], packed.out_features()), dtype=torch.int32)


@torch._library.register_fake_class("torchqat::PackedConv2d")
class _FakePackedConv2d:
    """What torch.compile / torch.export see of a PackedConv2d while tracing: the values of its
    __obj_flatten__ (tensors as fake tensors), and the same methods."""

    def __init__(self, w_int8, w_scale, b, bn_multiplier, bn_shift, conv_stride, conv_padding,
                 conv_dilation, conv_groups, kernel_name):
        self.w_int8 = w_int8
        self.w_scale = w_scale
        self.b = b
        self.bn_multiplier = bn_multiplier
        self.bn_shift = bn_shift
        self.conv_stride = list(conv_stride)
        self.conv_padding = list(conv_padding)
        self.conv_dilation = list(conv_dilation)
        self.conv_groups = conv_groups
        self.kernel_name = kernel_name

    @classmethod
    def __obj_unflatten__(cls, flat):
        return cls(**dict(flat))

    def weight(self):
        return self.w_int8

    def weight_scale(self):
        return self.w_scale

    def bias(self):
        return self.b

    def out_multiplier(self):
        return self.bn_multiplier

    def out_shift(self):
        return self.bn_shift

    def stride(self):
        return self.conv_stride

    def padding(self):
        return self.conv_padding

    def dilation(self):
        return self.conv_dilation

    def groups(self):
        return self.conv_groups

    def in_channels(self):
        return self.w_int8.shape[1] * self.conv_groups

    def out_channels(self):
        return self.w_int8.shape[0]

    def kernel_size(self):
        return [self.w_int8.shape[2], self.w_int8.shape[3]]

    def kernel(self):
        return self.kernel_name


def _conv2d_output(op: str, input, packed, dtype):
    # The C++ operators' shape checks and output: [N, O, Ho, Wo], channels_last.
    if input.dim() != 4:
        raise RuntimeError(f"{op}: input must have shape [N, C, H, W], got shape "
                           f"{list(input.shape)}")
    if input.shape[1] != packed.in_channels():
        raise RuntimeError(f"{op}: input must have {packed.in_channels()} channels (in_channels "
                           f"of packed), got shape {list(input.shape)}")
    n, _, h, w = input.shape
    (kh, kw), (sh, sw) = packed.kernel_size(), packed.stride()
    (ph, pw), (dh, dw) = packed.padding(), packed.dilation()
    span_h = h + 2 * ph - dh * (kh - 1) - 1
    span_w = w + 2 * pw - dw * (kw - 1) - 1
    torch._check(span_h >= 0 and span_w >= 0,
                 lambda: f"{op}: the output would be empty: input of height x width {h} x {w} "
                         "is smaller than the dilated kernel")
    shape = (n, packed.out_channels(), span_h // sh + 1, span_w // sw + 1)
    return torch.empty(shape, dtype=dtype, device=input.device,
                       memory_format=torch.channels_last)


@torch.library.register_fake("torchqat::int8_conv2d")
def _int8_conv2d_fake(input, input_scale, input_zero_point, quant_min, quant_max, packed,
                      activation="none"):
    _check_devices("int8_conv2d", input, input_scale=input_scale,
                   input_zero_point=input_zero_point)
    return _conv2d_output("int8_conv2d", input, packed, torch.float32)


@torch.library.register_fake("torchqat::int8_conv2d_acc")
def _int8_conv2d_acc_fake(input, input_zero_point, packed):
    return _conv2d_output("int8_conv2d_acc", input, packed, torch.int32)
