"""Exporting torchqat models: ONNX with QuantizeLinear / DequantizeLinear, and TorchScript.

``export_onnx(qat_model, example_inputs, path)`` writes a QAT model (prepared and calibrated, or
trained) as an ONNX "QDQ" graph, the form ONNX Runtime, TensorRT and OpenVINO read as an INT8
model:

- every activation fake-quantizer becomes ``QuantizeLinear -> DequantizeLinear`` with the
  quantizer's scale and zero point (uint8 for a range inside ``[0, 255]``, int8 inside
  ``[-128, 127]``, int16 from opset 21); a range narrower than its type's (7 or 4 bits,
  ``[-127, 127]``) is clamped first by a ``Clip`` (per-channel: ``Max`` / ``Min``) to the
  dequantized range ends, which makes the graph clamp exactly where the QAT model clamps;
- every weight fake-quantizer is folded: the graph holds the int8 weight codes as an initializer
  (the very integers QAT trained, computed with torchqat's own ``quantize``) and one
  ``DequantizeLinear`` with the per-channel scales on ``axis`` (0 for Conv/Linear weights);
- everything else (BatchNorm, activations, residual adds, concatenations, upsampling) is the float
  graph torch's exporter writes.

How: the model is deep-copied, and each ``FakeQuantizer`` is replaced by a small module that calls
``torch.ops.torchqat.quantize`` / ``dequantize`` with the quantizer's frozen effective scale and
zero point (or returns the dequantized int8 weight). Those two operators are translated to
``QuantizeLinear`` / ``DequantizeLinear`` by the exporter: with ``dynamo=True`` (torch's default
exporter, ``torch.export`` + onnxscript) through ``custom_translation_table``; with
``dynamo=False`` (the TorchScript exporter torch deprecates but still ships) through
``register_custom_op_symbolic``. Raw ``torch.ops.torchqat.fake_quantize`` /
``fake_quantize_lsq`` calls outside a ``FakeQuantizer`` are translated too (dynamo only; a
narrow range there is clipped with bounds computed in the graph). See
``docs/export_onnx.md`` for why this design, the tolerance against the QAT model, and the limits.

``export_torchscript(int8_model, path, example_inputs)`` scripts and saves a converted INT8 model,
and with example inputs checks that the saved file reproduces the eager output exactly.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ._ops import _quantized_dtype
from .nn.quant_module import QuantModuleMixin
from .quantizers import FakeQuantizer

__all__ = ["export_onnx", "export_torchscript", "onnx_activation_ranges",
           "onnx_exports_activation_range", "onnxruntime_session", "output_step"]

logger = logging.getLogger("torchqat")

PathLike = Union[str, "os.PathLike[str]"]

#: The ONNX integer types an activation ``QuantizeLinear`` may output: their full ranges, with the
#: type's name and the opset that introduced it. QuantizeLinear saturates to its type's range, so
#: an activation range inside one of these but narrower than it (7 or 4 bits, ``[-127, 127]``) is
#: exported with a float clamp in front (see ``_ExportQDQ``). Listed in the order a range picks
#: its type, the order ``torchqat.quantize`` picks its output dtype in.
_ACTIVATION_TYPES: Dict[Tuple[int, int], Tuple[str, int]] = {
    (0, 255): ("uint8", 13),
    (-128, 127): ("int8", 13),
    (-32768, 32767): ("int16", 21),   # uint16 would need torch.uint16 kernels torch lacks
}

#: The TorchScript exporter writes opsets up to this one.
_MAX_TORCHSCRIPT_OPSET = 20


def onnx_activation_ranges(opset: int) -> List[Tuple[int, int]]:
    """The full ranges ``(quant_min, quant_max)`` of the ONNX integer types an activation
    ``QuantizeLinear`` can output at ``opset``: ``[(0, 255), (-128, 127)]`` from opset 13, plus
    int16 ``(-32768, 32767)`` from opset 21.

    :func:`export_onnx` writes these as a bare ``QuantizeLinear -> DequantizeLinear`` pair, and
    any range inside one of them (7 or 4 bits, ``(-127, 127)``) with a ``Clip`` in front; use
    :func:`onnx_exports_activation_range` to ask whether a range exports."""
    return [r for r, (_, since) in _ACTIVATION_TYPES.items() if opset >= since]


def _activation_type_range(quant_min: int, quant_max: int,
                           opset: int) -> Optional[Tuple[int, int]]:
    """The full range of the first ONNX type (``_ACTIVATION_TYPES``' order) at ``opset`` that
    holds ``[quant_min, quant_max]``, or None."""
    for (lo, hi), (_, since) in _ACTIVATION_TYPES.items():
        if opset >= since and lo <= quant_min and quant_max <= hi:
            return lo, hi
    return None


def onnx_exports_activation_range(quant_min: int, quant_max: int, opset: int) -> bool:
    """Whether :func:`export_onnx` can write an activation quantizer with integer range
    ``[quant_min, quant_max]`` at ``opset``: the range must lie inside uint8 ``[0, 255]`` or int8
    ``[-128, 127]`` (from opset 13), or int16 ``[-32768, 32767]`` (from opset 21). A range
    narrower than its type's is exported exactly with a ``Clip`` before the ``QuantizeLinear``.
    """
    for name, value in (("quant_min", quant_min), ("quant_max", quant_max), ("opset", opset)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"onnx_exports_activation_range: {name} must be an integer, "
                             f"got {value!r}")
    if quant_min > quant_max:
        raise ValueError(f"onnx_exports_activation_range: quant_min must be <= quant_max, got "
                         f"[{quant_min}, {quant_max}]")
    return _activation_type_range(quant_min, quant_max, opset) is not None


# -- the modules that stand in for FakeQuantizers during export -----------------------------------


def _integer_zero_point(quantizer: FakeQuantizer, dtype: torch.dtype) -> torch.Tensor:
    return quantizer.effective_zero_point().to(dtype)


class _ExportQDQ(nn.Module):
    """``dequantize(quantize(x))`` with frozen quantization parameters: exported as
    ``QuantizeLinear -> DequantizeLinear``, with a clamp in front for a range narrower than its
    ONNX type's. Bit-identical to the ``FakeQuantizer`` it replaces (the same operators compute
    both; the clamp changes no code, see ``forward``)."""

    def __init__(self, quantizer: FakeQuantizer, name: str, opset: int) -> None:
        super().__init__()
        qmin, qmax = quantizer.quant_min, quantizer.quant_max
        type_range = _activation_type_range(qmin, qmax, opset)
        # _collect_quantizers refused the rest; the type is the one torchqat.quantize returns,
        # so the traced dtype and the ONNX QuantizeLinear's output type agree.
        dtype = _quantized_dtype(qmin, qmax)
        assert type_range is not None and dtype == _quantized_dtype(*type_range), (qmin, qmax)
        scale = quantizer.effective_scale().float()
        zero_point = _integer_zero_point(quantizer, dtype)
        if quantizer.axis is None:
            # ONNX reads a 1-D scale as per-axis; per-tensor scales must be scalars.
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", zero_point.clone())
        self.quant_min: int = qmin
        self.quant_max: int = qmax
        self.axis: Optional[int] = quantizer.axis
        self.source = name
        # The range ends dequantized, (q - z) * s in float32 as torchqat.dequantize forms them:
        # the values torchqat's clamp gives below and above the range.
        z = zero_point.to(torch.int32)
        self.narrow: bool = (qmin, qmax) != type_range
        self.register_buffer("clip_min", ((qmin - z).float() * scale).clone())
        self.register_buffer("clip_max", ((qmax - z).float() * scale).clone())
        # Per-tensor bounds as Python floats: torch.clamp with scalars exports as ONNX Clip in
        # both exporters (tensor bounds export as Max / Min, which per-channel bounds need).
        per_tensor = quantizer.axis is None
        self.clip_min_value: float = float(self.clip_min) if per_tensor else -float("inf")
        self.clip_max_value: float = float(self.clip_max) if per_tensor else float("inf")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.narrow:
            # QuantizeLinear saturates to its type's range only, so a narrower range is clamped
            # in float first, to lo = (qmin - z) * s and hi = (qmax - z) * s. Exact: for x < lo
            # the clamp gives lo, and lo / s (ONNX) or lo * (1/s) (torchqat) is within float
            # rounding of the integer qmin - z (|qmin - z| <= 2^16, so far less than half a step
            # away), so it rounds to qmin - z and quantizes to qmin, which is what torchqat's own
            # clamp gives x (x * (1/s) <= lo * (1/s) rounds to at most qmin - z); inside
            # [lo, hi] nothing changes; likewise above hi. NaN passes the clamp as it is.
            if self.axis is None:
                x = torch.clamp(x, self.clip_min_value, self.clip_max_value)
            else:
                shape = [1] * x.dim()
                shape[self.axis] = -1
                x = torch.clamp(x, self.clip_min.reshape(shape), self.clip_max.reshape(shape))
        q = torch.ops.torchqat.quantize(x, self.scale, self.zero_point, self.quant_min,
                                        self.quant_max, self.axis)
        return torch.ops.torchqat.dequantize(q, self.scale, self.zero_point, self.axis)

    def extra_repr(self) -> str:
        clip = (f", clip=[{self.clip_min_value:.6g}, {self.clip_max_value:.6g}]"
                if self.narrow and self.axis is None else ", clip=per-channel" if self.narrow
                else "")
        return (f"{self.source}: range=[{self.quant_min}, {self.quant_max}], axis={self.axis}"
                f"{clip}")


class _ExportFoldedWeight(nn.Module):
    """Holds a weight as integer codes and returns ``dequantize(codes)``, ignoring its input (the
    float weight, which then drops out of the exported graph): exported as an integer initializer
    feeding one ``DequantizeLinear``."""

    def __init__(self, quantizer: FakeQuantizer, weight: torch.Tensor, name: str) -> None:
        super().__init__()
        scale = quantizer.effective_scale().float()
        # torchqat.quantize returns the smallest of uint8/int8/int16/int32 that holds the range.
        codes = torch.ops.torchqat.quantize(
            weight.detach().float(), scale, quantizer.effective_zero_point(),
            quantizer.quant_min, quantizer.quant_max, quantizer.axis)
        zero_point = _integer_zero_point(quantizer, codes.dtype)
        if quantizer.axis is None:
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", zero_point.clone())
        self.axis: Optional[int] = quantizer.axis
        self.source = name

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchqat.dequantize(self.codes, self.scale, self.zero_point, self.axis)

    def extra_repr(self) -> str:
        return f"{self.source}: {self.codes.dtype} {tuple(self.codes.shape)}, axis={self.axis}"


# -- checks ---------------------------------------------------------------------------------------


def _check_path(fn: str, path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{fn}: path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if str(path) == "":
        raise ValueError(f"{fn}: path must name a file, got an empty string")
    if p.is_dir():
        raise ValueError(f"{fn}: path must name a file, got the directory {str(path)!r}")
    if not p.parent.is_dir():
        raise FileNotFoundError(
            f"{fn}: the directory of path {str(path)!r} does not exist ({str(p.parent)!r}); "
            "create it first")
    return p


def _as_tuple(fn: str, example_inputs: Any) -> Tuple[Any, ...]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    elif isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    if not isinstance(example_inputs, tuple) or not example_inputs:
        raise ValueError(f"{fn}: example_inputs must be a tensor or a non-empty tuple of "
                         f"tensors, got {type(example_inputs).__name__}")
    return example_inputs


def _collect_quantizers(fn: str, model: nn.Module, opset: int):
    """``(weight quantizers, activation quantizers, pass-through names)`` of ``model``, after
    checking that each one can be exported. Raises ``ValueError`` listing what cannot."""
    weight_owner: Dict[int, Tuple[str, nn.Module]] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantModuleMixin) and isinstance(m.weight_quantizer, FakeQuantizer):
            weight_owner[id(m.weight_quantizer)] = (name, m)
    weights, activations, passing, problems = [], [], [], []
    allowed = onnx_activation_ranges(opset)
    for name, q in model.named_modules():
        if not isinstance(q, FakeQuantizer):
            continue
        if q.mode == "pass_through":
            passing.append(name)
            continue
        if q.mode != "fake_quantize":
            problems.append(f"{name} is in mode {q.mode!r} (calibration still running?); "
                            "set_mode('fake_quantize') or finish torchqat.calibrate")
            continue
        if not q.is_calibrated:
            problems.append(f"{name} was never calibrated")
            continue
        if id(q) in weight_owner:
            # Folded weights are integer codes in the smallest type that holds the range: a
            # 4-bit or narrow-range weight is exact in int8, since its codes need no clamping.
            code_type = _quantized_dtype(q.quant_min, q.quant_max)
            allowed_types = (torch.uint8, torch.int8) + ((torch.int16,) if opset >= 21 else ())
            if code_type not in allowed_types:
                problems.append(
                    f"{name}: weight range [{q.quant_min}, {q.quant_max}] ({q.spec.describe()}) "
                    f"needs {str(code_type).replace('torch.', '')} codes; DequantizeLinear takes "
                    f"uint8/int8 below opset 21 and also int16 from opset 21 (got opset={opset})")
            else:
                weights.append((name, q, weight_owner[id(q)]))
        else:
            if _activation_type_range(q.quant_min, q.quant_max, opset) is None:
                problems.append(
                    f"{name}: activation range [{q.quant_min}, {q.quant_max}] "
                    f"({q.spec.describe()}) fits no ONNX integer type QuantizeLinear outputs at "
                    f"opset {opset} (ranges inside {' or '.join(str(list(r)) for r in allowed)}"
                    f"{'' if opset >= 21 else '; int16 [-32768, 32767] from opset 21'})")
            else:
                activations.append((name, q))
    if problems:
        raise ValueError(f"{fn}: cannot export {len(problems)} quantizer(s):\n  " +
                         "\n  ".join(problems))
    if not weights and not activations:
        raise ValueError(f"{fn}: the model has no FakeQuantizer in mode 'fake_quantize'; "
                         "export a model from torchqat.prepare_qat + torchqat.calibrate")
    return weights, activations, passing


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _export_copy(fn: str, qat_model: nn.Module, opset: int) -> Tuple[nn.Module, Dict[str, Any]]:
    """A CPU, eval-mode deep copy of ``qat_model`` with every FakeQuantizer replaced for export,
    and a summary of what was replaced."""
    model = copy.deepcopy(qat_model).cpu().eval()
    weights, activations, passing = _collect_quantizers(fn, model, opset)
    for name, q, (owner_name, owner) in weights:
        folded = _ExportFoldedWeight(q, owner.weight_to_quantize(), name)
        _replace_module(model, name, folded)
    for name, q in activations:
        _replace_module(model, name, _ExportQDQ(q, name, opset))
    for name in passing:
        _replace_module(model, name, nn.Identity())

    def kind(m) -> str:
        return "per-tensor" if m.axis is None else f"per-channel(axis={m.axis})"

    summary = {
        "weights": Counter(f"{str(m.codes.dtype).replace('torch.', '')} {kind(m)}"
                           for m in model.modules() if isinstance(m, _ExportFoldedWeight)),
        "activations": Counter(f"{str(m.zero_point.dtype).replace('torch.', '')} {kind(m)}" +
                               (f" clipped to [{m.quant_min}, {m.quant_max}]" if m.narrow else "")
                               for m in model.modules() if isinstance(m, _ExportQDQ)),
        "pass_through": passing,
    }
    return model, summary


# -- translations for torch.onnx.export(dynamo=True) ----------------------------------------------


def _dynamo_translation_table(opset: int) -> Dict[Any, Any]:
    import onnxscript
    from onnxscript import ir

    op = getattr(onnxscript, f"opset{min(max(opset, 18), 23)}", onnxscript.opset18)

    def onnx_type(quant_min: int, quant_max: int):
        for (lo, hi), (name, _) in _ACTIVATION_TYPES.items():
            if quant_min >= lo and quant_max <= hi:
                return getattr(ir.DataType, name.upper())
        raise ValueError(f"export_onnx: range [{quant_min}, {quant_max}] fits no ONNX integer type")

    def axis_kw(axis: Optional[int]) -> Dict[str, int]:
        return {} if axis is None else {"axis": axis}

    def shape_constant(dims: List[int]):
        # An int64 tensor (value_ints=[] would leave the attribute's type ambiguous).
        return op.Constant(value=ir.tensor(dims, dtype=ir.DataType.INT64))

    def quantize(x, scale, zero_point, quant_min: int, quant_max: int, axis: Optional[int] = None):
        zp = zero_point
        target = onnx_type(quant_min, quant_max)
        if zp.dtype != target:
            zp = op.Cast(zp, to=target)
        return op.QuantizeLinear(x, scale, zp, **axis_kw(axis))

    def dequantize(q, scale, zero_point, axis: Optional[int] = None):
        zp = zero_point
        if zp.dtype != q.dtype:
            zp = op.Cast(zp, to=q.dtype)
        return op.DequantizeLinear(q, scale, zp, **axis_kw(axis))

    def fake_quantize(x, scale, zero_point, quant_min: int, quant_max: int,
                      axis: Optional[int] = None, grad_factor: float = 1.0,
                      min_scale: float = 0.0):
        # A raw operator call outside a FakeQuantizer: qparams are graph values here.
        type_range = _activation_type_range(quant_min, quant_max, opset)
        if type_range is None:
            raise ValueError(
                f"export_onnx: torchqat.fake_quantize with range [{quant_min}, {quant_max}] fits "
                f"no ONNX integer type QuantizeLinear outputs at opset {opset}")
        narrow = (quant_min, quant_max) != type_range
        rank = None if x.shape is None else len(x.shape)
        if narrow and axis is not None and rank is None:
            raise ValueError(
                f"export_onnx: torchqat.fake_quantize with the narrow range [{quant_min}, "
                f"{quant_max}] per channel (axis={axis}) on an input of unknown rank: its clamp "
                "bounds cannot be shaped to broadcast along the axis")
        target = onnx_type(quant_min, quant_max)
        zp_float = op.Cast(zero_point, to=ir.DataType.FLOAT)
        if zero_point.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16,
                                ir.DataType.DOUBLE):
            # A learnable zero point is used as clamp(round_half_even(z)); ONNX Round is
            # half-to-even too.
            zp_float = op.Clip(op.Round(zp_float), op.Constant(value_float=float(quant_min)),
                               op.Constant(value_float=float(quant_max)))
        scale = op.Cast(scale, to=ir.DataType.FLOAT)
        if min_scale > 0.0:  # fake_quantize_lsq's floor: max(scale, min_scale)
            scale = op.Max(scale, op.Constant(value_float=float(min_scale)))
        if axis is None:
            scale = op.Reshape(scale, shape_constant([]))
            zp_float = op.Reshape(zp_float, shape_constant([]))
        zp = op.Cast(zp_float, to=target)
        if narrow:
            # QuantizeLinear saturates to its type's range only: clamp first to the dequantized
            # range ends (qmin - z) * s and (qmax - z) * s, exact as in _ExportQDQ.forward.
            # Per-tensor: Clip with scalar bounds; per-channel: Max / Min with bounds of shape
            # [C, 1, ..., 1] that broadcast along the axis (Clip takes scalars only).
            zp_b, scale_b = zp_float, scale
            if axis is not None:
                bound_shape = shape_constant([-1] + [1] * (rank - 1 - axis % rank))
                zp_b, scale_b = op.Reshape(zp_b, bound_shape), op.Reshape(scale_b, bound_shape)
            lo = op.CastLike(op.Mul(op.Sub(op.Constant(value_float=float(quant_min)), zp_b),
                                    scale_b), x)
            hi = op.CastLike(op.Mul(op.Sub(op.Constant(value_float=float(quant_max)), zp_b),
                                    scale_b), x)
            x = op.Clip(x, lo, hi) if axis is None else op.Min(op.Max(x, lo), hi)
        q = op.QuantizeLinear(x, scale, zp, **axis_kw(axis))
        return op.DequantizeLinear(q, scale, zp, **axis_kw(axis))

    ops = torch.ops.torchqat
    return {
        ops.quantize.default: quantize,
        ops.dequantize.default: dequantize,
        ops.fake_quantize.default: fake_quantize,
        ops.fake_quantize_lsq.default: fake_quantize,
    }


# -- symbolic functions for torch.onnx.export(dynamo=False) ---------------------------------------

_SYMBOLICS_REGISTERED = False


def _register_torchscript_symbolics() -> None:
    global _SYMBOLICS_REGISTERED
    if _SYMBOLICS_REGISTERED:
        return
    from torch.onnx import symbolic_helper as sh

    def axis_kw(axis) -> Dict[str, int]:
        return {} if sh._is_none(axis) else {"axis_i": sh._get_const(axis, "i", "axis")}

    def quantize(g, x, scale, zero_point, quant_min, quant_max, axis):
        # zero_point already has the output type (uint8 / int8): _ExportQDQ stores it so.
        return g.op("QuantizeLinear", x, scale, zero_point, **axis_kw(axis))

    def dequantize(g, q, scale, zero_point, axis):
        return g.op("DequantizeLinear", q, scale, zero_point, **axis_kw(axis))

    torch.onnx.register_custom_op_symbolic("torchqat::quantize", quantize, 13)
    torch.onnx.register_custom_op_symbolic("torchqat::dequantize", dequantize, 13)
    _SYMBOLICS_REGISTERED = True


# -- graph clean-up -------------------------------------------------------------------------------


def _inline_identity_initializers(proto) -> None:
    """The TorchScript exporter shares equal constants through ``Identity`` nodes; make every
    node read the initializer itself, so that the passes below see constants as constants."""
    inits = {t.name for t in proto.graph.initializer}
    graph_outputs = {o.name for o in proto.graph.output}
    identity_of = {n.output[0]: n.input[0] for n in proto.graph.node
                   if n.op_type == "Identity" and n.input[0] in inits
                   and n.output[0] not in graph_outputs}
    for node in proto.graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = identity_of.get(name, name)
    dead = [n for n in proto.graph.node if n.op_type == "Identity" and n.output[0] in identity_of]
    for n in dead:
        proto.graph.node.remove(n)


def _unshare_qdq_initializers(proto) -> int:
    """Gives every QuantizeLinear / DequantizeLinear its own scale and zero-point initializers.

    Both exporters merge initializers with equal contents (all-zero weight zero points of equal
    length, say). ONNX Runtime's AVX2 transformer that rewrites int8 weights to uint8 rewrites a
    shared zero point once per user and then fails to load the model ("Attempt to replace the
    existing tensor"); other QDQ consumers also expect per-node parameters. Returns how many
    initializers were copied."""
    inits = {t.name: t for t in proto.graph.initializer}
    users: Counter = Counter(name for n in proto.graph.node for name in n.input)
    taken = set(inits) | {o for n in proto.graph.node for o in n.output}
    copied = 0
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k in range(1, len(node.input)):
            name = node.input[k]
            if name not in inits or users[name] <= 1:
                continue
            i, new_name = 1, f"{name}__{1}"
            while new_name in taken:
                i += 1
                new_name = f"{name}__{i}"
            clone = proto.graph.initializer.add()
            clone.CopyFrom(inits[name])
            clone.name = new_name
            taken.add(new_name)
            users[name] -= 1
            node.input[k] = new_name
            copied += 1
    return copied


def _fold_batchnorm(proto) -> int:
    """Folds each inference BatchNormalization that follows a Conv with a folded int8 weight into
    that weight's per-channel DequantizeLinear scale and the Conv bias. Returns how many.

    BatchNorm is a per-output-channel affine map ``y = f * (conv + b - mean) + beta`` with
    ``f = gamma / sqrt(var + eps)``, and a per-channel weight scale is per output channel too, so

        conv(x, codes * s_w) * f + ...  ==  conv(x, (sign(f) * codes) * (s_w * |f|)) + ...

    The int8 codes keep their magnitudes (QAT's integers are untouched); only float rounding of
    the new scale and bias differs from the QAT model, which computes BatchNorm after the
    convolution. This is what lets ONNX Runtime (and TensorRT) see ``DQ -> Conv -> ReLU -> Q`` and
    run an integer convolution instead of a float one followed by BatchNorm. A channel with
    ``f == 0`` or, where ``f < 0``, a code of -128 (whose negation int8 cannot hold) leaves the
    layer unfolded."""
    import numpy as np
    from onnx import helper as onnx_helper
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: Counter = Counter(i for n in graph.node for i in n.input)
    graph_outputs = {o.name for o in graph.output}
    taken = set(inits) | set(producer)

    def attr(node, name, default):
        for a in node.attribute:
            if a.name == name:
                return onnx_helper.get_attribute_value(a)
        return default

    folded = 0
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or \
                attr(bn, "training_mode", 0) != 0:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers[conv.output[0]] != 1 or \
                conv.output[0] in graph_outputs:
            continue
        dq = producer.get(conv.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or consumers[dq.output[0]] != 1 or \
                len(dq.input) < 3 or any(n not in inits for n in dq.input) or \
                consumers[dq.input[0]] != 1 or consumers[dq.input[1]] != 1 or \
                consumers[dq.input[2]] != 1:
            continue
        if any(n not in inits for n in bn.input[1:5]):
            continue
        if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
            continue
        codes = numpy_helper.to_array(inits[dq.input[0]])
        zero_point = numpy_helper.to_array(inits[dq.input[2]])
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        axis = attr(dq, "axis", 1)
        cout = codes.shape[0]
        if codes.dtype != np.int8 or np.any(zero_point != 0) or \
                (scale.size != 1 and (axis % codes.ndim) != 0):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64)
                                  for n in bn.input[1:5])
        f = gamma / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
        negative = f < 0
        if np.any(f == 0) or np.any(codes[negative] == -128):
            continue
        bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                if len(conv.input) > 2 and conv.input[2] else np.zeros(cout))

        new_codes = codes.copy()
        new_codes[negative] = -new_codes[negative]
        new_scale = (np.broadcast_to(scale.reshape(-1), (cout,)) * np.abs(f)).astype(np.float32)
        new_bias = (f * (bias - mean) + beta).astype(np.float32)

        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(new_codes, dq.input[0]))
        inits[dq.input[1]].CopyFrom(numpy_helper.from_array(new_scale, dq.input[1]))
        inits[dq.input[2]].CopyFrom(numpy_helper.from_array(np.zeros(cout, np.int8),
                                                            dq.input[2]))
        for a in list(dq.attribute):
            if a.name == "axis":
                dq.attribute.remove(a)
        dq.attribute.append(onnx_helper.make_attribute("axis", 0))
        # A new initializer: the old bias may be shared (equal constants are merged).
        bias_name = f"{dq.input[0]}_folded_bias"
        while bias_name in taken:
            bias_name += "_"
        tensor = graph.initializer.add()
        tensor.CopyFrom(numpy_helper.from_array(new_bias, bias_name))
        inits[bias_name] = tensor
        taken.add(bias_name)
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = bias_name
        conv.output[0] = bn.output[0]
        producer[bn.output[0]] = conv
        graph.node.remove(bn)
        folded += 1
    # Drop the BatchNorm parameters no node reads any more.
    used = {i for n in graph.node for i in n.input} | graph_outputs
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    return folded


# -- export_onnx ----------------------------------------------------------------------------------


def _batch_of_two(example_inputs: Tuple[Any, ...]) -> Tuple[Any, ...]:
    # torch.export specialises a dimension of size 1, so a dynamic batch is traced at batch 2.
    return tuple(torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() > 0 and
                 t.shape[0] == 1 else t for t in example_inputs)


def export_onnx(
    qat_model: nn.Module,
    example_inputs: Union[torch.Tensor, Sequence[Any]],
    path: PathLike,
    opset: int = 18,
    *,
    dynamo: bool = True,
    dynamic_batch: bool = True,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
    fold_batchnorm: bool = True,
    check: bool = True,
):
    """Exports a QAT model to an ONNX graph of QuantizeLinear / DequantizeLinear pairs.

    The model must have been prepared with :func:`torchqat.prepare_qat` and calibrated (or
    trained, or loaded from such a state dict). It is not modified: a deep copy, moved to the CPU
    in eval mode, is exported. Each activation ``FakeQuantizer`` becomes ``QuantizeLinear ->
    DequantizeLinear`` with its effective scale and zero point, preceded by a ``Clip`` (``Max`` /
    ``Min`` per channel) to the dequantized range ends when its range is narrower than its ONNX
    type's (a 7- or 4-bit or ``[-127, 127]`` activation: the graph then clamps exactly where
    the QAT model clamps); each weight quantizer is folded into an integer initializer (int8, or
    uint8 for an asymmetric spec) and one ``DequantizeLinear`` (``axis`` = the per-channel axis,
    0 for Conv/Linear weights). Quantizers in mode ``"pass_through"`` are left out (float), with
    a log line.

    Args:
        qat_model: the QAT model.
        example_inputs: a tensor or a tuple of positional inputs used to trace the model.
        path: the ``.onnx`` file to write (its directory must exist).
        opset: the ONNX opset, 13 or more. With ``dynamo=True`` (torch's exporter writes opset 18
            and up natively) an opset below 18 is reached by onnx's version converter, which can
            fail; ``dynamo=False`` writes 13 to 20 directly. From opset 21, int16 activations and
            16-bit weights export as int16.
        dynamo: True: ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript, torch's
            default and maintained exporter). False: the TorchScript-based exporter (deprecated by
            torch, about 20 times faster, opset <= 20).
        dynamic_batch: make dim 0 of every tensor input (and output) dynamic. A batch-1 example
            is traced as batch 2 (``torch.export`` specialises size-1 dimensions).
        input_names, output_names: names of the graph inputs and outputs (default ``input`` /
            ``input_<i>``, ``output`` / ``output_<i>``).
        fold_batchnorm: fold each BatchNorm that follows a quantized convolution into that
            convolution's per-channel weight scale and bias (the int8 codes keep their values up
            to sign; only float rounding changes), so that runtimes see ``DequantizeLinear ->
            Conv`` and can run it in integers. False keeps BatchNormalization nodes.
        check: run ``onnx.checker.check_model(full_check=True)`` on the result.

    Returns:
        The ``onnx.ModelProto`` that was written.

    Raises:
        ValueError: a quantizer was never calibrated or is still observing; a quantizer's range
            has no exact ONNX encoding at ``opset`` (an activation range must lie inside
            ``[0, 255]`` or ``[-128, 127]``, or ``[-32768, 32767]`` from opset 21, see
            :func:`torchqat.export.onnx_exports_activation_range`; weights must fit 8 bits below
            opset 21, int16 from it); bad ``opset`` or inputs.
        FileNotFoundError: the directory of ``path`` does not exist.
    """
    import onnx

    fn = "export_onnx"
    if not isinstance(qat_model, nn.Module):
        raise ValueError(f"{fn}: qat_model must be an nn.Module, got {type(qat_model).__name__}")
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 13:
        raise ValueError(f"{fn}: opset must be an integer >= 13 (per-axis QuantizeLinear), "
                         f"got {opset!r}")
    if not dynamo and opset > _MAX_TORCHSCRIPT_OPSET:
        raise ValueError(f"{fn}: the TorchScript exporter (dynamo=False) writes opsets up to "
                         f"{_MAX_TORCHSCRIPT_OPSET}, got opset={opset}; use dynamo=True")
    out_path = _check_path(fn, path)
    inputs = _as_tuple(fn, example_inputs)
    inputs = tuple(t.detach().cpu() if isinstance(t, torch.Tensor) else t for t in inputs)
    tensor_positions = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor)]
    if input_names is None:
        input_names = ["input"] if len(tensor_positions) == 1 else \
            [f"input_{i}" for i in range(len(tensor_positions))]
    input_names = list(input_names)

    start = time.perf_counter()
    model, summary = _export_copy(fn, qat_model, opset)
    trace_inputs = _batch_of_two(inputs) if dynamic_batch else inputs

    with torch.no_grad():
        reference = model(*trace_inputs)
    outputs = reference if isinstance(reference, (tuple, list)) else (reference,)
    if output_names is None:
        output_names = ["output"] if len(outputs) == 1 else \
            [f"output_{i}" for i in range(len(outputs))]
    output_names = list(output_names)

    if dynamo:
        kwargs: Dict[str, Any] = {}
        if dynamic_batch:
            batch = torch.export.Dim("batch")
            kwargs["dynamic_shapes"] = tuple(
                {0: batch} if isinstance(t, torch.Tensor) and t.dim() > 0 else None
                for t in trace_inputs)
        program = torch.onnx.export(
            model, trace_inputs, dynamo=True, opset_version=opset,
            custom_translation_table=_dynamo_translation_table(opset),
            input_names=input_names, output_names=output_names, verbose=False, **kwargs)
        proto = program.model_proto
    else:
        import io
        import warnings

        _register_torchscript_symbolics()
        kwargs = {}
        if dynamic_batch:
            kwargs["dynamic_axes"] = {n: {0: "batch"} for n in input_names + output_names}
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # torch's deprecation notice for this exporter; the docstring says it.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, trace_inputs, buffer, dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names, **kwargs)
        proto = onnx.load_from_string(buffer.getvalue())

    written_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                         None)
    if written_opset != opset:
        raise RuntimeError(
            f"{fn}: asked for opset {opset} but the exporter wrote opset {written_opset} (its "
            "version conversion failed); use opset >= 18 with dynamo=True, or dynamo=False")
    _inline_identity_initializers(proto)
    _unshare_qdq_initializers(proto)
    folded_bn = _fold_batchnorm(proto) if fold_batchnorm else 0
    counts = Counter(n.op_type for n in proto.graph.node)
    expected_q = sum(summary["activations"].values())
    if counts["QuantizeLinear"] < expected_q:
        # The dynamo exporter's optimiser merges quantizers that quantize one tensor with equal
        # parameters (a ResNet downsample and the block's first convolution, calibrated alike).
        # Fewer nodes than distinct parameter sets means a quantizer the forward never called.
        distinct = len({(m.scale.numpy().tobytes(), m.zero_point.numpy().tobytes(), m.axis)
                        for m in model.modules() if isinstance(m, _ExportQDQ)})
        log = logger.warning if counts["QuantizeLinear"] < distinct else logger.info
        log("%s: %d input quantizers gave %d QuantizeLinear nodes%s", fn, expected_q,
            counts["QuantizeLinear"],
            "; some quantizer is not called by the forward" if log is logger.warning else
            " (pairs on one tensor with equal parameters were merged)")
    if check:
        onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out_path))

    def fmt(c: Counter) -> str:
        return ", ".join(f"{v} {k}" for k, v in sorted(c.items())) or "none"

    logger.info(
        "export_onnx: wrote %s (%.1f kB, opset %d, %s exporter, %d nodes) in %.1f s: "
        "%d QuantizeLinear, %d DequantizeLinear; weights folded: %s; activations: %s; "
        "BatchNorms folded into weight scales: %d",
        out_path, out_path.stat().st_size / 1024, opset, "dynamo" if dynamo else "TorchScript",
        len(proto.graph.node), time.perf_counter() - start, counts["QuantizeLinear"],
        counts["DequantizeLinear"], fmt(summary["weights"]), fmt(summary["activations"]),
        folded_bn)
    if summary["pass_through"]:
        logger.info("export_onnx: %d quantizer(s) in mode 'pass_through' left in float: %s",
                    len(summary["pass_through"]), ", ".join(summary["pass_through"]))
    return proto


def onnxruntime_session(path: PathLike, threads: Optional[int] = None, *, exact: bool = True,
                        optimize: bool = True):
    """An ONNX Runtime ``InferenceSession`` (CPU execution provider) for an exported QDQ model,
    set up the way torchqat's tests and benchmarks run it.

    Args:
        path: the ``.onnx`` file.
        threads: ``intra_op_num_threads`` (None: ONNX Runtime's default, all cores).
        exact: set ``session.x64quantprecision=1``. On x86 CPUs without VNNI ONNX Runtime's
            default uint8 x int8 kernels add pairs of products in int16 with saturation
            (``vpmaddubsw``) and can miss by far more than a quantization step; this selects its
            exact kernels (``docs/export_onnx.md``).
        optimize: ``ORT_ENABLE_ALL`` (ONNX Runtime fuses Q/DQ pairs into integer kernels) or
            ``ORT_DISABLE_ALL`` (every node runs as the ONNX specification defines it).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"onnxruntime_session: threads must be a positive integer or None, "
                             f"got {threads!r}")
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if exact:
        so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def output_step(model: nn.Module) -> torch.Tensor:
    """One quantization step of the output of ``model``'s last quantized layer, per output
    channel: ``tau_j = s_x * sum_i |W_q[j, i]|`` (``s_x``: the step of the layer's fake-quantized
    input, ``W_q``: its fake-quantized weight; ``model`` may be that layer itself).

    ONNX Runtime (or any other integer runtime) may land an input code of that layer one step
    away from torchqat's where the exact value sits on a rounding boundary; if every input is
    within one step, output channel ``j`` is within ``tau_j`` (``docs/export_onnx.md`` derives
    it). A following map with slope at most ``k`` (a sigmoid: 1/4) scales the bound by ``k``.
    Returns a float32 tensor of ``out_channels`` elements. (For a transposed convolution every
    kernel tap is counted: an upper bound.)
    """
    layers = [m for m in model.modules() if isinstance(m, QuantModuleMixin)]
    if not layers:
        raise ValueError(f"output_step: model ({type(model).__name__}) holds no quantized layer; "
                         "run torchqat.prepare_qat first")
    last = layers[-1]
    if not (isinstance(last.input_quantizer, FakeQuantizer)
            and isinstance(last.weight_quantizer, FakeQuantizer)):
        raise ValueError(f"output_step: the last quantized layer ({type(last).__name__}) must "
                         "quantize both its input and its weight")
    with torch.no_grad():
        wq = last.weight_quantizer(last.weight_to_quantize()).movedim(last._weight_axis(), 0)
        # A per-channel input: its largest step bounds every channel's.
        s_x = last.input_quantizer.effective_scale().max()
        return (s_x * wq.abs().flatten(1).sum(1)).float()


