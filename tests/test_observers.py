"""Observers against independent references: torch.aminmax / torch.quantile over the concatenated
data, a hand-written moving average, a brute-force MSE search with PyTorch's own fake-quant
operator, and entropy calibration's known behaviour; plus the no-host-sync guarantee."""

import math

import pytest
import torch

from torchqat.observers import (
    MIN_SCALE,
    EntropyObserver,
    HistogramObserver,
    LSQObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
    qparams_from_minmax,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KINDS = ["minmax", "moving_average", "percentile", "mse", "entropy", "lsq"]


def batches(n=4, shape=(8, 6, 5), seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    # Growing spread so histogram ranges must widen between batches.
    return [(torch.randn(shape, generator=g) * (1 + i) + 0.3 * i).to(device) for i in range(n)]


def ref_qparams(lo, hi, qmin, qmax, symmetric):
    """Plain-Python reference of the min/max → (scale, zero point) formulas."""
    if symmetric:
        s = max(abs(lo), abs(hi)) / ((qmax - qmin) / 2)
        return max(s, MIN_SCALE), 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = max((hi - lo) / (qmax - qmin), MIN_SCALE)
    z = qmin - round(lo / s)
    return s, min(max(z, qmin), qmax)


@pytest.mark.parametrize("symmetric,qmin,qmax", [(True, -127, 127), (True, -8, 7), (False, 0, 255),
                                                  (False, 0, 15)])
def test_qparams_from_minmax_matches_reference(symmetric, qmin, qmax):
    lo = torch.tensor([-1.0, 0.5, -3.0, 0.0, -0.2])
    hi = torch.tensor([2.0, 1.5, -1.0, 0.0, 7.0])
    s, z = qparams_from_minmax(lo, hi, qmin, qmax, symmetric)
    assert s.dtype == torch.float32 and z.dtype == torch.int32
    for i in range(len(lo)):
        rs, rz = ref_qparams(float(lo[i]), float(hi[i]), qmin, qmax, symmetric)
        assert s[i].item() == pytest.approx(rs, rel=1e-6)
        assert z[i].item() == rz
    # An all-zero channel still gets a positive scale.
    assert s[3].item() == pytest.approx(MIN_SCALE)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", [None, 1, -1])
def test_minmax_over_batches_equals_concatenation(device, axis):
    data = batches(device=device)
    c = 1 if axis is None else data[0].size(axis)
    obs = MinMaxObserver(0, 255, False, axis=axis, num_channels=c)
    for x in data:
        obs.observe(x)
    cat = torch.cat(data)
    if axis is None:
        lo, hi = cat.min().reshape(1), cat.max().reshape(1)
    else:
        v = cat.movedim(axis, 0).reshape(c, -1)
        lo, hi = v.min(dim=1).values, v.max(dim=1).values
    assert torch.equal(obs.state[0], lo) and torch.equal(obs.state[1], hi)
    s, z = obs.compute_qparams()
    rs, rz = qparams_from_minmax(lo, hi, 0, 255, False)
    assert torch.equal(s, rs) and torch.equal(z, rz)


def test_moving_average_matches_hand_written_ema():
    data = batches(n=5)
    obs = MovingAverageMinMaxObserver(-127, 127, True, averaging_constant=0.25)
    lo, hi = None, None
    for x in data:
        obs.observe(x)
        if lo is None:
            lo, hi = x.min().item(), x.max().item()
        else:
            lo += 0.25 * (x.min().item() - lo)
            hi += 0.25 * (x.max().item() - hi)
    assert obs.state[0].item() == pytest.approx(lo, rel=1e-6)
    assert obs.state[1].item() == pytest.approx(hi, rel=1e-6)
    s, _ = obs.compute_qparams()
    assert s.item() == pytest.approx(max(abs(lo), abs(hi)) / 127, rel=1e-6)


def test_lsq_init_is_two_mean_abs_over_sqrt_qmax():
    data = batches(n=3)
    obs = LSQObserver(-8, 7, True, axis=0, num_channels=8)
    for x in data:
        obs.observe(x)
    cat = torch.cat([x.reshape(8, -1) for x in data], dim=1)
    expected = 2 * cat.abs().mean(dim=1) / math.sqrt(7)
    s, z = obs.compute_qparams()
    torch.testing.assert_close(s, expected.float(), rtol=1e-6, atol=0)
    assert torch.all(z == 0)


def _bin_width(obs: HistogramObserver) -> torch.Tensor:
    return (obs.state[2] - obs.state[1]) / obs.bins


@pytest.mark.parametrize("symmetric", [True, False])
def test_histogram_rebinning_keeps_mass_and_quantiles(symmetric):
    data = batches(n=5, shape=(64, 128))
    obs = PercentileObserver(-127 if symmetric else 0, 127 if symmetric else 255, symmetric,
                             percentile=99.0)
    for x in data:
        obs.observe(x)
    cat = torch.cat([x.reshape(-1) for x in data])
    assert obs.state[0].sum().item() == pytest.approx(cat.numel())
    values = cat.abs() if symmetric else cat
    assert obs.state[2].item() == pytest.approx(values.max().item())
    # Rebinning moves mass by at most a bin per widening: quantiles stay within a few bins.
    w = _bin_width(obs).item()
    for q in (0.5, 0.9, 0.99):
        ref = torch.quantile(values.double(), q).item()
        assert abs(obs._quantile(q).item() - ref) < 4 * w


def test_percentile_per_channel_matches_torch_quantile():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 64, 8, 8, generator=g) * torch.arange(1, 7).view(6, 1, 1, 1)
    obs = make_observer("percentile", -127, 127, True, axis=0, num_channels=6, percentile=99.0)
    obs.observe(w)
    s, z = obs.compute_qparams()
    # The inverse CDF: the smallest value with 99 % of the channel at or below it. It lies
    # between two order statistics; the histogram answers to within a bin.
    v = w.abs().reshape(6, -1).sort(dim=1).values
    k = math.ceil(0.99 * v.size(1)) - 1
    bin_w = _bin_width(obs)
    t = s * 127
    assert torch.all(t >= v[:, k - 1] - bin_w) and torch.all(t <= v[:, k] + bin_w)
    assert torch.all(z == 0)


def _true_mse(x, scale, zp, qmin, qmax):
    y = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)
    return (y - x).pow(2).mean().item()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_choice_is_near_brute_force_optimum(bits, symmetric):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20000, generator=g)
    x[:10] *= 12  # outliers: min-max would waste the range
    if not symmetric:
        x = torch.nn.functional.silu(x * 2)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    obs = MSEObserver(qmin, qmax, symmetric)
    obs.observe(x)
    s, z = obs.compute_qparams()
    chosen = _true_mse(x, s, z, qmin, qmax)
    # Brute force over 400 clipping ranges with PyTorch's operator on the real data.
    lo, hi = x.min().item(), x.max().item()
    best = math.inf
    for a in torch.linspace(0.02, 1.0, 400).tolist():
        bs, bz = ref_qparams(lo * a, hi * a, qmin, qmax, symmetric)
        best = min(best, _true_mse(x, bs, bz, qmin, qmax))
    minmax_s, minmax_z = ref_qparams(lo, hi, qmin, qmax, symmetric)
    assert chosen <= 1.10 * best
    if bits == 4:  # clipping pays off at 4 bits with outliers
        assert chosen < 0.8 * _true_mse(x, minmax_s, minmax_z, qmin, qmax)


