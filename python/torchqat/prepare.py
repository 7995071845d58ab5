"""``prepare_qat`` swaps a model's layers for their quantized twins; ``calibrate`` sets the
initial scales from data.

Neither traces the model: ``prepare_qat`` walks the module tree, so any ``nn.Module`` works —
residual adds, concatenations, upsampling, data-dependent control flow — because the forward code
is untouched and only the leaf layers change.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import logging
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from .config import QATConfig
from .nn import QuantConv1d, QuantConv2d, QuantConv3d, QuantConvTranspose2d, QuantLinear
from .nn.quant_module import QuantModuleMixin
from .quantizers import FakeQuantizer

__all__ = ["prepare_qat", "calibrate", "QUANT_MODULES", "quantizers_of"]

logger = logging.getLogger("torchqat")

#: Float layer type → its quantized training twin. Exact types only: a subclass may have its own
#: forward (``NonDynamicallyQuantizableLinear`` inside ``nn.MultiheadAttention`` never calls its
#: own forward, for instance), so swapping it could silently change nothing or the wrong thing.
QUANT_MODULES: Dict[type, type] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.Linear: QuantLinear,
}


def _name_and_ancestors(name: str) -> List[str]:
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _matching(patterns: Iterable[str], name: str) -> List[str]:
    """The patterns that match ``name`` or one of its ancestors."""
    names = _name_and_ancestors(name)
    return [p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)]


def _float_type_of(module: nn.Module) -> Optional[type]:
    for float_type in QUANT_MODULES:
        if isinstance(module, float_type):
            return float_type
    return None


def prepare_qat(model: nn.Module, config: Optional[QATConfig] = None) -> nn.Module:
    """Returns a deep copy of ``model`` in which every ``nn.Conv1d/2d/3d``,
    ``nn.ConvTranspose2d`` and ``nn.Linear`` (exact types) is replaced by its ``Quant*`` twin,
    with weight and input quantizers specified by ``config`` (default: ``QATConfig()``).
    ``model`` itself is not modified.

    Weight quantizers are initialised from the weights right away; input quantizers wait for
    :func:`calibrate`. Logs (logger ``"torchqat"``, INFO) how many layers of each type were
    quantized and which were left in float and why.

    Raises:
        ValueError: ``config`` is invalid, or a ``skip`` pattern matches no module, or an
            ``overrides`` pattern matches no quantizable layer.
    """
    if config is None:
        config = QATConfig()
    if not isinstance(config, QATConfig):
        raise ValueError(f"prepare_qat: config must be a QATConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"prepare_qat: model must be an nn.Module, got {type(model).__name__}")
    config.validate()

    all_names = [name for name, _ in model.named_modules() if name]
    for pattern in config.skip:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in all_names):
            raise ValueError(
                f"prepare_qat: QATConfig.skip pattern {pattern!r} matches no module of the model "
                f"(module names look like {', '.join(all_names[:5]) or '<none>'})"
            )

    qmodel = copy.deepcopy(model)

    swaps: Dict[int, nn.Module] = {}      # id(float module) -> quantized module
    quantized: Counter = Counter()
    left_float: List[Tuple[str, str]] = []
    override_hits: Counter = Counter()
    for name, module in qmodel.named_modules():
        float_type = _float_type_of(module)
        if float_type is None:
            continue
        if isinstance(module, QuantModuleMixin):
            left_float.append((name, "already quantized"))
            continue
        if type(module) is not float_type:
            if isinstance(module, nn.modules.lazy.LazyModuleMixin):
                reason = f"uninitialised lazy module {type(module).__name__}; run a forward first"
            else:
                reason = (f"{type(module).__name__} subclasses nn.{float_type.__name__} and may "
                          "have its own forward; only exact types are swapped")
            left_float.append((name, reason))
            continue
        overrides = _matching(config.overrides, name)
        override_hits.update(overrides)
        skips = _matching(config.skip, name)
        if skips:
            left_float.append((name, f"skip pattern {skips[0]!r}"))
            continue
        weight_spec = config.resolve("weight", overrides)
        activation_spec = config.resolve("activation", overrides)
        if weight_spec is None and activation_spec is None:
            why = f"override {overrides[-1]!r}" if overrides else "QATConfig"
            left_float.append((name, f"{why} sets weight and activation to None"))
            continue
        quant_type = QUANT_MODULES[float_type]
        swaps[id(module)] = quant_type.from_float(module, weight_spec, activation_spec)
        quantized[quant_type.__name__] += 1
        logger.debug("prepare_qat: %s -> %s (weight: %s; input: %s)", name, quant_type.__name__,
                     weight_spec.describe() if weight_spec else "float",
                     activation_spec.describe() if activation_spec else "float")

    for pattern in config.overrides:
        if override_hits[pattern] == 0:
            raise ValueError(
                f"prepare_qat: QATConfig.overrides pattern {pattern!r} matches no quantizable "
                "layer (Conv1d/2d/3d, ConvTranspose2d or Linear) of the model"
            )

    # Replace every reference, so a layer shared under two names stays shared.
    for parent in qmodel.modules():
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in swaps:
                parent._modules[child_name] = swaps[id(child)]
    if id(qmodel) in swaps:  # the model is itself a single layer
        qmodel = swaps[id(qmodel)]

    total = sum(quantized.values())
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(quantized.items())) or "none"
    logger.info("prepare_qat: quantized %d layers (%s); left %d in float", total, counts,
                len(left_float))
    for name, reason in left_float:
        logger.info("prepare_qat: left %s in float: %s", name or "<model>", reason)
    return qmodel


def quantizers_of(model: nn.Module) -> List[Tuple[str, FakeQuantizer]]:
    """Every ``FakeQuantizer`` of ``model`` with its qualified name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantizer)]


