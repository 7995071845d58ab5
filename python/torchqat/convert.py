"""``convert`` turns a calibrated (and trained) QAT model into an INT8 model.

Every ``QuantLinear`` / ``QuantConv2d`` / ``QuantConv1d`` becomes an ``Int8Linear`` /
``Int8Conv2d`` / ``Int8Conv1d`` holding packed int8 weights (quantized with the weight
quantizer's exact rounding) and the input quantizer's scale and zero point. A BatchNorm that
follows a convolution is folded into the convolution's epilogue and replaced by ``nn.Identity``;
a ReLU / SiLU module that follows is fused the same way. Where the pairs are found (see
``docs/convert.md``):

1. ``nn.Sequential`` (and subclasses that keep its forward, such as torchvision's
   ``Conv2dNormActivation``): consecutive children conv, BN, activation. No tracing needed.
2. ``torch.fx``: the model is symbolically traced (``Quant*`` layers and quantizers as leaves);
   a conv node whose only user is a BatchNorm module call folds, and an activation module call
   that is the only user of that BN (or of the conv) fuses. When the whole model does not trace
   (data-dependent control flow), each child module is traced instead, recursively, so blocks
   like YOLO's ``Conv`` (``act(bn(conv(x)))``) or a ResNet ``BasicBlock`` are still found.

Only module references change: the model keeps its class and its forward code.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .nn import QuantConv1d, QuantConv2d, QuantLinear
from .nn.int8 import Int8Conv1d, Int8Conv2d, Int8Linear, unsupported_reason
from .nn.quant_module import QuantModuleMixin
from .quantizers import FakeQuantizer

__all__ = ["convert"]

logger = logging.getLogger("torchqat")

_INT8_TYPE = {QuantLinear: Int8Linear, QuantConv2d: Int8Conv2d, QuantConv1d: Int8Conv1d}
_BN_FOR = {QuantConv2d: nn.BatchNorm2d, QuantConv1d: nn.BatchNorm1d}
_ACTIVATIONS = (nn.ReLU, nn.SiLU)


@dataclass
class _Fusion:
    """A conv (at ``conv``) followed by a BN and/or an activation, each at a module path."""

    conv: str                      # the QAT layer (a convolution or a linear layer)
    bn: Optional[str] = None
    act: Optional[str] = None
    found_by: str = ""


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks
                or getattr(m, "_forward_hooks_with_kwargs", None)
                or getattr(m, "_forward_pre_hooks_with_kwargs", None))


# -- finding conv -> BN -> activation chains ---------------------------------------------------


def _sequential_fusions(model: nn.Module) -> List[_Fusion]:
    found = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        items = [(n, m) for n, m in seq._modules.items() if m is not None]
        i = 0
        while i < len(items):
            name, m = items[i]
            if type(m) in _INT8_TYPE:
                f = _Fusion(_join(prefix, name), found_by="nn.Sequential")
                j = i + 1
                if j < len(items) and type(m) in _BN_FOR \
                        and type(items[j][1]) is _BN_FOR[type(m)]:
                    f.bn = _join(prefix, items[j][0])
                    j += 1
                if j < len(items) and type(items[j][1]) in _ACTIVATIONS:
                    f.act = _join(prefix, items[j][0])
                    j += 1
                if f.bn or f.act:
                    found.append(f)
                i = j
            else:
                i += 1
    return found


class _Tracer(torch.fx.Tracer):
    """Keeps QAT layers and quantizers as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QuantModuleMixin, FakeQuantizer)):
            return True
        return super().is_leaf_module(m, qualname)


