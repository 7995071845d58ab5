"""Looking inside a quantized model: per-layer report, pictures, and per-layer sensitivity.

- :func:`report` runs batches through a prepared (QAT) model and returns a :class:`QuantReport`:
  one row per convolution / linear layer with its weight and input quantization, the current
  scale ranges, and two signal-to-quantization-noise ratios of the layer's output:

  * ``sqnr_layer`` — the error this layer adds by itself: its output against the same layer run
    on the same input with its quantizers switched to ``"pass_through"``;
  * ``sqnr_float`` — the error accumulated up to this layer: its output against the output of
    the layer of the same name in ``float_model``, both models fed the same batches.

  ``SQNR = 10 log10(Σ ref² / Σ (out - ref)²)`` in dB, sums over every element of every batch
  (so batches are weighted by their size); ``inf`` when the outputs are equal.
- :func:`plot_report` writes PNG files: the SQNR of each layer, and histograms of every layer's
  weights and inputs with the clipping range the quantizer currently uses.
- :func:`sensitivity` quantizes one layer at a time and ranks the layers by how much a metric
  drops.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .config import QATConfig
from .nn.quant_module import QuantModuleMixin
from .prepare import QUANT_MODULES, _default_forward, _model_device, _to_device, calibrate
from .prepare import prepare_qat, quantizers_of
from .quantizers import FakeQuantizer

__all__ = ["LayerReport", "QuantReport", "report", "plot_report", "sensitivity",
           "SensitivityReport", "sqnr_db"]

# Values kept per layer for the histograms (a uniform random subsample beyond this).
_SAMPLE = 20000


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """``10 log10(signal / noise)``; ``inf`` for zero noise, ``-inf`` for zero signal."""
    if noise_power == 0:
        return math.inf
    if signal_power == 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def _spec_text(q: nn.Module) -> Tuple[str, str]:
    if not isinstance(q, FakeQuantizer):
        return "float", "float"
    bits = f"{'int' if q.spec.symmetric else 'uint'}{q.spec.bits}"
    scheme = q.spec.describe().split(" ", 1)[1]
    if q.mode != "fake_quantize":
        scheme += f" ({q.mode})"
    return bits, scheme


def _scale_range(q: nn.Module) -> Tuple[float, float]:
    if not isinstance(q, FakeQuantizer) or not q.is_calibrated:
        return math.nan, math.nan
    s = q.effective_scale()
    return float(s.min()), float(s.max())


def _clip_range(q: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The real-valued range ``[(qmin - z) s, (qmax - z) s]`` per scale, or None in float."""
    if not isinstance(q, FakeQuantizer) or not q.is_calibrated:
        return None
    s = q.effective_scale().float().cpu()
    z = q.effective_zero_point().float().cpu()
    return (q.quant_min - z) * s, (q.quant_max - z) * s


@dataclass
class LayerReport:
    """One row of :class:`QuantReport`."""

    name: str
    type: str
    weight_bits: str
    weight_scheme: str
    activation_bits: str
    activation_scheme: str
    weight_scale_min: float
    weight_scale_max: float
    activation_scale_min: float
    activation_scale_max: float
    sqnr_layer: float = math.nan
    sqnr_float: float = math.nan
    # For plot_report: subsamples of the weight and the layer's inputs, and the clipping ranges.
    weight_sample: Optional[torch.Tensor] = field(default=None, repr=False)
    input_sample: Optional[torch.Tensor] = field(default=None, repr=False)
    weight_clip: Optional[Tuple[torch.Tensor, torch.Tensor]] = field(default=None, repr=False)
    input_clip: Optional[Tuple[torch.Tensor, torch.Tensor]] = field(default=None, repr=False)

    def as_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "name", "type", "weight_bits", "weight_scheme", "activation_bits",
            "activation_scheme", "weight_scale_min", "weight_scale_max", "activation_scale_min",
            "activation_scale_max", "sqnr_layer", "sqnr_float")}


def _fmt(v: float, spec: str = ".3g") -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