def test_mse_per_channel_is_searched_per_channel():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 256, generator=g)
    w[1] *= 10
    w[2, :3] = 6.0  # a channel with outliers
    obs = MSEObserver(-7, 7, True, axis=0, num_channels=4)
    obs.observe(w)
    s, _ = obs.compute_qparams()
    amax = w.abs().amax(dim=1)
    assert s[1] > 5 * s[0]                 # scales follow each channel's spread
    for c in range(4):  # each channel near its own brute-force optimum
        row = w[c]
        best = min(_true_mse(row, a * amax[c].item() / 7, 0, -7, 7)
                   for a in torch.linspace(0.05, 1.0, 200).tolist())
        assert _true_mse(row, s[c].item(), 0, -7, 7) <= 1.10 * best


def test_entropy_clips_gaussian_tails_and_keeps_uniform_range():
    g = torch.Generator().manual_seed(4)
    gauss = torch.randn(200000, generator=g)
    obs = EntropyObserver(-127, 127, True)
    obs.observe(gauss)
    s, _ = obs.compute_qparams()
    t = s.item() * 127
    amax = gauss.abs().max().item()
    assert 2.5 < t < amax  # clips the sparse tail, keeps the bulk

    uniform = torch.rand(200000, generator=g) * 2 - 1
    obs = EntropyObserver(-127, 127, True)
    obs.observe(uniform)
    s, _ = obs.compute_qparams()
    assert s.item() * 127 > 0.9


