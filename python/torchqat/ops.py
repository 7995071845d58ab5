"""Typed Python entry points of the fake-quant operators in ``torch.ops.torchqat``.

Both operators compute, for every element x with scale s and zero point z of its channel::

    q = clamp(round_half_even(x * (1/s)) + z, quant_min, quant_max)   # 1/s in float32
    y = (q - z) * s

bit-identically to ``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine`` for
float32 inputs with integer zero points. See ``docs/numerics.md``.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _ops  # noqa: F401  (loads the library)

__all__ = ["fake_quantize", "fake_quantize_lsq"]


def fake_quantize(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
) -> torch.Tensor:
    """Fake-quantizes ``input`` with a straight-through estimator.

    Args:
        input: any shape; float32, float64, float16 or bfloat16 (float16/bfloat16 compute in
            float32 and return their own dtype).
        scale: float32 (or float64) scales, > 0 and finite. One element when ``axis`` is None,
            else shape ``[input.size(axis)]``.
        zero_point: same shape as ``scale``. Integer zero points must lie in
            ``[quant_min, quant_max]``; float zero points are rounded half to even and clamped.
        quant_min, quant_max: the integer range, e.g. ``-128, 127`` or ``0, 255``; 2 to 16 bits.
        axis: None for per-tensor quantization, else the channel axis (negative counts from
            the end).

    Returns:
        A tensor with ``input``'s shape, dtype and strides. Its gradient flows to ``input``
        only: ``grad * (quant_min <= round(x/s) + z <= quant_max)``.
    """
    return torch.ops.torchqat.fake_quantize(input, scale, zero_point, quant_min, quant_max, axis)


def fake_quantize_lsq(
    input: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
    grad_factor: float = 1.0,
    min_scale: float = 0.0,
) -> torch.Tensor:
    """Fake-quantizes ``input`` with learnable ``scale`` and ``zero_point`` (LSQ / LSQ+).

    The forward equals :func:`fake_quantize`. The backward gives ``input`` the straight-through
    gradient and reduces, over all elements (per-tensor) or all but ``axis`` (per-channel)::

        element        d/d scale              d/d zero_point
        below range    dy * (quant_min - z)   -dy * s
        above range    dy * (quant_max - z)   -dy * s
        in range       dy * (y - x) / s       0

    each multiplied by ``grad_factor`` (LSQ uses ``1 / sqrt(numel_per_scale * quant_max)``).
    A float ``zero_point`` is used as ``clamp(round_half_even(z), quant_min, quant_max)`` in both
    directions. NaN inputs give NaN outputs and zero gradients.

    With ``min_scale > 0`` the scale used is ``max(scale, min_scale)`` and the scale's gradient
    passes that floor unchanged (a straight-through floor: a scale an optimizer pushed below it
    still receives gradient and can recover). ``FakeQuantizer`` keeps learnable scales positive
    this way, without reading a device value.

    Args: as :func:`fake_quantize`, plus ``grad_factor`` (finite float) and ``min_scale``
    (finite, >= 0; 0 applies no floor).

    Returns:
        A tensor with ``input``'s shape, dtype and strides.
    """
    return torch.ops.torchqat.fake_quantize_lsq(
        input, scale, zero_point, quant_min, quant_max, axis, grad_factor, min_scale
    )
