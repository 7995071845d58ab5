"""The learnable input scale of a convolution whose input needs no gradient (the model's input
image, in practice), without computing the convolution's input gradient.

In float training the first convolution never computes a gradient for its input: the image needs
none. With a learnable (LSQ / LSQ+) input quantizer in front, autograd must, because the scale's
gradient is a sum over the quantizer's output gradient ``dL/dy = conv_input_grad(dout)``:

    dL/ds = g * sum_i dL/dy_i * m_s(x_i),    dL/dz = g * sum_i dL/dy_i * m_z(x_i)

with LSQ's per-element derivatives ``m_s = round(x/s) - x/s`` inside the range and
``quant_min - z`` / ``quant_max - z`` below / above it, ``m_z = 0`` inside and ``-s`` outside
(``csrc/core/fake_quant.h``), and ``g`` the gradient factor. The input gradient of a convolution
is the adjoint of its forward, ``<conv_input_grad(dout), m> = <dout, conv(m)>``, and that sum is
also ``<conv_weight_grad(m, dout), weight>``: so each of the two sums is one weight-gradient
convolution of its map (``_adjoint_sum``) and a dot product with the weight. For an input of few
channels (3) a convolution of the map is far cheaper than the input gradient: measured on
TinyDetector's stem (3 -> 16 channels, 3x3 stride 2, 8 x 128 x 128, 1 thread), the map's forward
convolution took 0.6 ms against the input gradient's 3.2 ms. ``m_z`` is zero unless some element
was clipped: its convolution is skipped then, and while few elements are clipped the input
gradient is computed at just those positions instead.

The maps come from one pass over ``x`` (``torch.ops.torchqat.fake_quantize_lsq_input_maps``): ``m_s``
(the scale term of LSQ's backward with a gradient of ones) and the flat indices of the clipped
elements, where ``m_z = -s``.

Under ``torch.compile`` the maps come from ATen operators instead (``_dense_maps``: ``m_s`` and a
dense ``m_z``, whose convolution then always runs), since the clipped elements' count is data.

Used by ``QuantConv2d`` only where it was measured to pay and where the plain path is not needed:
CPU tensors, per-tensor learnable input quantizer in ``fake_quantize`` mode, zero padding, no
autocast, eager mode or ``torch.compile`` (not scripted, traced or exported), no hooks on the
input quantizer. The forward output is the plain path's bit for bit; the gradients agree up to
float summation order (``tests/test_input_scale_grad.py``).
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..quantizers import FakeQuantizer, fake_quantize_aten

__all__ = ["InputScaleAdjointConv2d", "uses_input_scale_adjoint"]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) as a 0-d tensor, without the product's temporary where the layouts agree."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.reshape(-1), b.reshape(-1))
    return (a * b).sum()


def _adjoint_sum(grad_out: torch.Tensor, m: torch.Tensor, weight: torch.Tensor, stride, padding,
                 dilation, groups: int) -> torch.Tensor:
    """``<grad_out, conv2d(m, weight)>`` (no bias) as ``<dW, weight>``, where ``dW`` is the
    convolution's weight gradient for input ``m`` and output gradient ``grad_out``: both are
    ``sum weight[o, c, k] * grad_out[n, o, p] * m[n, c, p * stride + k - padding]``. The dot
    product then runs over the weights instead of the outputs. ``bench_qat_step.py --breakdown``
    times this form against ``<grad_out, conv2d(m, weight)>`` in the whole training step."""
    grad_w = torch.ops.aten.convolution_backward(
        grad_out, m, weight, None, stride, padding, dilation, False, [0, 0], groups,
        [False, True, False])[1]
    return _dot(grad_w, weight)


# The zero point's term takes the sparse path while at most 1 element in _SPARSE_FRACTION was
# clipped (a model input calibrated to its data range clips a handful of pixels, if any).
# Measured on TinyDetector's stem (8 x 3 x 128 x 128 -> 16 channels, 1 thread): the two paths
# cost the same at ~768 clipped elements (1 in 512), the sparse one 0.6-0.8 ms at 64 and twice
# the convolution's ~1.5 ms at 1536.
_SPARSE_FRACTION = 512


def _input_grad_at(grad_out: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor,
                   stride, padding, dilation) -> torch.Tensor:
    """sum over ``positions`` ([K, 4] rows ``(n, c, h, w)``) of ``conv2d``'s input gradient for
    ``grad_out`` (one group), as a 0-d tensor: each position gathers its valid taps
    ``grad_out[n, :, (h + p - kh * d) / s, ...] . weight[:, c, kh, kw]``, all taps at once."""
    _, _, kh_n, kw_n = weight.shape
    ho_n, wo_n = grad_out.shape[2], grad_out.shape[3]
    n, c, h, w = positions.unbind(1)
    kh = torch.arange(kh_n, device=positions.device)
    kw = torch.arange(kw_n, device=positions.device)
    hn = h[:, None] + padding[0] - kh[None, :] * dilation[0]          # [K, KH]
    wn = w[:, None] + padding[1] - kw[None, :] * dilation[1]          # [K, KW]
    ho, wo = torch.div(hn, stride[0], rounding_mode="floor"), \
        torch.div(wn, stride[1], rounding_mode="floor")
    ok_h = (hn.remainder(stride[0]) == 0) & (ho >= 0) & (ho < ho_n)
    ok_w = (wn.remainder(stride[1]) == 0) & (wo >= 0) & (wo < wo_n)
    k, i, j = (ok_h[:, :, None] & ok_w[:, None, :]).nonzero().unbind(1)  # valid (pos, kh, kw)
    g = grad_out[n[k], :, ho[k, i], wo[k, j]]                            # [T, O]
    wt = weight[:, c[k], kh[i], kw[j]].t()                               # [T, O]
    return torch.dot(g.reshape(-1), wt.reshape(-1).to(g.dtype))


def _dense_maps(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int,
                quant_max: int):
    """``(m_s, m_z)`` in ATen operators, for ``torch.compile``: what
    ``fake_quantize_lsq_input_maps`` computes (LSQ's per-element scale derivative, in the
    kernels' order), with ``m_z = -s`` at the clipped elements as a dense tensor. NaN inputs give
    zero in both, as in the operator. Computed in ``x``'s dtype (float32, or float64 as the
    kernels do for float64 inputs)."""
    v, y, s, z, inv_s = fake_quantize_aten(x, scale.reshape(()), zero_point.reshape(()),
                                           quant_min, quant_max)
    below = v < quant_min
    above = v > quant_max
    inside = (v >= quant_min) & (v <= quant_max)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    m_s = torch.where(inside, (y - x) * inv_s,
                      torch.where(below, quant_min - z, torch.where(above, quant_max - z, zero)))
    m_z = torch.where(below | above, -s, zero)
    return m_s, m_z


class InputScaleAdjointConv2d(torch.autograd.Function):
    """``conv2d(fake_quantize_lsq(x), w, b)`` for an ``x`` that needs no gradient; the scale's and
    zero point's gradients by the adjoint identity (module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale, zero_point, quant_min: int, quant_max: int,
                grad_factor: float, min_scale: float, stride, padding, dilation, groups: int):
        # The straight-through floor of fake_quantize_lsq's min_scale: the maps use the floored
        # scale, and the gradient computed for it is returned for `scale` unchanged.
        if min_scale > 0.0:
            scale = scale.clamp_min(min_scale)
        y = torch.ops.torchqat.fake_quantize_lsq(x, scale, zero_point, quant_min, quant_max,
                                                 None, grad_factor)
        out = F.conv2d(y, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, y, weight, scale, zero_point)
        ctx.conv = (stride, padding, dilation, groups, bias is not None)
        ctx.qrange = (quant_min, quant_max, grad_factor)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, y, weight, scale, zero_point = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conv
        quant_min, quant_max, grad_factor = ctx.qrange
        need_w, need_b, need_s, need_z = ctx.needs_input_grad[1:5]
        grad_w = grad_b = grad_s = grad_z = None

        if need_w or (need_b and has_bias):
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, y, weight, [weight.size(0)] if has_bias else None, stride, padding,
                dilation, False, [0, 0], groups, [False, need_w, need_b and has_bias])

        if need_s or need_z:
            if torch.compiler.is_compiling():
                # The count of clipped elements is data: dense maps (module docstring).
                m_s, m_z = _dense_maps(x, scale, zero_point, quant_min, quant_max)
            else:
                # One pass over x: m_s, and the flat indices of the clipped elements (where m_z
                # is -s; it is zero everywhere else).
                m_s, clipped = torch.ops.torchqat.fake_quantize_lsq_input_maps(
                    x, scale, zero_point, quant_min, quant_max)
                m_z = None
            if need_s:
                total = _adjoint_sum(grad_out, m_s, weight, stride, padding, dilation, groups)
                grad_s = (total * grad_factor).reshape(scale.shape).to(scale.dtype)
            if need_z and m_z is not None:
                total = _adjoint_sum(grad_out, m_z, weight, stride, padding, dilation, groups)
                grad_z = (total * grad_factor).reshape(zero_point.shape).to(zero_point.dtype)
            elif need_z:
                s = scale.reshape(())
                grad_z = torch.zeros(zero_point.shape, dtype=torch.float32,
                                     device=zero_point.device)
                if clipped.numel() > 0:
                    if groups == 1 and clipped.numel() <= x.numel() // _SPARSE_FRACTION:
                        # The input gradient at just the few clipped positions instead of a
                        # convolution of the map.
                        positions = torch.stack(torch.unravel_index(clipped, x.shape), dim=1)
                        total = -s * _input_grad_at(grad_out, weight, positions, stride, padding,
                                                    dilation)
                    else:
                        m_z = torch.zeros(x.numel(), dtype=x.dtype, device=x.device) \
                            .index_fill_(0, clipped, 1.0).mul_(-s).view(x.shape)
                        total = _adjoint_sum(grad_out, m_z, weight, stride, padding, dilation,
                                             groups)
                    grad_z = (total * grad_factor).reshape(zero_point.shape)
                grad_z = grad_z.to(zero_point.dtype)
        return (None, grad_w, grad_b, grad_s, grad_z) + (None,) * 8


def uses_input_scale_adjoint(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``QuantConv2d.forward(x)`` takes :class:`InputScaleAdjointConv2d` (the
    conditions in the module docstring)."""
    q: Optional[nn.Module] = getattr(conv, "input_quantizer", None)
    return (
        type(x) is torch.Tensor  # not a FakeTensor, a Proxy or another subclass
        and not x.requires_grad
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.float64)
        and torch.is_grad_enabled()
        and isinstance(q, FakeQuantizer)
        and q.mode == "fake_quantize"
        and q.is_calibrated
        and q.learnable
        and q.axis is None
        and q.scale.requires_grad
        and conv.padding_mode == "zeros"
        and not (q._forward_hooks or q._forward_pre_hooks)
        and not nn.modules.module._global_forward_hooks
        and not nn.modules.module._global_forward_pre_hooks
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_exporting()
        and not torch.jit.is_tracing()
    )
