"""Quantized training convolutions: the float convolution applied to a fake-quantized input and a
fake-quantized weight, ``y = conv(fq(x; s_x, z_x), fq(W; s_w)) + b``. The parameters, the
hyper-parameters (stride, padding and padding mode, dilation, groups, bias or not) and the forward
of the float module are kept; ``isinstance(QuantConv2d(...), nn.Conv2d)`` holds."""


from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .input_scale_grad import InputScaleAdjointConv2d, uses_input_scale_adjoint
from .quant_module import DEFAULT_SPEC, QuantModuleMixin, SpecArg

__all__ = ["QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantConvTranspose2d"]


def _conv_kwargs(module) -> dict:
    return dict(
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        kernel_size=module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )


class QuantConv1d(QuantModuleMixin, nn.Conv1d):
    """``nn.Conv1d`` with ``weight_quantizer`` (per output channel by default) and
    ``input_quantizer``. Build one with ``QuantConv1d.from_float(conv, weight_spec,
    activation_spec)`` or with ``nn.Conv1d``'s arguments plus the two specs."""

    _FLOAT_MODULE = nn.Conv1d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 weight_spec: SpecArg = DEFAULT_SPEC, activation_spec: SpecArg = DEFAULT_SPEC):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self._attach_quantizers(weight_spec, activation_spec)

    @classmethod
    def _float_kwargs(cls, m):
        return _conv_kwargs(m)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(input), self.weight_quantizer(self.weight),
                                  self.bias)


class QuantConv2d(QuantModuleMixin, nn.Conv2d):
    """``nn.Conv2d`` with ``weight_quantizer`` and ``input_quantizer`` (see ``QuantConv1d``)."""

    _FLOAT_MODULE = nn.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 weight_spec: SpecArg = DEFAULT_SPEC, activation_spec: SpecArg = DEFAULT_SPEC):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self._attach_quantizers(weight_spec, activation_spec)

    @classmethod
    def _float_kwargs(cls, m):
        return _conv_kwargs(m)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if uses_input_scale_adjoint(self, input):
                return self._forward_input_scale_adjoint(input)
        return self._conv_forward(self.input_quantizer(input), self.weight_quantizer(self.weight),
                                  self.bias)

    @torch.jit.unused
    def _forward_input_scale_adjoint(self, input: torch.Tensor) -> torch.Tensor:
        # An input that needs no gradient (the model's image): the learnable input scale's
        # gradient without the convolution's input gradient (nn/input_scale_grad.py).
        q = self.input_quantizer
        return InputScaleAdjointConv2d.apply(
            input, self.weight_quantizer(self.weight), self.bias, q.scale, q.zero_point,
            q.quant_min, q.quant_max, q.lsq_grad_factor(input), q.min_scale, self.stride,
            self.padding, self.dilation, self.groups)


class QuantConv3d(QuantModuleMixin, nn.Conv3d):
    """``nn.Conv3d`` with ``weight_quantizer`` and ``input_quantizer`` (see ``QuantConv1d``)."""

    _FLOAT_MODULE = nn.Conv3d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 weight_spec: SpecArg = DEFAULT_SPEC, activation_spec: SpecArg = DEFAULT_SPEC):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self._attach_quantizers(weight_spec, activation_spec)

    @classmethod
    def _float_kwargs(cls, m):
        return _conv_kwargs(m)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(input), self.weight_quantizer(self.weight),
                                  self.bias)


class QuantConvTranspose2d(QuantModuleMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with ``weight_quantizer`` and ``input_quantizer``.

    The weight is ``[in_channels, out_channels / groups, kH, kW]``, so its output channels lie on
    axis 1 (the per-channel default). With ``groups > 1`` and a per-channel weight spec, axis 1
    alone does not name an output channel; the quantizer then sees the weight regrouped to
    ``[in_channels / groups, out_channels, kH, kW]`` (``weight_to_quantize``), one scale per
    output channel, and the result is laid back out before the convolution.
    """

    _FLOAT_MODULE = nn.ConvTranspose2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None, *, weight_spec: SpecArg = DEFAULT_SPEC,
                 activation_spec: SpecArg = DEFAULT_SPEC):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding,
                         groups, bias, dilation, padding_mode, device, dtype)
        self.regroup_weight: bool = False
        self._attach_quantizers(weight_spec, activation_spec)

    @classmethod
    def _float_kwargs(cls, m):
        kwargs = _conv_kwargs(m)
        kwargs["output_padding"] = m.output_padding
        return kwargs

    def _weight_axis(self) -> int:
        return 1

    def _attach_quantizers(self, weight_spec, activation_spec) -> None:
        # Regrouping applies only to a per-channel weight spec of a grouped convolution.
        from .quant_module import _resolve_default

        spec = _resolve_default(weight_spec, "weight")
        self.regroup_weight = bool(spec is not None and spec.per_channel and self.groups > 1)
        if self.regroup_weight and spec.axis not in (None, 1):
            raise ValueError(
                "QuantConvTranspose2d: with groups > 1 a per-channel weight is quantized per "
                f"output channel (axis 1 of the regrouped weight), got weight_spec.axis={spec.axis}"
            )
        super()._attach_quantizers(weight_spec, activation_spec)

    def weight_to_quantize(self) -> torch.Tensor:
        if not self.regroup_weight:
            return self.weight
        w = self.weight
        g = self.groups
        shape = w.shape
        # [in, out/g, kH, kW] -> [g, in/g, out/g, kH, kW] -> [in/g, g, out/g, kH, kW]
        # -> [in/g, out, kH, kW]: output channel o = group * out/g + j on axis 1.
        w = w.reshape(g, shape[0] // g, shape[1], shape[2], shape[3]).transpose(0, 1)
        return w.reshape(shape[0] // g, g * shape[1], shape[2], shape[3])

    def _quantized_weight(self) -> torch.Tensor:
        if not self.regroup_weight:
            return self.weight_quantizer(self.weight)
        shape = self.weight.shape
        g = self.groups
        wq = self.weight_quantizer(self.weight_to_quantize())
        wq = wq.reshape(shape[0] // g, g, shape[1], shape[2], shape[3]).transpose(0, 1)
        return wq.reshape(shape[0], shape[1], shape[2], shape[3])

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        assert isinstance(self.padding, tuple)
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2,  # type: ignore[arg-type]
            self.dilation)  # type: ignore[arg-type]
        return F.conv_transpose2d(self.input_quantizer(input), self._quantized_weight(),
                                  self.bias, self.stride, self.padding, output_padding,
                                  self.groups, self.dilation)