class QuantReport(list):
    """A list of :class:`LayerReport` rows (module order) with a readable ``str`` and a rich
    rendering (``rich.print(report)``). ``output_sqnr`` is the SQNR of the whole model's
    output against ``float_model`` (NaN without one)."""

    COLUMNS = ("layer", "type", "weight", "weight scale", "input", "input scale",
               "SQNR layer dB", "SQNR vs float dB")

    def __init__(self, rows: Iterable[LayerReport] = (), output_sqnr: float = math.nan,
                 num_batches: int = 0) -> None:
        super().__init__(rows)
        self.output_sqnr = output_sqnr
        self.num_batches = num_batches

    @staticmethod
    def _short(bits: str, scheme: str) -> str:
        # The table keeps what tells layers apart; as_dict() has the full description.
        if bits == "float":
            return bits
        gran = "per-channel" if "per-channel" in scheme else "per-tensor"
        kind = "sym" if scheme.startswith("symmetric") else "affine"
        mode = next((f" ({m})" for m in ("pass_through", "observe") if f"({m})" in scheme), "")
        return f"{bits} {kind} {gran}{mode}"

    @staticmethod
    def _range(lo: float, hi: float) -> str:
        return _fmt(lo) if lo == hi else f"{_fmt(lo)}..{_fmt(hi)}"

    def _cells(self, r: LayerReport) -> List[str]:
        return [r.name, r.type, self._short(r.weight_bits, r.weight_scheme),
                self._range(r.weight_scale_min, r.weight_scale_max),
                self._short(r.activation_bits, r.activation_scheme),
                self._range(r.activation_scale_min, r.activation_scale_max),
                _fmt(r.sqnr_layer, ".1f"), _fmt(r.sqnr_float, ".1f")]

    def worst(self, n: int = 5, key: str = "sqnr_layer") -> List[LayerReport]:
        """The ``n`` rows with the lowest ``key`` (NaN rows last)."""
        return sorted(self, key=lambda r: (math.isnan(getattr(r, key)), getattr(r, key)))[:n]

    def __str__(self) -> str:
        rows = [list(self.COLUMNS)] + [self._cells(r) for r in self]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.COLUMNS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"{len(self)} layers, {self.num_batches} batches; model output SQNR vs "
                     f"float: {_fmt(self.output_sqnr, '.1f')} dB")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"QuantReport({len(self)} layers, output_sqnr={_fmt(self.output_sqnr, '.1f')} dB)"

    def to_rich(self, title: str = "torchqat report"):
        """A ``rich.table.Table``; layers below 20 dB (layer SQNR) are highlighted."""
        from rich.table import Table

        table = Table(title=title, caption=f"model output SQNR vs float: "
                                           f"{_fmt(self.output_sqnr, '.1f')} dB")
        for c in self.COLUMNS:
            table.add_column(c, justify="right" if "SQNR" in c or "scale" in c else "left")
        for r in self:
            style = "bold red" if r.sqnr_layer < 20 else None
            table.add_row(*self._cells(r), style=style)
        return table

    def __rich__(self):
        return self.to_rich()


def _layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    float_types = tuple(QUANT_MODULES)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, float_types)]


def _flat_tensors(x: Any) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat_tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat_tensors(v)]
    return []