# -- export_torchscript ---------------------------------------------------------------------------


def _flatten_outputs(out: Any, where: str = "output") -> List[Tuple[str, Any]]:
    if isinstance(out, torch.Tensor) or out is None or isinstance(out, (int, float, bool, str)):
        return [(where, out)]
    if isinstance(out, (tuple, list)):
        return [item for i, o in enumerate(out) for item in _flatten_outputs(o, f"{where}[{i}]")]
    if isinstance(out, dict):
        return [item for k, o in out.items() for item in _flatten_outputs(o, f"{where}[{k!r}]")]
    return [(where, out)]


def export_torchscript(
    int8_model: nn.Module,
    path: PathLike,
    example_inputs: Optional[Union[torch.Tensor, Sequence[Any]]] = None,
) -> torch.jit.ScriptModule:
    """Scripts ``int8_model`` with ``torch.jit.script``, saves it to ``path`` and returns the
    scripted module.

    The saved file loads with ``torch.jit.load`` in Python and ``torch::jit::load`` in a libtorch
    program linked with torchqat (the packed INT8 weights re-pack for the loading machine). Put
    the model in eval mode first (dropout and BatchNorm statistics are scripted as they are).

    Args:
        int8_model: usually ``torchqat.convert(qat_model)``; any scriptable module (or one that is
            already a ``ScriptModule``) is accepted.
        path: the file to write (its directory must exist).
        example_inputs: optional tensor or tuple of inputs. When given, the saved file is loaded
            back and run on them, and its output must equal the eager model's output exactly
            (``torch.equal`` for every tensor: the same kernels run, so nothing may differ).

    Raises:
        RuntimeError: the model cannot be scripted, or the reloaded model's output differs from
            the eager output (the message names the output and the largest difference).
        FileNotFoundError: the directory of ``path`` does not exist.
        ValueError: bad arguments.
    """
    fn = "export_torchscript"
    if not isinstance(int8_model, nn.Module):
        raise ValueError(f"{fn}: int8_model must be an nn.Module, got {type(int8_model).__name__}")
    out_path = _check_path(fn, path)
    inputs = _as_tuple(fn, example_inputs) if example_inputs is not None else None
    start = time.perf_counter()
    if isinstance(int8_model, torch.jit.ScriptModule):
        scripted = int8_model
    else:
        try:
            scripted = torch.jit.script(int8_model)
        except Exception as err:  # TorchScript's frontend raises several types
            raise RuntimeError(
                f"{fn}: torch.jit.script failed on {type(int8_model).__name__} ({err}). Convert "
                "the QAT model with torchqat.convert first; Quant* training modules and Python "
                "code TorchScript cannot compile are not scriptable.") from err
    scripted.save(str(out_path))
    if inputs is not None:
        reloaded = torch.jit.load(str(out_path))
        with torch.no_grad():
            expected = int8_model(*inputs)
            got = reloaded(*inputs)
        exp_items, got_items = _flatten_outputs(expected), _flatten_outputs(got)
        if [w for w, _ in exp_items] != [w for w, _ in got_items]:
            raise RuntimeError(
                f"{fn}: the reloaded model returns a different structure: "
                f"{[w for w, _ in got_items]} instead of {[w for w, _ in exp_items]}")
        for (where, e), (_, g) in zip(exp_items, got_items):
            if isinstance(e, torch.Tensor):
                same = isinstance(g, torch.Tensor) and e.shape == g.shape and \
                    e.dtype == g.dtype and torch.equal(e, g.to(e.device))
                if not same:
                    detail = ""
                    if isinstance(g, torch.Tensor) and e.shape == g.shape:
                        diff = (e.double() - g.to(e.device).double()).abs()
                        detail = f"; largest difference {diff.max().item():.6g}"
                    raise RuntimeError(
                        f"{fn}: the model reloaded from {str(out_path)!r} does not reproduce the "
                        f"eager {where} exactly (eager {tuple(e.shape)} {e.dtype}, reloaded "
                        f"{tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__}"
                        f"{' ' + str(g.dtype) if isinstance(g, torch.Tensor) else ''}{detail})")
            elif e != g:
                raise RuntimeError(f"{fn}: the reloaded model's {where} is {g!r}, eager {e!r}")
    logger.info("export_torchscript: wrote %s (%.1f kB) in %.1f s%s", out_path,
                out_path.stat().st_size / 1024, time.perf_counter() - start,
                "; reloaded output equals the eager output" if inputs is not None else "")
    return scripted
