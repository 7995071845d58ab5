"""Real INT8 execution on plain integer tensors: quantize, dequantize, packed INT8 linear and
convolution weights and the INT8 linear and 2-D convolution operators (CPU, and CUDA in CUDA
builds: the packed objects stay on the CPU and the operators run where the input is).

Tensors are ordinary ``torch.uint8`` / ``torch.int8`` (/ ``int16`` / ``int32``) tensors with
explicit scales and zero points, not PyTorch's deprecated quantized dtypes. The numerics
(``docs/numerics.md``) make the INT8 layer reproduce the QAT layer up to float rounding::

    q_x    = clamp(round_half_even(x * (1/s_x)) + z_x, quant_min, quant_max)   # = fake_quantize's q
    acc[n] = sum_k (q_x[k] - z_x) * q_w[n, k]                                  # int32, exact
    y[n]   = fma(acc[n], s_x * s_w[n], bias[n])                                # float32
    y[n]   = fma(y[n], out_multiplier[n], out_shift[n])                        # folded BatchNorm
    y[n]   = activation(y[n])                                                  # none / relu / silu
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from . import _ops  # noqa: F401  (loads the library)

__all__ = [
    "quantize",
    "dequantize",
    "pack_linear",
    "int8_linear",
    "int8_matmul",
    "pack_conv2d",
    "int8_conv2d",
    "int8_conv2d_acc",
    "available_kernels",
]


def quantize(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
) -> torch.Tensor:
    """Quantizes ``input`` into integers: ``clamp(round_half_even(x * (1/s)) + z, quant_min,
    quant_max)``, the integer :func:`torchqat.fake_quantize` rounds to, so that
    ``dequantize(quantize(x)) == fake_quantize(x)`` bit for bit.

    Args: as :func:`torchqat.fake_quantize` (``input`` float32/float64/float16/bfloat16; ``axis``
        None for per-tensor, else the channel axis).

    Returns:
        ``input``'s shape and strides, in the smallest of uint8, int8, int16, int32 that holds
        ``[quant_min, quant_max]`` (uint8 when both uint8 and int8 do). NaN becomes the zero
        point (it dequantizes to 0); +-inf clamp to the range ends.
    """
    return torch.ops.torchqat.quantize(input, scale, zero_point, quant_min, quant_max, axis)


def dequantize(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: Optional[int] = None,
) -> torch.Tensor:
    """``(input - zero_point) * scale`` in float32.

    Args:
        input: uint8, int8, int16 or int32 tensor of any shape.
        scale: float32 (or float64, used as float32) scales, > 0 and finite; one element when
            ``axis`` is None, else shape ``[input.size(axis)]``.
        zero_point: same shape as ``scale``; integer, or float (rounded half to even).
        axis: None for per-tensor, else the channel axis.

    Returns:
        A float32 tensor with ``input``'s shape and strides.
    """
    return torch.ops.torchqat.dequantize(input, scale, zero_point, axis)


def pack_linear(
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_multiplier: Optional[torch.Tensor] = None,
    out_shift: Optional[torch.Tensor] = None,
    kernel: str = "auto",
) -> torch.ScriptObject:
    """Packs the weights of an INT8 linear layer for this CPU's GEMM kernel.

    Args:
        weight_int8: int8 ``[out_features, in_features]``, per-output-channel symmetric
            (normally in ``[-127, 127]``; -128 is accepted and exact). ``in_features`` at most
            65793, so that int32 accumulators cannot overflow.
        weight_scale: float32 ``[out_features]``, > 0: ``W ~ weight_int8 * weight_scale[:, None]``.
        bias: optional float ``[out_features]``, added after the rescale.
        out_multiplier, out_shift: optional float ``[out_features]``, given together: after the
            bias, ``y = y * out_multiplier + out_shift`` (a BatchNorm folded into the epilogue).
        kernel: ``"auto"`` (the best kernel this CPU runs; the environment variable
            ``TORCHQAT_INT8_KERNEL`` overrides it and ``TORCHQAT_CPU_CAPABILITY`` lowers it),
            one of :func:`available_kernels`, or ``"avx2_u7"``: an AVX2 kernel for 7-bit
            unsigned activations (``quant_min >= 0``, ``quant_max <= 127``), for which AVX2's
            ``vpmaddubsw`` cannot saturate; it is exact only there, so the operators refuse
            a wider activation range and raw-byte input (``int8_matmul``) with it, and a saved
            model re-packs with ``"auto"`` on load.

    Returns:
        A ``torch.classes.torchqat.PackedLinear``. It scripts and saves with
        ``torch.jit.script`` / ``torch.jit.save``: the saved file holds the unpacked weights
        (with a format version) and re-packs them for the loading machine. Its methods
        ``weight()``, ``weight_scale()``, ``bias()``, ``out_multiplier()``, ``out_shift()``,
        ``in_features()``, ``out_features()``, ``kernel()`` and ``kernel_for_input(quant_min,
        quant_max)`` (the kernel a call with that input range runs) read it back.
    """
    return torch.classes.torchqat.PackedLinear(
        weight_int8, weight_scale, bias, out_multiplier, out_shift, kernel
    )


def int8_linear(
    input: torch.Tensor,
    input_scale: torch.Tensor,
    input_zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    packed: torch.ScriptObject,
    activation: str = "none",
) -> torch.Tensor:
    """INT8 linear layer: quantizes ``input`` per tensor, multiplies by the packed int8 weights
    with int32 accumulation and applies the float epilogue (see the module docstring).

    Args:
        input: float32 (or float16 / bfloat16, converted exactly) ``[*, in_features]``.
        input_scale, input_zero_point: one element each; the activation quantizer's parameters.
        quant_min, quant_max: an 8-bit range within ``[0, 255]`` or ``[-128, 127]``.
        packed: from :func:`pack_linear`.
        activation: ``"none"``, ``"relu"`` or ``"silu"``.

    Returns:
        float32 ``[*, out_features]``; equal to ``F.linear(fake_quantize(x), W_q, bias)`` up to
        float rounding (``docs/numerics.md`` derives the bound).
    """
    return torch.ops.torchqat.int8_linear(
        input, input_scale, input_zero_point, quant_min, quant_max, packed, activation
    )


def int8_matmul(input: torch.Tensor, input_zero_point: int, packed: torch.ScriptObject) -> torch.Tensor:
    """The integer part of :func:`int8_linear`: ``sum_k (input[..., k] - input_zero_point) *
    weight[n, k]`` as int32, exact, for uint8 or int8 ``input`` of shape ``[*, in_features]``."""
    return torch.ops.torchqat.int8_matmul(input, input_zero_point, packed)


def _pair(value: Union[int, Sequence[int]], name: str) -> List[int]:
    if isinstance(value, int):
        return [value, value]
    values = [int(v) for v in value]
    if len(values) != 2:
        raise ValueError(
            f"pack_conv2d: {name} must be an int or 2 ints (height, width), got {value!r}"
        )
    return values


def pack_conv2d(
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_multiplier: Optional[torch.Tensor] = None,
    out_shift: Optional[torch.Tensor] = None,
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int]] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    kernel: str = "auto",
) -> torch.ScriptObject:
    """Packs the weights of an INT8 2-D convolution (zero padding) for this CPU (a CUDA input
    gets a copy of the weights on its GPU on first use).

    Args:
        weight_int8: int8 ``[out_channels, in_channels / groups, kernel_h, kernel_w]``,
            per-output-channel symmetric (normally in ``[-127, 127]``; -128 is exact too).
            ``in_channels / groups * kernel_h * kernel_w`` at most 65793, so that int32
            accumulators cannot overflow.
        weight_scale: float32 ``[out_channels]``, > 0.
        bias: optional float ``[out_channels]``, added after the rescale.
        out_multiplier, out_shift: optional float ``[out_channels]``, given together: after the
            bias, ``y = y * out_multiplier + out_shift`` (a BatchNorm folded into the epilogue).
        stride, padding, dilation: an int or (height, width), as ``torch.nn.Conv2d``'s.
        groups: as ``torch.nn.Conv2d``'s; ``out_channels`` must be divisible by it.
        kernel: ``"auto"`` (depthwise layers -- groups == in == out channels -- take the direct
            ``"depthwise"`` kernel, the others the GEMM kernel :func:`pack_linear` would take),
            ``"depthwise"``, or one of :func:`available_kernels` (GEMM per group over im2col
            tiles), or ``"avx2_u7"`` for 7-bit unsigned activations (see :func:`pack_linear`).

    Returns:
        A ``torch.classes.torchqat.PackedConv2d``; it scripts, saves and re-packs on load like
        :func:`pack_linear`'s object. Methods: ``weight()``, ``weight_scale()``, ``bias()``,
        ``out_multiplier()``, ``out_shift()``, ``stride()``, ``padding()``, ``dilation()``,
        ``groups()``, ``in_channels()``, ``out_channels()``, ``kernel_size()``, ``kernel()``,
        ``kernel_for_input(quant_min, quant_max)``.
    """
    return torch.classes.torchqat.PackedConv2d(
        weight_int8, weight_scale, bias, out_multiplier, out_shift, _pair(stride, "stride"),
        _pair(padding, "padding"), _pair(dilation, "dilation"), groups, kernel
    )


def int8_conv2d(
    input: torch.Tensor,
    input_scale: torch.Tensor,
    input_zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    packed: torch.ScriptObject,
    activation: str = "none",
) -> torch.Tensor:
    """INT8 2-D convolution: quantizes ``input`` per tensor (``fake_quantize``'s rounding),
    convolves with the packed int8 weights in int32 (zero padding is exact: padded positions
    act as ``q = zero_point``) and applies :func:`int8_linear`'s epilogue per output channel.

    Args:
        input: float32 (or float16 / bfloat16) ``[N, C, H, W]``, any memory format.
        input_scale, input_zero_point: one element each; the activation quantizer's parameters.
        quant_min, quant_max: an 8-bit range within ``[0, 255]`` or ``[-128, 127]``.
        packed: from :func:`pack_conv2d`.
        activation: ``"none"``, ``"relu"`` or ``"silu"``.

    Returns:
        float32 ``[N, out_channels, Ho, Wo]`` in ``torch.channels_last`` memory format; equal to
        ``F.conv2d(fake_quantize(x), W_q, bias, ...)`` (then the multiplier / shift and the
        activation) up to float rounding (``docs/numerics.md`` derives the bound).
    """
    return torch.ops.torchqat.int8_conv2d(
        input, input_scale, input_zero_point, quant_min, quant_max, packed, activation
    )


def int8_conv2d_acc(input: torch.Tensor, input_zero_point: int,
                    packed: torch.ScriptObject) -> torch.Tensor:
    """The integer part of :func:`int8_conv2d`: for uint8 or int8 ``input [N, C, H, W]``, the
    int32 ``[N, out_channels, Ho, Wo]`` (channels_last) sums of ``(input - input_zero_point) *
    weight`` over each window, exact; padding contributes 0."""
    return torch.ops.torchqat.int8_conv2d_acc(input, input_zero_point, packed)


def available_kernels() -> List[str]:
    """Names of the CPU GEMM kernels :func:`pack_linear` can use on this machine, best first:
    ``"avx512_vnni"`` (where the CPU has AVX-512 VNNI), ``"brgemm"`` (oneDNN's micro-kernel
    through ATen, AMX tiles, on CPUs with AMX-INT8; "auto" for deep convolutions), ``"avx2"``,
    ``"reference"`` (plain loops), ``"int_mm"`` (``torch._int_mm``) and, on AVX2 CPUs,
    ``"vnni_emulated"`` (the VNNI kernel's packing and blocking with vpdpbusd emulated exactly in
    AVX2; for tests)."""
    return list(torch.ops.torchqat.int8_linear_kernels())
