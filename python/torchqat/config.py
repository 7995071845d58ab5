"""What to quantize and how: :class:`QuantSpec` describes one quantizer, :class:`QATConfig` a model.

Both validate themselves on construction and raise ``ValueError`` naming the field and the value,
so a bad configuration fails where it is written, not deep inside training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

__all__ = ["QuantSpec", "QATConfig", "OBSERVERS", "SpecOverride"]

#: Observer kinds a :class:`QuantSpec` may name (see ``torchqat.observers``).
OBSERVERS: Tuple[str, ...] = ("minmax", "moving_average", "percentile", "mse", "entropy", "lsq")

# Observers that only make sense for one scale per tensor.
_PER_TENSOR_ONLY_OBSERVERS = ("entropy",)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is fake-quantized.

    Args:
        bits: 2 to 16.
        symmetric: True: signed integers ``[-2^(b-1), 2^(b-1)-1]`` with zero point 0 (weights).
            False: unsigned ``[0, 2^b-1]`` with a zero point (activations).
        per_channel: one scale per slice along ``axis`` instead of one per tensor.
        axis: the channel axis of a per-channel spec. For weights ``None`` means the layer's
            output-channel axis (0 for Conv/Linear, 1 for ConvTranspose); an activation spec
            with ``per_channel=True`` must name it (1 for NCHW convolution inputs, -1 for
            Linear inputs).
        narrow_range: drop the most negative code, ``[-(2^(b-1)-1), 2^(b-1)-1]`` (symmetric
            only). The int8 weight default, so that ``-127..127`` products cannot saturate.
        learnable: the scale (and, when asymmetric, the zero point) are ``nn.Parameter`` s
            trained with LSQ / LSQ+ gradients; otherwise they are buffers fixed by calibration.
        observer: how calibration picks the initial scale: ``"minmax"``, ``"moving_average"``
            (min/max averaged over batches), ``"percentile"``, ``"mse"`` (minimises the
            quantization error), ``"entropy"`` (minimises KL divergence, per-tensor only) or
            ``"lsq"`` (``2 * mean|x| / sqrt(quant_max)``, LSQ's initialisation, zero point 0).
            ``None`` picks ``"minmax"`` for weights and ``"moving_average"`` for activations at
            6 bits or more, and ``"mse"`` for both below 6 bits, where clipping pays off.
        averaging_constant: the moving-average observer's weight of a new batch, in (0, 1].
        percentile: the percentile observer's coverage, in (0, 100].
        grad_factor: the factor on the learnable scale's gradient; ``None`` is LSQ's
            ``1 / sqrt(numel_per_scale * quant_max)``, computed per call.
    """

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    axis: Optional[int] = None
    narrow_range: bool = False
    learnable: bool = False
    observer: Optional[str] = None
    averaging_constant: float = 0.01
    percentile: float = 99.99
    grad_factor: Optional[float] = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "QuantSpec") -> None:
        """Raises ``ValueError`` naming ``where.field`` and the value when the spec is invalid."""
        if not _is_int(self.bits) or not 2 <= self.bits <= 16:
            raise ValueError(f"{where}.bits must be an integer in [2, 16], got {self.bits!r}")
        for name in ("symmetric", "per_channel", "narrow_range", "learnable"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ValueError(f"{where}.{name} must be a bool, got {v!r}")
        if self.axis is not None and not _is_int(self.axis):
            raise ValueError(f"{where}.axis must be an integer or None, got {self.axis!r}")
        if self.axis is not None and not self.per_channel:
            raise ValueError(
                f"{where}.axis is only meaningful with per_channel=True, got axis={self.axis} "
                "and per_channel=False"
            )
        if self.narrow_range and not self.symmetric:
            raise ValueError(
                f"{where}.narrow_range applies to symmetric (signed) quantization only, got "
                "narrow_range=True with symmetric=False"
            )
        if self.observer is not None and self.observer not in OBSERVERS:
            raise ValueError(
                f"{where}.observer must be one of {', '.join(OBSERVERS)} or None, "
                f"got {self.observer!r}"
            )
        if self.per_channel and self.observer in _PER_TENSOR_ONLY_OBSERVERS:
            raise ValueError(
                f"{where}.observer {self.observer!r} is per-tensor only, got per_channel=True; "
                "use 'minmax', 'mse' or 'percentile' for per-channel weights"
            )
        if (
            not isinstance(self.averaging_constant, (int, float))
            or isinstance(self.averaging_constant, bool)
            or not 0.0 < self.averaging_constant <= 1.0
        ):
            raise ValueError(
                f"{where}.averaging_constant must be in (0, 1], got {self.averaging_constant!r}"
            )
        if (
            not isinstance(self.percentile, (int, float))
            or isinstance(self.percentile, bool)
            or not 0.0 < self.percentile <= 100.0
        ):
            raise ValueError(f"{where}.percentile must be in (0, 100], got {self.percentile!r}")
        if self.grad_factor is not None and (
            not isinstance(self.grad_factor, (int, float))
            or isinstance(self.grad_factor, bool)
            or not math.isfinite(self.grad_factor)
            or self.grad_factor <= 0
        ):
            raise ValueError(
                f"{where}.grad_factor must be a finite float > 0 or None, got {self.grad_factor!r}"
            )

    @property
    def quant_min(self) -> int:
        if self.symmetric:
            return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)
        return 0

    @property
    def quant_max(self) -> int:
        if self.symmetric:
            return 2 ** (self.bits - 1) - 1
        return 2**self.bits - 1

    def observer_kind(self, role: str) -> str:
        """The observer calibration uses for this spec in ``role`` ("weight" or "activation")."""
        if self.observer is not None:
            return self.observer
        if self.bits < 6:
            return "mse"
        return "minmax" if role == "weight" else "moving_average"

    def describe(self) -> str:
        """A short human description, e.g. ``int8 symmetric per-channel(axis=0) narrow``."""
        scheme = "symmetric" if self.symmetric else "affine"
        gran = f"per-channel(axis={self.axis})" if self.per_channel else "per-tensor"
        parts = [f"{'int' if self.symmetric else 'uint'}{self.bits}", scheme, gran]
        if self.narrow_range:
            parts.append("narrow")
        if self.learnable:
            parts.append("learnable")
        return " ".join(parts)


