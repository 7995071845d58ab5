"""``FakeQuantizer``: the module that owns one quantizer — its spec, scale, zero point and observer.

Modes (``FakeQuantizer.mode``):

``"fake_quantize"``  (default) ``y = fake_quantize(x; scale, zero_point)``.
``"observe"``        feed ``x`` to the observer and return ``x`` unchanged (calibration).
``"pass_through"``   return ``x`` unchanged.

Learnable scales (and zero points of affine specs) are ``nn.Parameter`` s trained with the LSQ / LSQ+
gradients of ``torch.ops.torchqat.fake_quantize_lsq``; fixed ones are buffers and use
``torch.ops.torchqat.fake_quantize`` (gradient to the input only).

Positivity of a learnable scale: the forward uses ``max(scale, MIN_SCALE)`` through a
straight-through floor, ``fake_quantize_lsq``'s ``min_scale`` argument (inside the operator's one
autograd node; the same as ``scale.clamp_min(MIN_SCALE).detach() + (scale - scale.detach())``
and as ``torch.ops.torchqat.clamp_min_ste``). Its value is exactly the clamped scale (so the operator's ``scale > 0`` check can never fire and no
device value is read on the host) and its gradient reaches ``scale`` unchanged, so a scale that an
optimizer pushed below the floor keeps receiving gradient and can recover — unlike a plain
``clamp``, whose gradient is zero there, or ``abs(scale) + eps``, which shifts every scale.
``effective_scale()`` returns what the forward uses; conversion must use it too.

A learnable quantizer whose input comes straight from a SiLU (``x = silu(t)``, as after every YOLO
``Conv`` block) calls ``fake_quantize_lsq_after_silu(x.detach(), t, ...)`` in eager mode on the
CPU (conditions: :func:`silu_pre_activation`): the same forward, and a backward that writes the
gradient with respect to ``t`` in one pass instead of LSQ's pass followed by SiLU's. A profile
shows the fused operator where SiLU's backward used to run.

Under ``torch.compile`` (not ``torch.export``), a learnable per-tensor quantizer of a float32 CPU
tensor computes its forward with ATen operators (:class:`FakeQuantizeLsqTraceable`: the
operator's formula, the same bits) and its backward with ``fake_quantize_lsq_backward``. Inductor
then fuses the fake quantization into the neighbouring element-wise kernels and keeps their
memory layout; the opaque operator made it lay each quantized activation out anew before and
after the call (docs/benchmarks.md, session 12).
"""


import logging
import math
from typing import Optional, Tuple

import torch
from torch import nn

from . import _ops  # noqa: F401  (loads the operator library)
from .config import QuantSpec
from .observers import MIN_SCALE, make_observer

__all__ = ["FakeQuantizer", "FakeQuantizeLsqTraceable", "MODES"]

logger = logging.getLogger("torchqat")

#: The modes of a :class:`FakeQuantizer`.
MODES = ("fake_quantize", "observe", "pass_through")


_top_saved_tensors_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


def _saved_tensors_hooks_active() -> bool:
    # torch.autograd.graph.saved_tensors_hooks (activation checkpointing) in force; where torch
    # cannot tell, assume they are.
    return _top_saved_tensors_hooks is None or _top_saved_tensors_hooks(False) is not None