def _subsample(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    x = x.detach().flatten().float().cpu()
    if x.numel() <= k:
        return x
    return x[torch.randint(0, x.numel(), (k,), generator=generator)]


class _Power:
    """Running Σ ref² and Σ (out - ref)² in float64."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0

    def add(self, out: torch.Tensor, ref: torch.Tensor) -> None:
        out, ref = out.detach().double(), ref.detach().double()
        self.signal += float((ref * ref).sum())
        self.noise += float(((out - ref) ** 2).sum())

    def db(self) -> float:
        return sqnr_db(self.signal, self.noise) if self.signal or self.noise else math.nan


@torch.no_grad()
def report(model: nn.Module, batches: Iterable[Any], float_model: Optional[nn.Module] = None,
           num_batches: Optional[int] = None, *,
           forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
           samples: bool = True, seed: int = 0) -> QuantReport:
    """Per-layer report of a prepared (QAT) model; see the module docstring for the columns.

    Args:
        model: a model from :func:`prepare_qat` (calibrated or trained). Layers left in float
            are listed too, with ``float`` bits.
        batches: the inputs, as :func:`calibrate` takes them (tensors, ``(input, target)``
            tuples, dicts, or anything with ``forward_fn``).
        float_model: the float model with the same module names (the one given to
            ``prepare_qat``); enables ``sqnr_float`` and ``output_sqnr``.
        num_batches: at most this many batches (all when None).
        samples: keep subsamples of weights and inputs for :func:`plot_report`.

    Both models run in eval mode under ``torch.no_grad()``; training flags are restored.
    """
    if num_batches is not None and (not isinstance(num_batches, int) or num_batches < 1):
        raise ValueError(f"report: num_batches must be a positive integer or None, "
                         f"got {num_batches!r}")
    forward_fn = forward_fn or _default_forward
    layers = _layers(model)
    if not any(isinstance(m, QuantModuleMixin) for _, m in layers):
        raise ValueError("report: model has no quantized layer; pass the model that "
                         "torchqat.prepare_qat returned")
    float_layers: Dict[str, nn.Module] = {}
    if float_model is not None:
        float_layers = dict(_layers(float_model))
        missing = [n for n, _ in layers if n not in float_layers]
        if missing:
            raise ValueError(f"report: float_model has no layer named {missing[0]!r}; pass "
                             "the float model that prepare_qat was given")

    gen = torch.Generator().manual_seed(seed)
    layer_power = {n: _Power() for n, _ in layers}
    float_power = {n: _Power() for n, _ in layers}
    out_power = _Power()
    input_samples: Dict[str, List[torch.Tensor]] = {n: [] for n, _ in layers}
    float_outputs: Dict[str, torch.Tensor] = {}

    def quant_hook(name):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                return
            if isinstance(module, QuantModuleMixin):
                wq, iq = module.weight_quantizer, module.input_quantizer
                modes = [(q, q.mode) for q in (wq, iq) if isinstance(q, FakeQuantizer)]
                for q, _ in modes:
                    q.mode = "pass_through"
                try:
                    # forward, not __call__: no hooks, no recursion.
                    ref = module.forward(*args)
                finally:
                    for q, mode in modes:
                        q.mode = mode
                layer_power[name].add(output, ref)
            if name in float_outputs:
                float_power[name].add(output, float_outputs.pop(name))
            if samples and args and isinstance(args[0], torch.Tensor):
                input_samples[name].append(_subsample(args[0], _SAMPLE, gen))
        return hook

    def float_hook(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                float_outputs[name] = output.detach()
        return hook

    handles = [m.register_forward_hook(quant_hook(n)) for n, m in layers]
    handles += [float_layers[n].register_forward_hook(float_hook(n)) for n, _ in layers
                if n in float_layers]
    models = [model] + ([float_model] if float_model is not None else [])
    flags = {m: m.training for mm in models for m in mm.modules()}
    seen = 0
    try:
        for mm in models:
            mm.eval()
        device = _model_device(model)
        float_device = _model_device(float_model) if float_model is not None else None
        for batch in batches:
            if num_batches is not None and seen >= num_batches:
                break
            # The float model runs first so that its layer outputs wait for the quantized
            # model's hooks (one batch of activations held at a time).
            float_out = None
            if float_model is not None:
                float_out = forward_fn(float_model, _to_device(batch, float_device))
            out = forward_fn(model, _to_device(batch, device))
            float_outputs.clear()
            if float_out is not None:
                for a, b in zip(_flat_tensors(out), _flat_tensors(float_out)):
                    if a.is_floating_point() and a.shape == b.shape:
                        out_power.add(a, b.to(a.device))
            seen += 1
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    if seen == 0:
        raise ValueError("report: batches yielded no batch")

    rows = []
    for name, m in layers:
        wq = getattr(m, "weight_quantizer", None)
        iq = getattr(m, "input_quantizer", None)
        wbits, wscheme = _spec_text(wq)
        abits, ascheme = _spec_text(iq)
        row = LayerReport(name, type(m).__name__, wbits, wscheme, abits, ascheme,
                          *_scale_range(wq), *_scale_range(iq),
                          sqnr_layer=layer_power[name].db(), sqnr_float=float_power[name].db())
        if samples:
            weight = m.weight_to_quantize() if isinstance(m, QuantModuleMixin) else m.weight
            row.weight_sample = _subsample(weight, _SAMPLE, gen)
            row.input_sample = (torch.cat(input_samples[name]) if input_samples[name]
                                else None)
            row.weight_clip = _clip_range(wq)
            row.input_clip = _clip_range(iq)
        rows.append(row)
    return QuantReport(rows, output_sqnr=out_power.db(), num_batches=seen)


def plot_report(report_or_model, batches: Optional[Iterable[Any]] = None,
                float_model: Optional[nn.Module] = None, out_dir: str = "torchqat_report",
                *, max_layers: int = 48, prefix: str = "", **report_kwargs) -> List[str]:
    """Writes PNG files to ``out_dir`` and returns their paths:

    - ``<prefix>sqnr.png``: per-layer SQNR bars (the layer's own error, and against the float
      model when the report has it);
    - ``<prefix>weight_histograms.png`` / ``<prefix>activation_histograms.png``: a histogram
      per layer (the first ``max_layers``) of the weight / input values, with the clipping
      range ``[(qmin - z) s, (qmax - z) s]`` marked: red lines for a per-tensor range, the
      narrowest and widest channel's range (dashed / solid) for a per-channel one.

    ``report_or_model`` is a :class:`QuantReport` from :func:`report`, or a prepared model (then
    ``batches`` are required and :func:`report` runs with ``float_model`` and
    ``report_kwargs``). Uses matplotlib's Agg backend (no display needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(report_or_model, QuantReport):
        rep = report_or_model
    elif isinstance(report_or_model, nn.Module):
        if batches is None:
            raise ValueError("plot_report: batches are required when given a model")
        rep = report(report_or_model, batches, float_model, **report_kwargs)
    else:
        raise ValueError(f"plot_report: expected a QuantReport or an nn.Module, got "
                         f"{type(report_or_model).__name__}")
    os.makedirs(out_dir, exist_ok=True)
    paths = []

    # SQNR bars. inf (an exact layer) is drawn at the top of the axis.
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(rep) + 2), 4.5))
    names = [r.name for r in rep]
    xs = range(len(rep))

    def finite(v):
        return [x if math.isfinite(x) else math.nan for x in v]

    layer_db = finite([r.sqnr_layer for r in rep])
    float_db = finite([r.sqnr_float for r in rep])
    has_float = any(not math.isnan(v) for v in float_db)
    width = 0.4 if has_float else 0.8
    ax.bar([x - (width / 2 if has_float else 0) for x in xs], layer_db, width,
           label="this layer's quantization")
    if has_float:
        ax.bar([x + width / 2 for x in xs], float_db, width, label="accumulated, vs float model")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("SQNR of the layer output (dB)")
    title = "Per-layer SQNR"
    if math.isfinite(rep.output_sqnr):
        title += f" (model output vs float: {rep.output_sqnr:.1f} dB)"
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(bottom=0.3, top=0.92, left=0.08, right=0.98)
    path = os.path.join(out_dir, f"{prefix}sqnr.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    for kind, sample_attr, clip_attr in (("weight", "weight_sample", "weight_clip"),
                                         ("activation", "input_sample", "input_clip")):
        rows = [r for r in rep if getattr(r, sample_attr) is not None][:max_layers]
        if not rows:
            continue
        cols = min(6, len(rows))
        nrows = math.ceil(len(rows) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.0 * nrows), squeeze=False)
        for ax, r in zip(axes.flat, rows):
            values = getattr(r, sample_attr).numpy()
            # One stairs artist on a linear axis of log10(1 + count): hist(log=True) draws 80
            # patches and log tick locators, which made a 48-layer grid take a minute to lay out.
            counts, edges = np.histogram(values, bins=80)
            ax.stairs(np.log10(1 + counts), edges, fill=True, color="0.35")
            ax.set_yticks([])
            ax.locator_params(axis="x", nbins=4)
            clip = getattr(r, clip_attr)
            if clip is not None:
                lo, hi = clip
                if lo.numel() == 1:
                    for v in (float(lo), float(hi)):
                        ax.axvline(v, color="red", lw=1)
                else:
                    width_ = hi - lo
                    narrow, wide = int(width_.argmin()), int(width_.argmax())
                    for v in (float(lo[narrow]), float(hi[narrow])):
                        ax.axvline(v, color="red", lw=0.8, ls="--")
                    for v in (float(lo[wide]), float(hi[wide])):
                        ax.axvline(v, color="red", lw=1)
            bits = r.weight_bits if kind == "weight" else r.activation_bits
            ax.set_title(f"{r.name} ({bits})", fontsize=7)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(rows):]:
            ax.axis("off")
        fig.suptitle(f"{kind} histograms (log count); red: clipping range (per-channel: dashed "
                     "narrowest, solid widest channel)", fontsize=9, y=1 - 0.15 / (2.0 * nrows))
        fig.subplots_adjust(left=0.03, right=0.98, bottom=0.04, top=1 - 0.75 / (2.0 * nrows),
                            wspace=0.15, hspace=0.45)
        path = os.path.join(out_dir, f"{prefix}{kind}_histograms.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


@dataclass
class SensitivityReport:
    """:func:`sensitivity`'s result: ``rows`` are ``(layer, metric with only that layer
    quantized, drop from the float metric)``, the most sensitive layer first."""

    float_metric: float
    quantized_metric: float
    rows: List[Tuple[str, float, float]]
    higher_is_better: bool = True

    @property
    def ranking(self) -> List[str]:
        return [name for name, _, _ in self.rows]

    def __str__(self) -> str:
        width = max([len("layer")] + [len(n) for n, _, _ in self.rows])
        lines = [f"float: {self.float_metric:.4g}; all layers quantized: "
                 f"{self.quantized_metric:.4g}",
                 f"{'rank':>4s}  {'layer'.ljust(width)}  {'metric':>10s}  {'drop':>10s}"]
        for i, (name, value, drop) in enumerate(self.rows, 1):
            lines.append(f"{i:4d}  {name.ljust(width)}  {value:10.4g}  {drop:10.4g}")
        return "\n".join(lines)


@torch.no_grad()
def _output_sqnr_metric(float_model: nn.Module, batches: Sequence[Any],
                        forward_fn) -> Callable[[nn.Module], float]:
    refs = [[t.detach() for t in _flat_tensors(forward_fn(float_model, b))] for b in batches]

    @torch.no_grad()
    def metric(model: nn.Module) -> float:
        power = _Power()
        for b, ref in zip(batches, refs):
            for out, r in zip(_flat_tensors(forward_fn(model, b)), ref):
                if out.is_floating_point() and out.shape == r.shape:
                    power.add(out, r)
        return power.db()

    return metric


def sensitivity(model: nn.Module, batches: Iterable[Any],
                metric: Optional[Callable[[nn.Module], float]] = None,
                config: Optional[QATConfig] = None, *, num_batches: Optional[int] = 8,
                higher_is_better: bool = True,
                forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
                progress: bool = False) -> SensitivityReport:
    """Ranks the quantized layers by how much ``metric`` drops when **only that layer** is
    quantized (weight and input quantizers on, every other quantizer in ``"pass_through"``).

    Args:
        model: a float model (prepared here with ``config``; each layer is then calibrated on
            its own, with the rest of the model in float, from ``batches``) or a model from
            :func:`prepare_qat` (its current scales are used as they are; ``config`` must be
            None).
        batches: calibration batches (the first ``num_batches``), as :func:`calibrate` takes
            them; also the data of the default metric.
        metric: ``metric(model) -> float`` on your validation data (accuracy, mAP, ...); called
            in eval mode. None: the SQNR (dB) of the model's output against the float model's
            on ``batches``.
        higher_is_better: False for a loss; the drop is then ``metric - float_metric``.

    Returns a :class:`SensitivityReport`; the model's quantizer modes and training flags are
    restored.
    """
    forward_fn = forward_fn or _default_forward
    batches = list(batches if num_batches is None else _take(batches, num_batches))
    if not batches:
        raise ValueError("sensitivity: batches yielded no batch")
    prepared = any(isinstance(m, QuantModuleMixin) for m in model.modules())
    if prepared:
        if config is not None:
            raise ValueError("sensitivity: model is already prepared for QAT; config must be "
                             "None (got a QATConfig)")
        qmodel = model
    else:
        qmodel = prepare_qat(model, config)
    device = _model_device(qmodel)
    batches = [_to_device(b, device) for b in batches]
    all_quantizers = quantizers_of(qmodel)
    saved_modes = [(q, q.mode) for _, q in all_quantizers]
    flags = {m: m.training for m in qmodel.modules()}

    layers = [(n, m) for n, m in qmodel.named_modules() if isinstance(m, QuantModuleMixin)
              and any(isinstance(q, FakeQuantizer) for q in m.quantizers())]

    def only(layer: Optional[nn.Module]) -> None:
        for _, q in all_quantizers:
            q.mode = "pass_through"
        if layer is not None:
            for q in layer.quantizers():
                if isinstance(q, FakeQuantizer):
                    q.mode = "fake_quantize"

    try:
        qmodel.eval()
        only(None)
        if metric is None:
            metric = _output_sqnr_metric(qmodel, batches, forward_fn)
        float_metric = float(metric(qmodel))
        rows = []
        sign = 1.0 if higher_is_better else -1.0
        for name, layer in layers:
            only(layer)
            if not prepared:
                calibrate(qmodel, batches, forward_fn=forward_fn, progress=progress)
            qmodel.eval()
            value = float(metric(qmodel))
            rows.append((name, value, sign * (float_metric - value)))
        # All together, each layer with the scales it was calibrated with alone.
        for q, _ in saved_modes:
            q.mode = "fake_quantize"
        quantized_metric = float(metric(qmodel))
    finally:
        for q, mode in saved_modes:
            q.mode = mode
        for m, flag in flags.items():
            m.training = flag
    # Sorted by the metric itself (worst first), not by the drop: with the default metric the
    # float model's SQNR against itself is inf, and every drop would be inf.
    rows.sort(key=lambda r: (math.isnan(r[1]), sign * r[1]))
    return SensitivityReport(float_metric, quantized_metric, rows, higher_is_better)


def _take(batches: Iterable[Any], n: int):
    for i, b in enumerate(batches):
        if i >= n:
            return
        yield b