def _model_device(model: nn.Module) -> Optional[torch.device]:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return None


def _to_device(batch: Any, device: Optional[torch.device]) -> Any:
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _untrained_batch_norms(model: nn.Module) -> List[str]:
    """Names of the BatchNorm layers whose running statistics are still exactly their initial
    values (mean 0, variance 1 in every channel): never trained, never loaded."""
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not m.track_running_stats:
            continue
        mean, var = m.running_mean, m.running_var
        if mean is None or var is None or mean.is_meta or var.is_meta:
            continue
        if not bool(torch.any(mean != 0)) and not bool(torch.any(var != 1)):
            names.append(name or type(m).__name__)
    return names


def _default_forward(model: nn.Module, batch: Any) -> Any:
    # A DataLoader of (input, target) pairs is the common case: the first element is the input.
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(batch[0])
    return model(batch)


def _distributed_group(process_group):
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False, None
    if not (dist.is_available() and dist.is_initialized()):
        return False, None
    return True, process_group


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: Optional[int] = None,
    *,
    forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
    progress: bool = True,
    process_group=None,
) -> nn.Module:
    """Sets the initial scales of a prepared model from data and leaves it ready to train.

    1. Weight quantizers observe their weight once (their spec's observer; default min-max per
       channel at 8 bits, MSE below 6 bits) and switch to fake quantization.
    2. Input quantizers observe the inputs of their layer over ``num_batches`` batches (all of
       ``batches`` when None), with a tqdm progress bar, the model in eval mode (BatchNorm
       statistics and dropout untouched) and weights already fake-quantized, so the ranges are
       those the quantized layers will see.
    3. If ``torch.distributed`` is initialised, every observer's statistics are all-reduced over
       ``process_group`` (min of minima, max of maxima, sums of histograms, mean of moving
       averages), so every rank ends with the same scales. All ranks must call ``calibrate``.
    4. Scales and zero points are set (in place: parameters keep their identity), quantizers
       switch to ``"fake_quantize"`` and each module's training flag is restored.

    Calibration sees eval-mode activations, so the model's BatchNorm statistics must be its
    trained ones. A BatchNorm layer whose running statistics are still their initial values
    (mean 0, variance 1: a model built from code and never trained) scales activations unlike
    training-mode BatchNorm does: in a randomly initialised deep network they shrink layer after
    layer, the calibrated ranges come out orders of magnitude too small, and training then clips
    almost every activation. ``calibrate`` logs a warning naming such layers; estimate their
    statistics first (a few forward passes in train mode under ``torch.no_grad()``, with
    ``momentum=None`` for a cumulative average) or calibrate the trained float model.

    Quantizers set to ``"pass_through"`` are left alone. A quantizer no batch reached (a branch
    not taken) stays uncalibrated and is initialised from the first tensor it sees in training,
    with a warning. ``batches`` items are tensors (``model(x)``), tuples/lists (``model(x[0])``,
    as DataLoaders yield ``(input, target)``) or dicts (``model(**x)``); tensors are moved to
    the model's device. Pass ``forward_fn(model, batch)`` for anything else.

    Returns ``model``.
    """
    if num_batches is not None and (not isinstance(num_batches, int) or num_batches < 1):
        raise ValueError(f"calibrate: num_batches must be a positive integer or None, "
                         f"got {num_batches!r}")
    forward_fn = forward_fn or _default_forward
    distributed, group = _distributed_group(process_group)
    rank = 0
    if distributed:
        import torch.distributed as dist

        rank = dist.get_rank(group)

    quantizers = [(n, q) for n, q in quantizers_of(model) if q.mode != "pass_through"]
    if not quantizers:
        raise ValueError("calibrate: the model has no FakeQuantizer to calibrate; "
                         "call torchqat.prepare_qat(model, config) first")
    untrained = _untrained_batch_norms(model)
    if untrained:
        shown = ", ".join(untrained[:4]) + (", ..." if len(untrained) > 4 else "")
        logger.warning(
            "calibrate: %d BatchNorm layer(s) (%s) still have their initial running statistics "
            "(mean 0, variance 1). Calibration runs in eval mode, where these scale activations "
            "unlike training does, so the calibrated ranges will not fit training: calibrate "
            "the trained float model, or estimate the statistics first (forward passes in "
            "train mode under torch.no_grad()).", len(untrained), shown)
    weight_owner = {}
    for _, m in model.named_modules():
        if isinstance(m, QuantModuleMixin) and isinstance(m.weight_quantizer, FakeQuantizer):
            weight_owner[id(m.weight_quantizer)] = m
    weight_qs = [(n, q) for n, q in quantizers if id(q) in weight_owner]
    act_qs = [(n, q) for n, q in quantizers if id(q) not in weight_owner]

    for _, q in weight_qs:
        q.reset_observer()
        q.observe(weight_owner[id(q)].weight_to_quantize())
        q.set_mode("fake_quantize")
    for _, q in act_qs:
        q.reset_observer()
        q.set_mode("observe")

    training = {m: m.training for m in model.modules()}
    model.eval()
    device = _model_device(model)
    total = num_batches
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)  # type: ignore[arg-type]
    seen = 0
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="torchqat calibrate", unit="batch",
                   disable=not progress or rank != 0, leave=False)
        with bar:
            for batch in batches:
                if num_batches is not None and seen >= num_batches:
                    break
                forward_fn(model, _to_device(batch, device))
                seen += 1
                bar.update(1)
    finally:
        for m, flag in training.items():
            m.training = flag
        for _, q in act_qs:
            q.set_mode("fake_quantize")
    if seen == 0:
        raise ValueError("calibrate: batches yielded no batch")
    if num_batches is not None and seen < num_batches:
        logger.info("calibrate: batches ran out after %d of %d batches", seen, num_batches)

    if distributed:
        for _, q in quantizers:
            q.observer.all_reduce(q.scale.device, group)

    not_reached = []
    for name, q in quantizers:
        if q.observer.has_observations:
            q.load_observer_qparams()
        else:
            not_reached.append(name)
        q.reset_observer()
    if not_reached:
        logger.warning(
            "calibrate: %d quantizers saw no data (a branch not taken?) and stay uncalibrated; "
            "each initialises from the first tensor it sees: %s", len(not_reached),
            ", ".join(not_reached))
    logger.info("calibrate: %d batches; set %d weight and %d input quantizers%s", seen,
                len(weight_qs), len(act_qs) - len([n for n, _ in act_qs if n in not_reached]),
                f" across {dist.get_world_size(group)} ranks" if distributed else "")
    return model
