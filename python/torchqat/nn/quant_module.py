"""What every quantized training module shares: building its two quantizers from specs, and
``from_float``, which turns a float layer into its quantized twin without copying its weights."""


import dataclasses
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ..config import QATConfig, QuantSpec, check_role_spec
from ..quantizers import FakeQuantizer

__all__ = ["QuantModuleMixin", "DEFAULT_SPEC"]

#: Stands for "the default of ``QATConfig``" in the modules' ``weight_spec`` / ``activation_spec``
#: arguments (``None`` there means "leave that tensor in float").
DEFAULT_SPEC = "default"

SpecArg = Union[QuantSpec, None, str]


def _resolve_default(spec: SpecArg, role: str) -> Optional[QuantSpec]:
    if isinstance(spec, str):
        if spec != DEFAULT_SPEC:
            raise ValueError(f"{role}_spec must be a QuantSpec, None or 'default', got {spec!r}")
        defaults = QATConfig()
        return defaults.weight if role == "weight" else defaults.activation
    return spec


class QuantModuleMixin:
    """Mixed into ``QuantConv*`` / ``QuantLinear`` (before the float class). Subclasses set
    ``_FLOAT_MODULE`` and implement ``_float_kwargs``; they may override the axis helpers."""

    _FLOAT_MODULE = nn.Module

    # -- layout facts of the layer ---------------------------------------------------------------

    def _weight_axis(self) -> int:
        """The output-channel axis of ``weight_to_quantize()``."""
        return 0

    def _input_axis(self) -> int:
        """The channel axis of the layer's input."""
        return 1

    def _input_channels(self) -> int:
        return self.in_channels  # type: ignore[attr-defined]

    @classmethod
    def _float_kwargs(cls, module: nn.Module) -> Dict[str, Any]:
        raise NotImplementedError

    def weight_to_quantize(self) -> torch.Tensor:
        """The tensor the weight quantizer sees (the weight, for all but grouped transposed
        convolutions)."""
        return self.weight

    # -- quantizers ------------------------------------------------------------------------------

    def _attach_quantizers(self, weight_spec: SpecArg, activation_spec: SpecArg) -> None:
        name = type(self).__name__
        weight_spec = _resolve_default(weight_spec, "weight")
        activation_spec = _resolve_default(activation_spec, "activation")
        check_role_spec(weight_spec, "weight", f"{name} weight_spec")
        check_role_spec(activation_spec, "activation", f"{name} activation_spec")
        device = self.weight.device

        if weight_spec is None:
            self.weight_quantizer = nn.Identity()
        else:
            num_channels = None
            if weight_spec.per_channel:
                w = self.weight_to_quantize()
                axis = weight_spec.axis
                if axis is None:
                    axis = self._weight_axis()
                    weight_spec = dataclasses.replace(weight_spec, axis=axis)
                elif not -w.dim() <= axis < w.dim():
                    raise ValueError(
                        f"{name}: weight_spec.axis must be in [{-w.dim()}, {w.dim() - 1}] for a "
                        f"weight of shape {tuple(w.shape)}, got {axis}"
                    )
                num_channels = w.size(axis)
            self.weight_quantizer = FakeQuantizer(weight_spec, num_channels, "weight", device)

        if activation_spec is None:
            self.input_quantizer = nn.Identity()
        else:
            num_channels = None
            if activation_spec.per_channel:
                expected = self._input_axis()
                if activation_spec.axis != expected:
                    raise ValueError(
                        f"{name}: activation_spec.axis must be {expected} (the input's channel "
                        f"axis), got {activation_spec.axis}"
                    )
                num_channels = self._input_channels()
            self.input_quantizer = FakeQuantizer(activation_spec, num_channels, "activation",
                                                 device)

    @torch.no_grad()
    def init_weight_quantizer(self) -> None:
        """Sets the weight quantizer's scale from the current weight with its observer."""
        q = self.weight_quantizer
        if isinstance(q, FakeQuantizer):
            q.reset_observer()
            q.observe(self.weight_to_quantize())
            q.load_observer_qparams()
            q.reset_observer()

    @classmethod
    def from_float(cls, module: nn.Module, weight_spec: SpecArg = DEFAULT_SPEC,
                   activation_spec: SpecArg = DEFAULT_SPEC):
        """The quantized twin of ``module``: same hyper-parameters, the *same* parameter objects
        (no copy: ``prepare_qat`` deep-copies the model first), forward hooks, training flag,
        and a weight quantizer already initialised from the weight. ``None`` for a spec leaves
        that tensor in float."""
        if not isinstance(module, cls._FLOAT_MODULE):
            raise ValueError(
                f"{cls.__name__}.from_float: expected a {cls._FLOAT_MODULE.__name__}, got "
                f"{type(module).__name__}"
            )
        qmodule = cls(**cls._float_kwargs(module), device="meta", dtype=module.weight.dtype,
                      weight_spec=None, activation_spec=None)
        qmodule.weight = module.weight
        qmodule.bias = module.bias
        qmodule._attach_quantizers(weight_spec, activation_spec)
        qmodule.train(module.training)
        for hooks in ("_forward_pre_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
                      "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            if hasattr(module, hooks):
                getattr(qmodule, hooks).update(getattr(module, hooks))
        qmodule.init_weight_quantizer()
        return qmodule

    def quantizers(self):
        """``(weight_quantizer, input_quantizer)``; either may be ``nn.Identity``."""
        return self.weight_quantizer, self.input_quantizer
