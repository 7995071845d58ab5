"""Observers: collect statistics of the tensors a quantizer sees, then choose its scale and zero
point once, at the end of calibration.

Every ``observe`` call is a handful of device operations on small running statistics (per-channel
min/max, a moving average, a 2048-bin histogram per channel); nothing reads a device value on the
host, so observing CUDA tensors never synchronises the stream. ``compute_qparams`` runs once per
calibration and may read values on the host. ``all_reduce`` merges the statistics of every rank so
that all ranks compute the same scales.

Observers are plain Python objects owned by a :class:`torchqat.FakeQuantizer`, not modules: their
statistics are transient calibration state, so they stay out of ``state_dict``, DDP's buffer
broadcast and TorchScript.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

__all__ = [
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "LSQObserver",
    "HistogramObserver",
    "PercentileObserver",
    "MSEObserver",
    "EntropyObserver",
    "make_observer",
    "qparams_from_minmax",
    "MIN_SCALE",
]

#: The smallest scale an observer returns (float32 machine epsilon, PyTorch's choice too): an
#: all-zero channel still gets a valid, positive scale.
MIN_SCALE = float(torch.finfo(torch.float32).eps)


def qparams_from_minmax(
    min_val: torch.Tensor, max_val: torch.Tensor, quant_min: int, quant_max: int, symmetric: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) that cover ``[min_val, max_val]`` and zero.

    symmetric:  s = max(|min|, |max|) / ((quant_max - quant_min) / 2),  z = 0
    affine:     s = (max(max, 0) - min(min, 0)) / (quant_max - quant_min),
                z = clamp(quant_min - round(min(min, 0) / s), quant_min, quant_max)

    (PyTorch's observers use the same formulas.) Pure device operations.
    """
    min_val = min_val.float()
    max_val = max_val.float()
    if symmetric:
        amax = torch.maximum(min_val.abs(), max_val.abs())
        scale = (amax / ((quant_max - quant_min) / 2.0)).clamp_min(MIN_SCALE)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        lo = min_val.clamp_max(0.0)
        hi = max_val.clamp_min(0.0)
        scale = ((hi - lo) / float(quant_max - quant_min)).clamp_min(MIN_SCALE)
        zero_point = (quant_min - torch.round(lo / scale)).clamp(quant_min, quant_max)
        zero_point = zero_point.to(torch.int32)
    return scale, zero_point


