"""tq.report / tq.plot_report / tq.sensitivity against independent computations."""

import math
import os

import pytest
import torch
from torch import nn

import torchqat as tq


def _batches(n=3, shape=(16, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _sqnr(ref, out):
    ref, out = ref.detach().double(), out.detach().double()
    return 10 * math.log10(float((ref ** 2).sum()) / float(((out - ref) ** 2).sum()))


def _fq(x, q):
    """Fake quantization written out from DESIGN.md's formula."""
    s = q.effective_scale().float()
    z = q.effective_zero_point().float()
    shape = [1] * x.dim()
    if q.axis is not None:
        shape[q.axis] = -1
    s, z = s.reshape(shape), z.reshape(shape)
    return (torch.clamp(torch.round(x / s) + z, q.quant_min, q.quant_max) - z) * s


def test_one_layer_sqnr_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6))
    cfg = tq.QATConfig(weight=tq.QuantSpec(bits=4, per_channel=True),
                       activation=tq.QuantSpec(bits=4, symmetric=False))
    qmodel = tq.prepare_qat(model, cfg)
    data = _batches()
    tq.calibrate(qmodel, data, progress=False)
    rep = tq.report(qmodel, data, float_model=model)
    assert len(rep) == 1
    row = rep[0]
    assert row.name == "0" and row.type == "QuantLinear"
    assert row.weight_bits == "int4" and row.activation_bits == "uint4"

    layer = qmodel[0]
    wq = _fq(model[0].weight.detach(), layer.weight_quantizer)
    ref = torch.cat([model[0](x) for x in data])
    out = torch.cat([nn.functional.linear(_fq(x, layer.input_quantizer), wq, model[0].bias)
                     for x in data])
    expected = _sqnr(ref, out)
    # One layer: the error it adds is the error against the float model.
    assert row.sqnr_layer == pytest.approx(expected, abs=1e-3)
    assert row.sqnr_float == pytest.approx(expected, abs=1e-3)
    assert rep.output_sqnr == pytest.approx(expected, abs=1e-3)
    s = layer.weight_quantizer.effective_scale()
    assert row.weight_scale_min == pytest.approx(float(s.min()))
    assert row.weight_scale_max == pytest.approx(float(s.max()))
    # 4 bits: a few tens of dB at most, far from inf.
    assert 5 < expected < 40
    text = str(rep)
    assert "QuantLinear" in text and "int4" in text and f"{expected:.1f}" in text


def test_two_layers_separate_own_and_accumulated_error():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    cfg = tq.QATConfig(activation=tq.QuantSpec(bits=8, symmetric=False, observer="minmax"),
                       overrides={"0": {"weight": {"bits": 3, "observer": "minmax"}}})
    qmodel = tq.prepare_qat(model, cfg)
    data = _batches(4)
    tq.calibrate(qmodel, data, progress=False)
    rep = tq.report(qmodel, data, float_model=model)
    first, second = rep
    assert [r.name for r in rep] == ["0", "2"]
    # The second layer's own error (8 bits) is small; against float it inherits the 3-bit
    # first layer's error, so its accumulated SQNR is much lower than its own.
    assert second.sqnr_layer > second.sqnr_float + 10
    # By hand: the second layer's own error on the quantized model's actual inputs.
    h = [torch.relu(qmodel[0](x)) for x in data]
    q2 = qmodel[1 + 1]
    ref = torch.cat([nn.functional.linear(x, q2.weight, q2.bias) for x in h])
    out = torch.cat([nn.functional.linear(_fq(x, q2.input_quantizer),
                                          _fq(q2.weight.detach(), q2.weight_quantizer), q2.bias)
                     for x in h])
    assert second.sqnr_layer == pytest.approx(_sqnr(ref, out), abs=1e-3)
    assert first.sqnr_layer == pytest.approx(first.sqnr_float, abs=1e-6)
    assert rep.worst(1)[0].name == "0"


