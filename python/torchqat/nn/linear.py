"""``QuantLinear``: ``y = fq(x; s_x, z_x) @ fq(W; s_w)^T + b``, keeping ``nn.Linear``'s parameters."""


import torch
import torch.nn.functional as F
from torch import nn

from .quant_module import DEFAULT_SPEC, QuantModuleMixin, SpecArg

__all__ = ["QuantLinear"]


class QuantLinear(QuantModuleMixin, nn.Linear):
    """``nn.Linear`` with ``weight_quantizer`` (per output feature by default) and
    ``input_quantizer`` (a per-channel activation spec quantizes per input feature, axis -1)."""

    _FLOAT_MODULE = nn.Linear

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 weight_spec: SpecArg = DEFAULT_SPEC, activation_spec: SpecArg = DEFAULT_SPEC):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._attach_quantizers(weight_spec, activation_spec)

    @classmethod
    def _float_kwargs(cls, m):
        return dict(in_features=m.in_features, out_features=m.out_features,
                    bias=m.bias is not None)

    def _input_axis(self) -> int:
        return -1

    def _input_channels(self) -> int:
        return self.in_features

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(input), self.weight_quantizer(self.weight), self.bias)