class Observer:
    """Base class. Subclasses keep running statistics in device tensors and implement
    ``_observe`` (device ops only), ``_empty_state``, ``_reduce`` and ``_qparams``.

    Args:
        quant_min, quant_max: the integer range.
        symmetric: zero point fixed at 0 (signed range) or free (unsigned range).
        axis: None for per-tensor, else the channel axis of observed tensors.
        num_channels: the size of ``axis`` (1 for per-tensor).
    """

    kind = "base"

    def __init__(
        self,
        quant_min: int,
        quant_max: int,
        symmetric: bool,
        axis: Optional[int] = None,
        num_channels: int = 1,
    ) -> None:
        if quant_min >= quant_max:
            raise ValueError(
                f"{type(self).__name__}: quant_min must be < quant_max, got {quant_min}, {quant_max}"
            )
        if axis is None and num_channels != 1:
            raise ValueError(
                f"{type(self).__name__}: num_channels must be 1 for a per-tensor observer, "
                f"got {num_channels}"
            )
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.symmetric = symmetric
        self.axis = axis
        self.num_channels = num_channels
        self.reset()

    # -- public API ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forgets everything observed."""
        self.num_observed = 0  # host-side count of observe() calls on this rank
        self.state: Optional[List[torch.Tensor]] = None

    @property
    def has_observations(self) -> bool:
        return self.num_observed > 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Adds ``x`` to the statistics. Device operations only; no host synchronisation."""
        if x.numel() == 0:
            return
        v = self._as_channels(x)
        if self.state is None:
            self.state = self._first_state(v)
        else:
            self._observe(v)
        self.num_observed += 1

    @torch.no_grad()
    def compute_qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)``: float32 and int32 tensors of ``num_channels`` elements."""
        if self.state is None:
            raise RuntimeError(f"{type(self).__name__}: nothing was observed")
        return self._qparams()

    @torch.no_grad()
    def all_reduce(self, device: torch.device, group=None) -> None:
        """Merges the statistics of every rank of ``group`` (collective: all ranks must call it, in
        the same order for every observer). A rank that observed nothing contributes the neutral
        element, so afterwards every rank holds the same statistics and computes the same
        qparams. Also sums ``num_observed`` over ranks."""
        import torch.distributed as dist

        if self.state is None:
            self.state = self._empty_state(torch.device(device))
        count = torch.tensor([float(self.num_observed)], device=self.state[0].device)
        dist.all_reduce(count, group=group)
        self._reduce(group)
        self.num_observed = int(count.item())

    # -- helpers for subclasses ------------------------------------------------------------------

    def _as_channels(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as float32 ``[num_channels, N]``."""
        x = x.detach()
        if self.axis is None:
            return x.reshape(1, -1).float()
        if not -x.dim() <= self.axis < x.dim():
            raise ValueError(
                f"{type(self).__name__}: axis {self.axis} is out of range for a tensor of "
                f"shape {tuple(x.shape)}"
            )
        if x.size(self.axis) != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}: expected {self.num_channels} channels along axis "
                f"{self.axis}, got a tensor of shape {tuple(x.shape)}"
            )
        return x.movedim(self.axis, 0).reshape(self.num_channels, -1).float()

    def _first_state(self, v: torch.Tensor) -> List[torch.Tensor]:
        self.state = self._empty_state(v.device)
        self._observe(v)
        return self.state

    def _empty_state(self, device: torch.device) -> List[torch.Tensor]:
        raise NotImplementedError

    def _observe(self, v: torch.Tensor) -> None:
        raise NotImplementedError

    def _reduce(self, group) -> None:
        raise NotImplementedError

    def _qparams(self) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        gran = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"{type(self).__name__}({gran}, observed={self.num_observed})"


class MinMaxObserver(Observer):
    """Running minimum and maximum over everything observed."""

    kind = "minmax"

    def _empty_state(self, device):
        c = self.num_channels
        return [
            torch.full((c,), math.inf, device=device),
            torch.full((c,), -math.inf, device=device),
        ]

    def _observe(self, v):
        lo, hi = torch.aminmax(v, dim=1)
        torch.minimum(self.state[0], lo, out=self.state[0])
        torch.maximum(self.state[1], hi, out=self.state[1])

    def _reduce(self, group):
        import torch.distributed as dist

        dist.all_reduce(self.state[0], op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(self.state[1], op=dist.ReduceOp.MAX, group=group)

    def _qparams(self):
        return qparams_from_minmax(
            self.state[0], self.state[1], self.quant_min, self.quant_max, self.symmetric
        )


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving averages of each batch's min and max: ``m += c * (batch - m)``. The
    first batch sets them. Across ranks the averages are averaged (weighted by whether a rank
    observed anything)."""

    kind = "moving_average"

    def __init__(self, *args, averaging_constant: float = 0.01, **kwargs) -> None:
        self.averaging_constant = averaging_constant
        super().__init__(*args, **kwargs)

    def _empty_state(self, device):
        c = self.num_channels
        return [torch.zeros(c, device=device), torch.zeros(c, device=device)]

    def _observe(self, v):
        lo, hi = torch.aminmax(v, dim=1)
        if self.num_observed == 0:
            self.state[0].copy_(lo)
            self.state[1].copy_(hi)
        else:
            self.state[0].lerp_(lo, self.averaging_constant)
            self.state[1].lerp_(hi, self.averaging_constant)

    def _reduce(self, group):
        import torch.distributed as dist

        weight = torch.full((1,), 1.0 if self.num_observed > 0 else 0.0,
                            device=self.state[0].device)
        packed = torch.cat([self.state[0] * weight, self.state[1] * weight, weight])
        dist.all_reduce(packed, group=group)
        c = self.num_channels
        total = packed[2 * c:].clamp_min(1.0)
        self.state[0].copy_(packed[:c] / total)
        self.state[1].copy_(packed[c:2 * c] / total)


class LSQObserver(Observer):
    """LSQ's initialisation (Esser et al., 2020): ``s = 2 * mean(|x|) / sqrt(quant_max)``, zero
    point 0 (for affine specs: the unsigned range starting at zero)."""

    kind = "lsq"

    def _empty_state(self, device):
        c = self.num_channels
        return [torch.zeros(c, dtype=torch.float64, device=device),
                torch.zeros(c, dtype=torch.float64, device=device)]

    def _observe(self, v):
        self.state[0].add_(v.abs().sum(dim=1, dtype=torch.float64))
        self.state[1].add_(v.size(1))

    def _reduce(self, group):
        import torch.distributed as dist

        packed = torch.cat(self.state)
        dist.all_reduce(packed, group=group)
        c = self.num_channels
        self.state[0].copy_(packed[:c])
        self.state[1].copy_(packed[c:])

    def _qparams(self):
        mean = self.state[0] / self.state[1].clamp_min(1.0)
        scale = (2.0 * mean / math.sqrt(self.quant_max)).float().clamp_min(MIN_SCALE)
        zp = torch.zeros_like(scale, dtype=torch.int32).clamp(self.quant_min, self.quant_max)
        return scale, zp


class HistogramObserver(Observer):
    """A histogram of ``bins`` bins per channel (default 2048 per tensor, 512 per channel), over ``|x|`` on ``[0, max|x|]`` for symmetric
    specs and over ``x`` on ``[min(x, 0), max(x, 0)]`` for affine ones.

    The range only grows. When a batch widens it, the old counts are moved into the new bins on
    the device, each old bin's mass split between the (at most two) new bins it overlaps in
    proportion to the overlap; then the batch is binned with ``index_put_(accumulate=True)``.
    ``torch.histc`` / ``bincount`` are not used because they need the range or the output size on
    the host. Subclasses choose the range from the histogram in ``_choose_range``.
    """

    kind = "histogram"

    def __init__(self, *args, bins: Optional[int] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Per-channel histograms serve weights, observed once: 512 bins still put four bins in
        # every int8 step, at a quarter of the cost of the search.
        self.bins = bins if bins is not None else (2048 if self.axis is None else 512)

    # state: [hist (C, bins) float64, lo (C,), hi (C,)]
    def _empty_state(self, device):
        c = self.num_channels
        return [
            torch.zeros(c, self.bins, dtype=torch.float64, device=device),
            torch.zeros(c, device=device),
            torch.zeros(c, device=device),
        ]

    def _values(self, v: torch.Tensor) -> torch.Tensor:
        return v.abs() if self.symmetric else v

    def _observe(self, v):
        v = self._values(v)
        hist, lo, hi = self.state
        b_lo, b_hi = torch.aminmax(v, dim=1)
        new_lo = torch.minimum(lo, b_lo.clamp_max(0.0))
        new_hi = torch.maximum(hi, b_hi.clamp_min(0.0))
        if self.num_observed > 0:
            hist = self._rebin(hist, lo, hi, new_lo, new_hi)
        self.state = [hist, new_lo, new_hi]
        self._add(v)

    def _add(self, v: torch.Tensor) -> None:
        hist, lo, hi = self.state
        width = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
        pos = (v - lo[:, None]) * (self.bins / width)[:, None]
        idx = pos.floor_().clamp_(0, self.bins - 1).long()
        idx += torch.arange(self.num_channels, device=v.device)[:, None] * self.bins
        one = torch.ones((), dtype=hist.dtype, device=hist.device)
        hist.view(-1).index_put_((idx.reshape(-1),), one, accumulate=True)

    def _rebin(self, hist, lo, hi, new_lo, new_hi):
        """Moves ``hist`` (over ``[lo, hi]``) into bins over ``[new_lo, new_hi]`` ⊇ it."""
        b = self.bins
        k = torch.arange(b, device=hist.device, dtype=torch.float64)
        lo, hi = lo.double()[:, None], hi.double()[:, None]
        new_lo, new_hi = new_lo.double()[:, None], new_hi.double()[:, None]
        w = (hi - lo) / b
        nw = ((new_hi - new_lo) / b).clamp_min(torch.finfo(torch.float64).tiny)
        start = lo + k * w                                         # old bins' left edges
        pos = (start - new_lo) / nw
        i0 = pos.floor().clamp(0, b - 1)
        edge = new_lo + (i0 + 1) * nw                              # right edge of new bin i0
        frac = torch.where(w > 0, ((edge - start) / w.clamp_min(1e-300)).clamp(0, 1),
                           torch.ones_like(start))
        i0 = i0.long()
        i1 = (i0 + 1).clamp_max(b - 1)
        out = torch.zeros_like(hist)
        out.scatter_add_(1, i0, hist * frac)
        out.scatter_add_(1, i1, hist * (1 - frac))
        return out

    def _reduce(self, group):
        import torch.distributed as dist

        hist, lo, hi = self.state
        new_lo, new_hi = lo.clone(), hi.clone()
        dist.all_reduce(new_lo, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(new_hi, op=dist.ReduceOp.MAX, group=group)
        hist = self._rebin(hist, lo, hi, new_lo, new_hi)
        dist.all_reduce(hist, group=group)
        self.state = [hist, new_lo, new_hi]

    def centers(self) -> torch.Tensor:
        """Bin centres, ``[C, bins]`` float64."""
        _, lo, hi = self.state
        w = (hi.double() - lo.double()) / self.bins
        k = torch.arange(self.bins, device=lo.device, dtype=torch.float64)
        return lo.double()[:, None] + (k + 0.5) * w[:, None]

    def _qparams(self):
        lo_cut, hi_cut = self._choose_range()
        if self.symmetric:
            return qparams_from_minmax(-hi_cut, hi_cut, self.quant_min, self.quant_max, True)
        return qparams_from_minmax(lo_cut, hi_cut, self.quant_min, self.quant_max, False)

    def _choose_range(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(lo_cut, hi_cut)`` per channel (for symmetric specs ``hi_cut`` is the threshold of
        ``|x|``)."""
        _, lo, hi = self.state
        return lo, hi

    def _candidate_ranges(self, num: int):
        """Clipping candidates: the observed range shrunk by ``alpha`` in ``(0, 1]``."""
        _, lo, hi = self.state
        for j in range(1, num + 1):
            alpha = j / num
            yield alpha, lo * alpha, hi * alpha


class PercentileObserver(HistogramObserver):
    """Clips at a percentile of the distribution: of ``|x|`` for symmetric specs, at
    ``100 - p`` and ``p`` of ``x`` for affine ones (the range still includes zero). Interpolates
    linearly inside the bin."""

    kind = "percentile"

    def __init__(self, *args, percentile: float = 99.99, **kwargs) -> None:
        self.percentile = percentile
        super().__init__(*args, **kwargs)

    def _quantile(self, q: float) -> torch.Tensor:
        hist, lo, hi = self.state
        cdf = hist.cumsum(dim=1)
        total = cdf[:, -1:]
        target = (total * q).contiguous()
        k = torch.searchsorted(cdf.contiguous(), target).clamp_max(self.bins - 1)
        below = torch.where(k > 0, cdf.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(target))
        inside = hist.gather(1, k)
        frac = torch.where(inside > 0, (target - below) / inside.clamp_min(1e-300),
                           torch.ones_like(target)).clamp(0, 1)
        w = (hi.double() - lo.double())[:, None] / self.bins
        value = lo.double()[:, None] + (k.double() + frac) * w
        return value.squeeze(1).float()

    def _choose_range(self):
        p = self.percentile / 100.0
        _, lo, hi = self.state
        if self.symmetric:
            return lo, self._quantile(p)
        return self._quantile(1.0 - p).clamp_max(0.0), self._quantile(p).clamp_min(0.0)


class MSEObserver(HistogramObserver):
    """Chooses the clipping range that minimises the expected squared quantization error on the
    histogram: a value inside the representable range costs ``s^2 / 12`` (uniform rounding
    error), one outside costs its squared distance to the nearest end. Searches ``candidates``
    ranges ``alpha * observed range``, ``alpha`` in ``(0, 1]``, per channel."""

    kind = "mse"

    def __init__(self, *args, candidates: int = 128, **kwargs) -> None:
        self.candidates = candidates
        super().__init__(*args, **kwargs)

    def expected_error(self, lo_cut: torch.Tensor, hi_cut: torch.Tensor) -> torch.Tensor:
        """Expected squared error of quantizing to the grid fitted to each cut. ``lo_cut`` and
        ``hi_cut`` are ``[K, C]`` (K candidates per channel); returns ``[K, C]``."""
        # float32 is ample to rank candidates and halves the cost of the search.
        hist = self.state[0].float()
        c = self.centers().float()[None]                           # [1, C, bins]
        if self.symmetric:
            scale, _ = qparams_from_minmax(-hi_cut, hi_cut, self.quant_min, self.quant_max, True)
            s = scale[..., None]
            clip_lo, clip_hi = torch.zeros_like(s), self.quant_max * s
        else:
            scale, zp = qparams_from_minmax(lo_cut, hi_cut, self.quant_min, self.quant_max, False)
            s = scale[..., None]
            z = zp.float()[..., None]
            clip_lo, clip_hi = (self.quant_min - z) * s, (self.quant_max - z) * s
        err = torch.where(c > clip_hi, (c - clip_hi) ** 2,
                          torch.where(c < clip_lo, (c - clip_lo) ** 2, s * s / 12.0))
        return (hist[None] * err).sum(dim=-1)

    def _choose_range(self):
        _, lo, hi = self.state
        alphas = torch.arange(1, self.candidates + 1, device=lo.device) / self.candidates
        lo_cuts = alphas[:, None] * lo[None]                       # [K, C]
        hi_cuts = alphas[:, None] * hi[None]
        # Evaluate candidates in chunks of about 4M histogram cells: few, large operations.
        chunk = max(1, (1 << 22) // (self.num_channels * self.bins))
        errors = torch.cat([self.expected_error(lo_cuts[i:i + chunk], hi_cuts[i:i + chunk])
                            for i in range(0, self.candidates, chunk)])
        best = errors.argmin(dim=0, keepdim=True)                  # [1, C]; ties: smallest cut
        return lo_cuts.gather(0, best)[0], hi_cuts.gather(0, best)[0]


class EntropyObserver(HistogramObserver):
    """TensorRT's entropy calibration, per tensor: the clipping range whose quantized
    distribution Q has the least KL divergence from the clipped reference P (outliers folded into
    the edge bins). Candidates are the observed range shrunk by ``alpha``, keeping at least as
    many bins as quantization levels."""

    kind = "entropy"

    def __init__(self, *args, candidates: int = 128, **kwargs) -> None:
        self.candidates = candidates
        super().__init__(*args, **kwargs)
        if self.num_channels != 1:
            raise ValueError("EntropyObserver: per-tensor only, got num_channels="
                             f"{self.num_channels}")

    @staticmethod
    def kl_divergence(hist: torch.Tensor, start: int, stop: int, levels: int) -> float:
        """KL(P || Q) of the window ``hist[start:stop]`` quantized to ``levels`` levels."""
        window = hist[start:stop]
        p = window.clone()
        p[0] += hist[:start].sum()
        p[-1] += hist[stop:].sum()
        n = stop - start
        group = torch.clamp(torch.arange(n) * levels // n, max=levels - 1)
        mass = torch.zeros(levels, dtype=hist.dtype).scatter_add_(0, group, window)
        nonzero = torch.zeros(levels, dtype=hist.dtype).scatter_add_(
            0, group, (window > 0).to(hist.dtype))
        q = torch.where(window > 0, (mass / nonzero.clamp_min(1))[group], torch.zeros_like(window))
        p = p / p.sum()
        q_total = q.sum()
        if q_total <= 0:
            return math.inf
        q = (q / q_total).clamp_min(1e-12)  # P's edge bins may hold only outliers
        mask = p > 0
        return float((p[mask] * (p[mask] / q[mask]).log()).sum())

    def _choose_range(self):
        hist, lo, hi = self.state
        h = hist[0].cpu()
        lo_v, hi_v = float(lo[0]), float(hi[0])
        width = hi_v - lo_v
        if width <= 0 or h.sum() <= 0:
            return lo, hi
        levels = self.quant_max + 1 if self.symmetric else self.quant_max - self.quant_min + 1
        levels = min(levels, self.bins)
        best, best_alpha = math.inf, 1.0
        for alpha, _, _ in self._candidate_ranges(self.candidates):
            start = int(round((lo_v * alpha - lo_v) / width * self.bins))
            stop = int(round((hi_v * alpha - lo_v) / width * self.bins))
            if stop - start < levels:
                continue
            kl = self.kl_divergence(h, start, stop, levels)
            if kl < best:
                best, best_alpha = kl, alpha
        return lo * best_alpha, hi * best_alpha


_OBSERVERS = {
    cls.kind: cls
    for cls in (MinMaxObserver, MovingAverageMinMaxObserver, LSQObserver, PercentileObserver,
                MSEObserver, EntropyObserver)
}


def make_observer(
    kind: str,
    quant_min: int,
    quant_max: int,
    symmetric: bool,
    axis: Optional[int] = None,
    num_channels: int = 1,
    averaging_constant: float = 0.01,
    percentile: float = 99.99,
) -> Observer:
    """The observer named ``kind`` (one of ``torchqat.config.OBSERVERS``)."""
    if kind not in _OBSERVERS:
        raise ValueError(f"make_observer: unknown observer kind {kind!r}; "
                         f"known: {', '.join(sorted(_OBSERVERS))}")
    cls = _OBSERVERS[kind]
    kwargs = {}
    if cls is MovingAverageMinMaxObserver:
        kwargs["averaging_constant"] = averaging_constant
    if cls is PercentileObserver:
        kwargs["percentile"] = percentile
    return cls(quant_min, quant_max, symmetric, axis=axis, num_channels=num_channels, **kwargs)