def silu_pre_activation(x: torch.Tensor) -> Optional[torch.Tensor]:
    """The input ``t`` of the SiLU that produced ``x`` (``x = silu(t)``, ``x.grad_fn`` is SiLU's
    autograd node), where a learnable quantizer may take
    ``torch.ops.torchqat.fake_quantize_lsq_after_silu(x.detach(), t, ...)`` instead of
    ``fake_quantize_lsq(x, ...)``; else ``None``.

    The value is the same; the gradient reaches ``t`` through the quantizer's own node, whose
    backward computes LSQ's and SiLU's in one pass (CPU). Other users of ``x`` still reach ``t``
    through SiLU's node, and autograd adds the two. Taken only where nothing can observe the
    difference: eager mode on the CPU (not compiled, traced or scripted), no saved-tensor hooks
    (activation checkpointing), and no hook or ``retain_grad`` on ``x``, which the fused
    gradient bypasses.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None  # first: torch.compile would break the graph at grad_fn
    fn = x.grad_fn
    if fn is None or type(fn).__name__ != "SiluBackward0":
        return None
    if (type(x) is not torch.Tensor  # not a FakeTensor, a Proxy or another subclass
            or x.device.type != "cpu"
            or not torch.is_grad_enabled()
            or x.retains_grad
            or x._backward_hooks
            or _saved_tensors_hooks_active()):
        return None
    try:
        pre = fn._saved_self
    except RuntimeError:  # modified in place since SiLU saved it
        return None
    if type(pre) is not torch.Tensor or pre.shape != x.shape or pre.dtype != x.dtype:
        return None
    return pre


def uses_traceable_lsq(x: torch.Tensor, axis: Optional[int]) -> bool:
    """Whether a learnable quantizer takes :class:`FakeQuantizeLsqTraceable` for ``x``: while
    ``torch.compile`` traces (not ``torch.export``, whose graphs keep torchqat's operators), for a
    per-tensor quantizer of a float32 CPU tensor."""
    return (axis is None
            and torch.compiler.is_compiling()
            and not torch.compiler.is_exporting()
            and x.device.type == "cpu"
            and x.dtype == torch.float32)


def fake_quantize_aten(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                       quant_min: int, quant_max: int):
    """The fake-quant operators' forward in ATen operators, in ``csrc/core/fake_quant.h``'s order
    and in ``x``'s dtype (the kernels compute float64 inputs in float64), for graphs Inductor
    fuses. ``scale`` is used as given (floor it first). Returns ``(v, y, s, z, inv_s)``: ``v =
    round_half_even(x * inv_s) + z`` before the clamp (for the in-range masks of LSQ's
    gradients), ``y = (clamp(v, quant_min, quant_max) - z) * s``, and the scale, the zero point
    (rounded half to even, clamped) and ``inv_s = 1 / s`` in ``x``'s dtype."""
    s = scale.to(x.dtype)
    z = torch.round(zero_point.to(x.dtype)).clamp(quant_min, quant_max)
    inv_s = torch.reciprocal(s)
    v = torch.round(x * inv_s) + z
    return v, (v.clamp(quant_min, quant_max) - z) * s, s, z, inv_s


class FakeQuantizeLsqTraceable(torch.autograd.Function):
    """``torch.ops.torchqat.fake_quantize_lsq`` for a per-tensor float32 CPU input, with the
    forward in ATen operators that Inductor can fuse (:func:`fake_quantize_aten`), with ``s =
    max(scale, min_scale)`` (the straight-through floor). Same bits as
    the operator, NaN and infinities included (tests/test_quantizers.py). The backward is the
    operator's own, ``fake_quantize_lsq_backward``; the floored scale's gradient goes to ``scale``
    unchanged. Value checks the operator makes on the host (a positive, finite scale; a finite
    zero point) are runtime assertions here."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, quant_min: int, quant_max: int, grad_factor: float,
                min_scale: float):
        s = scale.clamp_min(min_scale) if min_scale > 0.0 else scale
        torch._assert_async(
            (torch.isfinite(s) & (s > 0)).all() & torch.isfinite(zero_point).all(),
            "fake_quantize_lsq: scale must be positive and finite and zero_point finite")
        ctx.save_for_backward(x, s, zero_point)
        ctx.qparams = (quant_min, quant_max, grad_factor)
        return fake_quantize_aten(x, s, zero_point, quant_min, quant_max)[1]

    @staticmethod
    def backward(ctx, grad):
        x, s, zero_point = ctx.saved_tensors
        quant_min, quant_max, grad_factor = ctx.qparams
        dx, dscale, dzero_point = torch.ops.torchqat.fake_quantize_lsq_backward(
            grad, x, s, zero_point, quant_min, quant_max, None, grad_factor)
        if not ctx.needs_input_grad[2]:
            dzero_point = None
        return dx, dscale, dzero_point, None, None, None, None


class FakeQuantizer(nn.Module):
    """Fake-quantizes one tensor as ``spec`` says.

    Args:
        spec: the :class:`QuantSpec`. A per-channel spec must carry its ``axis`` here (the
            quantized modules fill in the weight's output-channel axis).
        num_channels: the size of ``spec.axis`` of the quantized tensor (per-channel only).
        role: ``"weight"`` or ``"activation"``; picks the default observer.
        device: where the scale and zero point live.

    Attributes:
        scale: float32, ``[num_channels]`` (per-channel) or ``[1]``; a parameter when learnable.
        zero_point: ``[num_channels]`` or ``[1]``; a float parameter when learnable and affine,
            else an int32 buffer.
        calibrated: uint8 buffer, 1 once the scale was set by calibration or loaded.
        observer: the :class:`torchqat.observers.Observer` calibration feeds.
    """

    def __init__(
        self,
        spec: QuantSpec,
        num_channels: Optional[int] = None,
        role: str = "activation",
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise ValueError(f"FakeQuantizer: spec must be a QuantSpec, got {spec!r}")
        if role not in ("weight", "activation"):
            raise ValueError(f"FakeQuantizer: role must be 'weight' or 'activation', got {role!r}")
        if spec.per_channel:
            if spec.axis is None:
                raise ValueError("FakeQuantizer: a per-channel spec needs an axis, got axis=None")
            if num_channels is None or num_channels < 1:
                raise ValueError(
                    "FakeQuantizer: a per-channel spec needs num_channels >= 1, got "
                    f"{num_channels!r}"
                )
        else:
            if num_channels not in (None, 1):
                raise ValueError(
                    f"FakeQuantizer: a per-tensor spec has one scale, got num_channels={num_channels}"
                )
            num_channels = 1
        self.spec = spec
        self.role = role
        self.quant_min: int = spec.quant_min
        self.quant_max: int = spec.quant_max
        self.axis: Optional[int] = spec.axis if spec.per_channel else None
        self.learnable: bool = spec.learnable
        # <= 0: LSQ's 1/sqrt(numel_per_scale * quant_max), computed per call.
        self.grad_factor: float = float(spec.grad_factor) if spec.grad_factor is not None else -1.0
        self.min_scale: float = MIN_SCALE
        self.mode: str = "fake_quantize"
        self.is_calibrated: bool = False

        scale = torch.ones(num_channels, dtype=torch.float32, device=device)
        if spec.learnable:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        if spec.learnable and not spec.symmetric:
            self.zero_point = nn.Parameter(
                torch.zeros(num_channels, dtype=torch.float32, device=device))
        else:
            self.register_buffer(
                "zero_point", torch.zeros(num_channels, dtype=torch.int32, device=device))
        self.register_buffer("calibrated", torch.zeros(1, dtype=torch.uint8, device=device))

        self.observer_kind = spec.observer_kind(role)
        self.observer = make_observer(
            self.observer_kind,
            self.quant_min,
            self.quant_max,
            spec.symmetric,
            axis=self.axis,
            num_channels=num_channels,
            averaging_constant=spec.averaging_constant,
            percentile=spec.percentile,
        )

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fake_quantize":
            if not self.is_calibrated:
                self._initialize_from(x)
            return self._fake_quantize(x)
        if self.mode == "observe":
            self._observe(x)
        return x

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.learnable:
            if not torch.jit.is_scripting():
                if uses_traceable_lsq(x, self.axis):
                    # torch.compile: a forward Inductor can fuse (module doc).
                    return FakeQuantizeLsqTraceable.apply(
                        x, self.scale, self.zero_point, self.quant_min, self.quant_max,
                        self.lsq_grad_factor(x), self.min_scale)
                pre = silu_pre_activation(x)
                if pre is not None:
                    # x = silu(pre): the same value; the backward fuses SiLU's (module doc).
                    return torch.ops.torchqat.fake_quantize_lsq_after_silu(
                        x.detach(), pre, self.scale, self.zero_point, self.quant_min,
                        self.quant_max, self.axis, self.lsq_grad_factor(x), self.min_scale
                    )
            # The straight-through floor max(scale, MIN_SCALE) inside the operator (module doc).
            return torch.ops.torchqat.fake_quantize_lsq(
                x, self.scale, self.zero_point, self.quant_min, self.quant_max, self.axis,
                self.lsq_grad_factor(x), self.min_scale
            )
        return torch.ops.torchqat.fake_quantize(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max, self.axis
        )

    def lsq_grad_factor(self, x: torch.Tensor) -> float:
        """The factor on the learnable scale's and zero point's gradients for input ``x``: the
        spec's ``grad_factor``, or LSQ's ``1 / sqrt(elements per scale * quant_max)``."""
        grad_factor = self.grad_factor
        if grad_factor <= 0.0:
            per_scale = max(x.numel() // self.scale.numel(), 1)
            grad_factor = 1.0 / math.sqrt(per_scale * self.quant_max)
        return grad_factor

    @torch.jit.unused
    def _observe(self, x: torch.Tensor) -> None:
        self.observer.observe(x)

    @torch.jit.unused
    def _initialize_from(self, x: torch.Tensor) -> None:
        # Eager fallback for a quantizer that calibration never reached (a branch not taken) or a
        # model trained without calibrate(): initialise from this first tensor.
        logger.warning(
            "torchqat: FakeQuantizer (%s, %s) was not calibrated; initialising its scale from the "
            "first tensor it sees. Run torchqat.calibrate(model, batches) for a better start.",
            self.role, self.spec.describe())
        self.observer.reset()
        self.observer.observe(x)
        self.set_qparams(*self.observer.compute_qparams())
        self.observer.reset()

    # -- calibration API ---------------------------------------------------------------------------

    def set_mode(self, mode: str) -> "FakeQuantizer":
        if mode not in MODES:
            raise ValueError(f"FakeQuantizer.set_mode: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        return self

    def observe(self, x: torch.Tensor) -> None:
        """Feeds ``x`` to the observer whatever the mode."""
        self.observer.observe(x)

    def reset_observer(self) -> None:
        self.observer.reset()

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Sets the scale and zero point (in place, so optimizers and DDP keep their references)
        and marks the quantizer calibrated."""
        self.scale.copy_(scale.reshape(self.scale.shape))
        self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))
        self.calibrated.fill_(1)
        self.is_calibrated = True

    def compute_qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The observer's choice of ``(scale, zero_point)``."""
        return self.observer.compute_qparams()

    def load_observer_qparams(self) -> None:
        """Sets scale and zero point from what the observer collected."""
        self.set_qparams(*self.observer.compute_qparams())

    def effective_scale(self) -> torch.Tensor:
        """The scale the forward uses (learnable scales are floored at ``MIN_SCALE``)."""
        return self.scale.detach().clamp_min(MIN_SCALE)

    def effective_zero_point(self) -> torch.Tensor:
        """The integer zero point the forward uses (learnable ones are rounded and clamped)."""
        zp = self.zero_point.detach()
        if zp.is_floating_point():
            zp = torch.round(zp).clamp(self.quant_min, self.quant_max)
        return zp.to(torch.int32)

    # -- state dict --------------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "calibrated"
        if key in state_dict:
            self.is_calibrated = bool(int(state_dict[key].reshape(-1)[0]))

    def extra_repr(self) -> str:
        parts = [f"bits={self.spec.bits}", f"scheme={self.spec.describe()}",
                 f"range=[{self.quant_min}, {self.quant_max}]", f"observer={self.observer_kind}"]
        if self.mode != "fake_quantize":
            parts.append(f"mode={self.mode}")
        if self.is_calibrated and self.scale.device.type != "meta":
            s = self.effective_scale()
            parts.append(f"scale=[{s.min().item():.4g}, {s.max().item():.4g}]")
        else:
            parts.append("scale=uncalibrated")
        return ", ".join(parts)