def test_report_without_float_model_and_skipped_layers():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    qmodel = tq.prepare_qat(model, tq.QATConfig(skip=["2"]))
    data = _batches()
    tq.calibrate(qmodel, data, progress=False)
    qmodel.train()
    rep = tq.report(qmodel, data)
    assert qmodel.training and qmodel[0].training  # flags restored
    assert [r.weight_bits for r in rep] == ["int8", "float"]
    assert math.isnan(rep[0].sqnr_float) and math.isnan(rep.output_sqnr)
    assert rep[0].sqnr_layer > 30          # 8 bits
    assert math.isnan(rep[1].sqnr_layer)   # nothing to compare in a float layer
    qmodel[0].input_quantizer.set_mode("pass_through")
    rep_pt = tq.report(qmodel, data)
    assert "uint8 affine per-tensor (pass_through)" in str(rep_pt)
    assert qmodel[0].input_quantizer.mode == "pass_through"
    # Only the weight is quantized now: less error than weight and input together.
    assert rep_pt[0].sqnr_layer > rep[0].sqnr_layer
    qmodel[0].input_quantizer.set_mode("fake_quantize")
    with pytest.raises(ValueError, match="no quantized layer"):
        tq.report(model, data)
    with pytest.raises(ValueError, match="num_batches"):
        tq.report(qmodel, data, num_batches=0)
    rich = pytest.importorskip("rich")
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(rep)
    assert "QuantLinear" in console.export_text()
    assert rich is not None


def test_plot_report_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    qmodel = tq.prepare_qat(model)
    data = _batches(2, (4, 3, 12, 12))
    tq.calibrate(qmodel, data, progress=False)
    paths = tq.plot_report(qmodel, data, float_model=model, out_dir=str(tmp_path), prefix="m_")
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["m_activation_histograms.png", "m_sqnr.png", "m_weight_histograms.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 5000
    rep = tq.report(qmodel, data)
    # The clipping range drawn for the per-tensor input is [(0 - z) s, (255 - z) s].
    lo, hi = rep[0].input_clip
    q = qmodel[0].input_quantizer
    s, z = float(q.effective_scale()), float(q.effective_zero_point())
    assert float(lo) == pytest.approx(-z * s) and float(hi) == pytest.approx((255 - z) * s)
    with pytest.raises(ValueError, match="batches"):
        tq.plot_report(qmodel, out_dir=str(tmp_path))


class _Three(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 4)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_sensitivity_ranks_the_2bit_layer_worst():
    torch.manual_seed(4)
    model = _Three()
    data = _batches(4)
    cfg = tq.QATConfig(overrides={"b": {"weight": {"bits": 2}, "activation": {"bits": 2}}})
    res = tq.sensitivity(model, data, config=cfg)
    assert res.ranking[0] == "b"
    assert set(res.ranking) == {"a", "b", "c"}
    assert math.isinf(res.float_metric)              # default metric: output SQNR vs float
    assert res.quantized_metric < min(v for _, v, _ in res.rows) + 1e-9
    # Independently: quantize only b (prepare with a and c skipped), calibrate, measure.
    only_b = tq.prepare_qat(model, tq.QATConfig(skip=["a", "c"], overrides=cfg.overrides))
    tq.calibrate(only_b, data, progress=False)
    with torch.no_grad():
        ref = torch.cat([model(x) for x in data])
        out = torch.cat([only_b(x) for x in data])
    assert dict((n, v) for n, v, _ in res.rows)["b"] == pytest.approx(_sqnr(ref, out), abs=1e-3)
    assert "b" in str(res)


def test_sensitivity_with_a_user_metric_on_a_prepared_model():
    torch.manual_seed(5)
    model = _Three()
    data = _batches(4)
    cfg = tq.QATConfig(overrides={"c": {"weight": {"bits": 2}}})
    qmodel = tq.prepare_qat(model, cfg)
    tq.calibrate(qmodel, data, progress=False)
    with torch.no_grad():
        target = [model(x) for x in data]

    def mse(m):
        with torch.no_grad():
            return sum(float(((m(x) - t) ** 2).mean()) for x, t in zip(data, target))

    modes = [q.mode for _, q in tq.prepare.quantizers_of(qmodel)]
    res = tq.sensitivity(qmodel, data, mse, higher_is_better=False)
    assert res.ranking[0] == "c"
    assert res.float_metric == pytest.approx(0.0, abs=1e-10)
    assert all(drop >= 0 for _, _, drop in res.rows)
    assert [q.mode for _, q in tq.prepare.quantizers_of(qmodel)] == modes
    with pytest.raises(ValueError, match="config must be None"):
        tq.sensitivity(qmodel, data, mse, config=cfg)