def test_entropy_kl_is_zero_when_window_is_exactly_representable():
    hist = torch.zeros(16, dtype=torch.float64)
    hist[::2] = 1.0  # 8 levels, one occupied bin each, none outside
    assert EntropyObserver.kl_divergence(hist, 0, 16, 8) == pytest.approx(0.0, abs=1e-9)
    hist[15] = 5.0   # mass that clipping at 8 bins folds into the edge
    assert EntropyObserver.kl_divergence(hist, 0, 8, 8) > 0.0


def test_entropy_is_per_tensor_only():
    with pytest.raises(ValueError, match="per-tensor only"):
        EntropyObserver(-127, 127, True, axis=0, num_channels=4)


@pytest.mark.parametrize("kind", KINDS)
def test_observe_reads_nothing_on_the_host(kind, monkeypatch):
    """observe() must not synchronise: it may never pull a device value to Python."""
    axis, c = (None, 1) if kind == "entropy" else (1, 6)
    obs = make_observer(kind, 0, 255, False, axis=axis, num_channels=c)
    data = batches()

    def forbidden(*args, **kwargs):
        raise AssertionError("host read of a tensor value during observe()")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for x in data:
        obs.observe(x)
    monkeypatch.undo()
    s, z = obs.compute_qparams()
    assert torch.all(s > 0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_observe_does_not_sync_cuda(kind):
    axis, c = (None, 1) if kind == "entropy" else (1, 6)
    obs = make_observer(kind, 0, 255, False, axis=axis, num_channels=c)
    data = batches(device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x in data:
            obs.observe(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    s, _ = obs.compute_qparams()
    assert s.is_cuda


@pytest.mark.parametrize("kind", ["minmax", "percentile", "mse", "lsq"])
def test_per_channel_on_a_strided_last_axis(kind):
    """axis=-1 of a 2-D tensor gives a non-contiguous [C, N] view: histograms must cope."""
    g = torch.Generator().manual_seed(6)
    # The same values in every channel, scaled by 1, 2, 4, 8: scales must double per channel.
    x = torch.randn(200, 1, generator=g) * torch.tensor([1.0, 2.0, 4.0, 8.0])
    obs = make_observer(kind, -127, 127, True, axis=-1, num_channels=4, percentile=100.0)
    obs.observe(x)
    obs.observe(x * 0.5)
    s, _ = obs.compute_qparams()
    assert s.shape == (4,)
    torch.testing.assert_close(s[1:] / s[:-1], torch.full((3,), 2.0), rtol=1e-4, atol=0)
    if kind in ("minmax", "percentile"):
        amax = x.abs().amax(0) / 127
        tol = 0.0 if kind == "minmax" else 2 * (x.abs().amax(0) / 512 / 127).max().item()
        torch.testing.assert_close(s, amax, rtol=1e-6, atol=tol)


def test_nothing_observed_raises_and_empty_tensor_is_ignored():
    obs = MinMaxObserver(0, 255, False)
    obs.observe(torch.empty(0, 3))
    assert not obs.has_observations
    with pytest.raises(RuntimeError, match="nothing was observed"):
        obs.compute_qparams()


def test_channel_mismatch_is_a_clear_error():
    obs = MinMaxObserver(-127, 127, True, axis=0, num_channels=4)
    with pytest.raises(ValueError, match="expected 4 channels along axis 0"):
        obs.observe(torch.randn(3, 5))
    with pytest.raises(ValueError, match="unknown observer kind"):
        make_observer("kmeans", 0, 255, False)