#: What an override may give for one role: a full spec (replaces the base), a dict of fields
#: (merged into the base with ``dataclasses.replace``), or None (that tensor stays in float).
SpecOverride = Union[QuantSpec, Mapping[str, Any], None]

_ROLES = ("weight", "activation")


def _default_weight() -> QuantSpec:
    return QuantSpec(bits=8, symmetric=True, per_channel=True, narrow_range=True, learnable=True)


def _default_activation() -> QuantSpec:
    return QuantSpec(bits=8, symmetric=False, per_channel=False, learnable=True)


@dataclass
class QATConfig:
    """The quantization of a whole model, for :func:`torchqat.prepare_qat`.

    Args:
        weight: spec of every weight quantizer (default: int8 symmetric per-channel narrow
            range, learnable). ``None``: weights stay in float.
        activation: spec of every layer-input quantizer (default: uint8 affine per-tensor,
            learnable). ``None``: inputs stay in float.
        skip: glob patterns (``fnmatch``, ``*`` also crosses dots) of module names left in
            float. A pattern that names a container skips everything inside it.
        overrides: glob pattern → ``{"weight": ..., "activation": ...}``; each value is a
            :class:`QuantSpec` (replaces the base spec), a dict of fields merged into the base
            spec (``{"bits": 4}``), or ``None`` (that tensor stays in float). When several
            patterns match a layer they apply in insertion order, later ones winning.
    """

    weight: Optional[QuantSpec] = field(default_factory=_default_weight)
    activation: Optional[QuantSpec] = field(default_factory=_default_activation)
    skip: List[str] = field(default_factory=list)
    overrides: Dict[str, Dict[str, SpecOverride]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.skip, str):
            self.skip = [self.skip]
        self.skip = list(self.skip)
        self.overrides = dict(self.overrides)
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` naming the field and the value when the config is invalid."""
        check_role_spec(self.weight, "weight", "QATConfig.weight")
        check_role_spec(self.activation, "activation", "QATConfig.activation")
        for i, pattern in enumerate(self.skip):
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"QATConfig.skip[{i}] must be a non-empty string, got {pattern!r}")
        for pattern, change in self.overrides.items():
            where = f"QATConfig.overrides[{pattern!r}]"
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(
                    f"QATConfig.overrides keys must be non-empty glob strings, got {pattern!r}"
                )
            if not isinstance(change, Mapping):
                raise ValueError(
                    f"{where} must be a dict with keys 'weight' and/or 'activation', got {change!r}"
                )
            for role in change:
                if role not in _ROLES:
                    raise ValueError(
                        f"{where} has key {role!r}; allowed keys are 'weight' and 'activation'"
                    )
            # Resolve against the base specs once, so mistakes surface at construction.
            for role in change:
                self.resolve(role, [pattern])

    def resolve(self, role: str, matching_overrides: List[str]) -> Optional[QuantSpec]:
        """The spec of ``role`` for a layer matched by the override patterns ``matching_overrides``
        (in the config's order)."""
        spec = self.weight if role == "weight" else self.activation
        for pattern in self.overrides:
            if pattern not in matching_overrides or role not in self.overrides[pattern]:
                continue
            change = self.overrides[pattern][role]
            where = f"QATConfig.overrides[{pattern!r}][{role!r}]"
            if change is None or isinstance(change, QuantSpec):
                spec = change
            elif isinstance(change, Mapping):
                base = spec if spec is not None else (
                    _default_weight() if role == "weight" else _default_activation()
                )
                known = {f.name for f in dataclasses.fields(QuantSpec)}
                for key in change:
                    if key not in known:
                        raise ValueError(
                            f"{where} has unknown QuantSpec field {key!r}; fields are "
                            f"{', '.join(sorted(known))}"
                        )
                try:
                    spec = dataclasses.replace(base, **dict(change))
                except ValueError as err:
                    raise ValueError(f"{where}: {err}") from None
            else:
                raise ValueError(
                    f"{where} must be a QuantSpec, a dict of QuantSpec fields or None, "
                    f"got {change!r}"
                )
            check_role_spec(spec, role, where)
        return spec


def check_role_spec(spec: Optional[QuantSpec], role: str, where: str) -> None:
    """Checks what only the role knows: an activation spec that is per-channel needs an axis."""
    if spec is None:
        return
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"{where} must be a QuantSpec or None, got {spec!r}")
    spec.validate(where)
    if role == "activation" and spec.per_channel and spec.axis is None:
        raise ValueError(
            f"{where}.axis: a per-channel activation spec needs an axis (1 for convolution "
            "inputs in NCHW, -1 for Linear inputs), got axis=None"
        )