def _trace_fusions(root: nn.Module, prefix: str, out: List[_Fusion]) -> Optional[str]:
    """Appends the chains of ``root``'s fx graph to ``out``; returns why tracing failed, or
    None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _Tracer().trace(root)
    except Exception as err:  # noqa: BLE001 -- any failure only means "not traceable"
        return f"{prefix or '<model>'} ({type(err).__name__})"

    modules = dict(root.named_modules(remove_duplicate=False))
    # fx names a module by its first path, so a module called under two names counts twice.
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")

    def single_call(node, types, arg) -> bool:
        # The only call of a module of `types` at that path, with `arg` as its one argument.
        return (node.op == "call_module" and type(modules.get(node.target)) in types
                and calls[node.target] == 1 and node.args == (arg,) and not node.kwargs)

    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        conv = modules.get(node.target)
        if type(conv) not in _INT8_TYPE or len(node.args) != 1 or node.kwargs:
            continue
        f = _Fusion(_join(prefix, node.target), found_by="torch.fx")
        last = node
        users = list(last.users)
        if len(users) == 1 and type(conv) in _BN_FOR \
                and single_call(users[0], (_BN_FOR[type(conv)],), last):
            f.bn = _join(prefix, users[0].target)
            last = users[0]
        users = list(last.users)
        if len(users) == 1 and single_call(users[0], _ACTIVATIONS, last):
            f.act = _join(prefix, users[0].target)
        if f.bn or f.act:
            out.append(f)
    return None


def _fx_fusions(model: nn.Module) -> Tuple[List[_Fusion], List[str]]:
    """Chains found by torch.fx: first in every block that owns a convolution (so that a
    block-local activation shared between blocks, as YOLO's ``Conv.default_act``, still fuses),
    then in the whole model, descending into the children of what does not trace."""
    out: List[_Fusion] = []
    untraced: List[str] = []
    for prefix, m in model.named_modules():
        if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
            continue  # _sequential_fusions
        if isinstance(m, (QuantModuleMixin, FakeQuantizer)):
            continue
        if any(type(c) in _INT8_TYPE for c in m.children()):
            _trace_fusions(m, prefix, out)

    def descend(root: nn.Module, prefix: str) -> None:
        failure = _trace_fusions(root, prefix, out)
        if failure is None:
            return
        untraced.append(failure)
        for name, child in root.named_children():
            if not isinstance(child, (QuantModuleMixin, FakeQuantizer)) and any(
                    type(c) in _INT8_TYPE for c in child.modules()):
                descend(child, _join(prefix, name))

    descend(model, "")
    return out, untraced


# -- convert -----------------------------------------------------------------------------------


def _uncalibrated(model: nn.Module) -> List[str]:
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, QuantModuleMixin):
            continue
        for role, q in (("weight", m.weight_quantizer), ("input", m.input_quantizer)):
            if isinstance(q, FakeQuantizer) and q.mode == "fake_quantize" \
                    and not q.is_calibrated and not bool(q.calibrated.item()):
                names.append(f"{name or '<model>'} ({role})")
    return names


def _paths(model: nn.Module) -> Dict[int, List[Tuple[nn.Module, str, str]]]:
    """id(module) -> every (parent, attribute name, qualified path) that refers to it."""
    refs: Dict[int, List[Tuple[nn.Module, str, str]]] = defaultdict(list)
    seen = set()
    for prefix, parent in model.named_modules(remove_duplicate=False):
        key = (id(parent), prefix)
        if key in seen:
            continue
        seen.add(key)
        for child_name, child in parent._modules.items():
            if child is not None:
                refs[id(child)].append((parent, child_name, _join(prefix, child_name)))
    return refs


def _set_path(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    parent._modules[attr] = new


def convert(qat_model: nn.Module, inplace: bool = False) -> nn.Module:
    """Returns the INT8 model of a calibrated QAT model (``qat_model`` is deep-copied first
    unless ``inplace``).

    - ``QuantLinear`` -> :class:`~torchqat.Int8Linear`, ``QuantConv2d`` ->
      :class:`~torchqat.Int8Conv2d`, ``QuantConv1d`` -> :class:`~torchqat.Int8Conv1d`, when the
      weight is 8-bit symmetric (per output channel or per tensor) and the input 8-bit per tensor.
      Other QAT layers (``QuantConv3d``, ``QuantConvTranspose2d``, other bit widths, per-channel
      activations, non-zero padding modes) stay fake-quant QAT layers; float layers stay float.
    - A ``BatchNorm`` that follows a convolution is folded into its epilogue (eval-mode running
      statistics) and replaced by ``nn.Identity``; a following ``nn.ReLU`` / ``nn.SiLU`` module is
      fused and replaced by ``nn.Identity`` (module docstring: where chains are found).

    The INT8 model computes what the QAT model computes in eval mode, up to float rounding of the
    epilogue (``docs/convert.md``). Logs (logger ``"torchqat"``, INFO) what was converted, the
    BatchNorms folded and the layers kept and why.

    Raises:
        ValueError: a quantizer of the model was never calibrated (names the layers), or the
            model is not on the CPU.
    """
    if not isinstance(qat_model, nn.Module):
        raise ValueError(f"convert: qat_model must be an nn.Module, got {type(qat_model).__name__}")
    uncalibrated = _uncalibrated(qat_model)
    if uncalibrated:
        raise ValueError(
            f"convert: {len(uncalibrated)} quantizers were never calibrated and have no scale: "
            f"{', '.join(uncalibrated)}. Run torchqat.calibrate(model, batches) with data that "
            "reaches these layers (or skip them in QATConfig) before converting")
    for name, m in qat_model.named_modules():
        if isinstance(m, QuantModuleMixin) and m.weight.device.type != "cpu":
            raise ValueError(f"convert: the INT8 modules run on the CPU; layer {name or '<model>'}"
                             f" is on {m.weight.device}. Convert model.cpu()")
    model = qat_model if inplace else copy.deepcopy(qat_model)

    refs = _paths(model)
    modules = dict(model.named_modules(remove_duplicate=False))

    # Chains from nn.Sequential (no tracing) and torch.fx; the most complete one per layer.
    fx_found, untraced = _fx_fusions(model)
    fusions: Dict[str, _Fusion] = {}
    for f in _sequential_fusions(model) + fx_found:
        # Each finding is sound in its own scope; a wider trace may see less (fx names a shared
        # module by one path, so a block's shared activation looks called many times).
        best = fusions.get(f.conv)
        if best is None or (f.bn is not None) + (f.act is not None) > \
                (best.bn is not None) + (best.act is not None):
            fusions[f.conv] = f
    if untraced:
        logger.debug("convert: torch.fx could not trace %s; traced their children instead",
                     ", ".join(untraced))

    kept: List[Tuple[str, str]] = []
    kept_ids = set()
    not_folded: List[Tuple[str, str]] = []
    converted: Counter = Counter()
    n_bn = n_act = 0
    new_at: Dict[int, nn.Module] = {}          # id(QAT layer) -> its INT8 module (unfused)
    fused_at: Dict[str, nn.Module] = {}        # conv path -> INT8 module with BN/act fused
    to_identity: List[str] = []
    used_paths = set()

    for path, m in modules.items():
        if not isinstance(m, QuantModuleMixin):
            continue
        reason = unsupported_reason(m)
        int8_type = _INT8_TYPE.get(type(m))
        if reason is None and int8_type is None:
            reason = f"{type(m).__name__} subclasses a QAT layer"
        if reason is not None:
            if id(m) not in kept_ids:
                kept_ids.add(id(m))
                kept.append((path or "<model>", reason))
            continue
        f = fusions.get(path)
        if f is not None:
            why = None
            bn = modules.get(f.bn) if f.bn else None
            if len(refs[id(m)]) > 1:
                why = "the layer is shared under several names"
            elif _has_hooks(m) or (bn is not None and _has_hooks(bn)):
                why = "a forward hook would see the BatchNorm's input"
            elif bn is not None and (bn.running_mean is None or bn.running_var is None):
                why = f"{f.bn} uses batch statistics (track_running_stats=False)"
            elif bn is not None and bn.num_features != m.weight.size(0):
                why = f"{f.bn} has {bn.num_features} features, the layer {m.weight.size(0)}"
            elif f.bn in used_paths or f.act in used_paths:
                why = "its BatchNorm or activation follows another layer too"
            if why is not None:
                not_folded.append((path, why))
                f = None
        if f is not None:
            bn = modules.get(f.bn) if f.bn else None
            act = modules.get(f.act) if f.act else None
            source = [p for p in (path, f.bn, f.act) if p]
            fused_at[path] = int8_type.from_qat(m, bn=bn, activation=act, name=path,
                                                source=source)
            for p in (f.bn, f.act):
                if p:
                    to_identity.append(p)
                    used_paths.add(p)
            n_bn += bn is not None
            n_act += act is not None
            converted[int8_type.__name__] += 1
            logger.debug("convert: %s -> %s (found by %s)", " + ".join(source),
                         int8_type.__name__, f.found_by)
        elif id(m) not in new_at:
            new_at[id(m)] = int8_type.from_qat(m, name=path, source=[path])
            converted[int8_type.__name__] += 1
            logger.debug("convert: %s -> %s", path, int8_type.__name__)

    # Swap references: shared layers stay shared; fused ones only at their own path.
    for path, m in modules.items():
        if not path:
            continue
        if path in fused_at:
            _set_path(model, path, fused_at[path])
        elif id(m) in new_at:
            _set_path(model, path, new_at[id(m)])
    for path in to_identity:
        _set_path(model, path, nn.Identity())
    if "" in fused_at:
        model = fused_at[""]
    elif id(model) in new_at:
        model = new_at[id(model)]
    model.eval()

    counts = ", ".join(f"{k}: {v}" for k, v in sorted(converted.items())) or "none"
    logger.info("convert: converted %d layers (%s); folded %d BatchNorms, fused %d activations; "
                "kept %d QAT layers as fake-quant", sum(converted.values()), counts, n_bn, n_act,
                len(kept))
    for path, reason in kept:
        logger.info("convert: kept %s as a fake-quant QAT layer: %s", path, reason)
    for path, reason in not_folded:
        logger.info("convert: did not fold the BatchNorm/activation after %s: %s", path, reason)
    return model
