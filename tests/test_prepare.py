"""prepare_qat and calibrate: configuration errors, what gets swapped, skip globs, overrides,
logging, and calibration against scales computed independently from the recorded layer inputs."""

import logging

import pytest
import torch
from torch import nn

import torchqat as tq
from torchqat import QATConfig, QuantSpec
from torchqat.nn import QuantModuleMixin
from torchqat.observers import qparams_from_minmax
from qat_models import SmallCNN, TinyDetector


# -- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(bits=1), r"QuantSpec.bits must be an integer in \[2, 16\], got 1"),
    (dict(bits=17), r"QuantSpec.bits must be an integer in \[2, 16\], got 17"),
    (dict(bits=8.0), r"QuantSpec.bits must be an integer"),
    (dict(symmetric=False, narrow_range=True), r"QuantSpec.narrow_range applies to symmetric"),
    (dict(axis=0), r"QuantSpec.axis is only meaningful with per_channel=True"),
    (dict(observer="kl"), r"QuantSpec.observer must be one of"),
    (dict(per_channel=True, observer="entropy"), r"'entropy' is per-tensor only"),
    (dict(percentile=0.0), r"QuantSpec.percentile must be in \(0, 100\], got 0.0"),
    (dict(averaging_constant=1.5), r"QuantSpec.averaging_constant must be in \(0, 1\]"),
    (dict(grad_factor=-1.0), r"QuantSpec.grad_factor must be a finite float > 0"),
    (dict(learnable="yes"), r"QuantSpec.learnable must be a bool, got 'yes'"),
])
def test_quantspec_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)


def test_quantspec_ranges():
    assert (QuantSpec(bits=8).quant_min, QuantSpec(bits=8).quant_max) == (-128, 127)
    assert QuantSpec(bits=8, narrow_range=True).quant_min == -127
    assert (QuantSpec(bits=4, symmetric=False).quant_min,
            QuantSpec(bits=4, symmetric=False).quant_max) == (0, 15)
    assert QuantSpec(bits=16).quant_max == 32767
    assert QuantSpec(bits=8).observer_kind("weight") == "minmax"
    assert QuantSpec(bits=8).observer_kind("activation") == "moving_average"
    assert QuantSpec(bits=4).observer_kind("activation") == "mse"


def test_qatconfig_validation():
    with pytest.raises(ValueError, match=r"QATConfig.activation.axis: a per-channel activation "
                                         r"spec needs an axis"):
        QATConfig(activation=QuantSpec(per_channel=True))
    with pytest.raises(ValueError, match=r"QATConfig.overrides\['a'\] has key 'bias'"):
        QATConfig(overrides={"a": {"bias": QuantSpec()}})
    with pytest.raises(ValueError, match=r"unknown QuantSpec field 'bitz'"):
        QATConfig(overrides={"a": {"weight": {"bitz": 4}}})
    with pytest.raises(ValueError, match=r"QATConfig.overrides\['a'\]\['weight'\]: "
                                         r"QuantSpec.bits .* got 40"):
        QATConfig(overrides={"a": {"weight": {"bits": 40}}})
    with pytest.raises(ValueError, match=r"QATConfig.skip\[0\] must be a non-empty string"):
        QATConfig(skip=[""])
    with pytest.raises(ValueError, match=r"QATConfig.weight must be a QuantSpec or None, got 8"):
        QATConfig(weight=8)


def test_patterns_that_match_nothing_are_refused():
    model = SmallCNN()
    with pytest.raises(ValueError, match=r"skip pattern 'backbone\.\*' matches no module"):
        tq.prepare_qat(model, QATConfig(skip=["backbone.*"]))
    # 'features.1' exists (a BatchNorm) but is not a quantizable layer.
    with pytest.raises(ValueError, match=r"overrides pattern 'features.1' matches no quantizable"):
        tq.prepare_qat(model, QATConfig(overrides={"features.1": {"weight": {"bits": 4}}}))
    with pytest.raises(ValueError, match="config must be a QATConfig"):
        tq.prepare_qat(model, {"weight": None})


# -- prepare_qat ---------------------------------------------------------------------------------

def test_prepare_swaps_supported_layers_and_leaves_the_original_alone(caplog):
    model = TinyDetector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="torchqat"):
        qmodel = tq.prepare_qat(model, QATConfig(skip=["heads.1"]))
    assert qmodel is not model
    assert not any(isinstance(m, QuantModuleMixin) for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    kinds = {type(m).__name__ for m in qmodel.modules() if isinstance(m, QuantModuleMixin)}
    assert kinds == {"QuantConv2d", "QuantConvTranspose2d"}
    assert type(qmodel.heads[1]) is nn.Conv2d
    n_conv = sum(type(m) is nn.Conv2d for m in model.modules())
    assert n_conv == 20
    assert "quantized 20 layers (QuantConv2d: 19, QuantConvTranspose2d: 1); left 1 in float" in \
        caplog.text
    assert "left heads.1 in float: skip pattern 'heads.1'" in caplog.text
    # Parameters are copies, not shared with the original.
    assert qmodel.stem.conv.weight is not model.stem.conv.weight
    torch.testing.assert_close(qmodel.stem.conv.weight, model.stem.conv.weight)


def test_skip_glob_of_a_container_skips_everything_inside():
    qmodel = tq.prepare_qat(TinyDetector(), QATConfig(skip=["stage2", "*.cv2.*"]))
    for name, m in qmodel.named_modules():
        if name.startswith("stage2") or ".cv2." in name:
            assert not isinstance(m, QuantModuleMixin), name
    assert isinstance(qmodel.stage1[1].cv1.conv, QuantModuleMixin)


def test_overrides_replace_merge_and_disable_in_order():
    cfg = QATConfig(overrides={
        "features.*": {"weight": {"bits": 4, "observer": "mse"}},     # merged into the default
        "features.4": {"activation": QuantSpec(bits=6, symmetric=True)},  # replaces
        "head": {"weight": None},                                      # weight stays float
        "features.7": {"weight": None, "activation": None},            # whole layer float
    })
    qmodel = tq.prepare_qat(SmallCNN(), cfg)
    w0 = qmodel.features[0].weight_quantizer.spec
    assert w0.bits == 4 and w0.per_channel and w0.learnable and w0.observer == "mse"
    assert qmodel.features[4].input_quantizer.spec == QuantSpec(bits=6, symmetric=True)
    assert qmodel.features[0].input_quantizer.spec == QATConfig().activation
    assert isinstance(qmodel.head.weight_quantizer, nn.Identity)
    assert isinstance(qmodel.head.input_quantizer, tq.FakeQuantizer)
    assert type(qmodel.features[7]) is nn.Conv2d


def test_shared_layers_stay_shared():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    qmodel = tq.prepare_qat(model)
    assert isinstance(qmodel[0], tq.QuantConv2d) and qmodel[0] is qmodel[2]


def test_subclasses_lazy_modules_and_attention_projections_are_left_with_a_reason(caplog):
    class MyConv(nn.Conv2d):
        pass

    model = nn.ModuleDict({
        "mine": MyConv(3, 3, 1),
        "lazy": nn.LazyConv2d(4, 3),
        "attn": nn.MultiheadAttention(8, 2),
        "fc": nn.Linear(8, 8),
    })
    with caplog.at_level(logging.INFO, logger="torchqat"):
        qmodel = tq.prepare_qat(model)
    assert isinstance(qmodel["fc"], tq.QuantLinear)
    assert type(qmodel["mine"]) is MyConv and type(qmodel["lazy"]) is nn.LazyConv2d
    assert not isinstance(qmodel["attn"].out_proj, QuantModuleMixin)
    assert "left mine in float: MyConv subclasses nn.Conv2d" in caplog.text
    assert "left lazy in float: uninitialised lazy module" in caplog.text
    assert "left attn.out_proj in float: NonDynamicallyQuantizableLinear" in caplog.text


def test_a_single_layer_model_is_swapped():
    assert isinstance(tq.prepare_qat(nn.Linear(3, 2)), tq.QuantLinear)


# -- calibrate -----------------------------------------------------------------------------------

def _record_layer_inputs(qmodel):
    seen = {}

    def pre_hook(name):
        def fn(module, args):
            x = args[0].detach()
            lo, hi = x.min(), x.max()
            if name in seen:
                lo, hi = torch.minimum(seen[name][0], lo), torch.maximum(seen[name][1], hi)
            seen[name] = (lo, hi)
        return fn

    handles = [m.register_forward_pre_hook(pre_hook(n)) for n, m in qmodel.named_modules()
               if isinstance(m, QuantModuleMixin)]
    return seen, handles


def test_calibrate_sets_scales_from_the_inputs_each_layer_saw():
    torch.manual_seed(0)
    act = QuantSpec(bits=8, symmetric=False, observer="minmax")
    qmodel = tq.prepare_qat(SmallCNN(), QATConfig(activation=act))
    qmodel.train()
    bn = qmodel.features[1]
    running_mean = bn.running_mean.clone()
    data = [(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))) for _ in range(5)]
    seen, handles = _record_layer_inputs(qmodel)
    out = tq.calibrate(qmodel, data, num_batches=3, progress=False)
    for h in handles:
        h.remove()
    assert out is qmodel
    assert qmodel.training and bn.training           # training flags restored
    assert torch.equal(bn.running_mean, running_mean)  # eval mode during calibration
    for name, m in qmodel.named_modules():
        if not isinstance(m, QuantModuleMixin):
            continue
        q = m.input_quantizer
        s, z = qparams_from_minmax(*seen[name], q.quant_min, q.quant_max, False)
        assert q.mode == "fake_quantize" and q.is_calibrated
        torch.testing.assert_close(q.scale.detach(), s.reshape(1))
        assert torch.equal(q.zero_point.detach().int(), z.reshape(1))
        w = m.weight.detach().reshape(m.weight.size(0), -1).abs().amax(1)
        torch.testing.assert_close(m.weight_quantizer.scale.detach(), w / 127)


def test_calibrate_batches_forms_progress_bar_and_errors(capsys):
    qmodel = tq.prepare_qat(SmallCNN())
    tq.calibrate(qmodel, [{"x": torch.randn(2, 3, 8, 8)}], forward_fn=lambda m, b: m(b["x"]))
    assert "torchqat calibrate" in capsys.readouterr().err
    tq.calibrate(qmodel, [torch.randn(2, 3, 8, 8)] * 2, progress=False)
    with pytest.raises(ValueError, match="yielded no batch"):
        tq.calibrate(qmodel, [], progress=False)
    with pytest.raises(ValueError, match="num_batches must be a positive integer"):
        tq.calibrate(qmodel, [torch.randn(2, 3, 8, 8)], num_batches=0)
    with pytest.raises(ValueError, match="no FakeQuantizer"):
        tq.calibrate(SmallCNN(), [torch.randn(2, 3, 8, 8)])


def test_calibrate_leaves_pass_through_quantizers_alone():
    qmodel = tq.prepare_qat(SmallCNN())
    qmodel.head.input_quantizer.set_mode("pass_through")
    tq.calibrate(qmodel, [torch.randn(2, 3, 8, 8)], progress=False)
    assert qmodel.head.input_quantizer.mode == "pass_through"
    assert not qmodel.head.input_quantizer.is_calibrated


def test_branch_not_taken_in_calibration_warns_and_initialises_later(caplog):
    qmodel = tq.prepare_qat(TinyDetector())
    with caplog.at_level(logging.WARNING, logger="torchqat"):
        tq.calibrate(qmodel, [torch.randn(1, 3, 32, 32)], progress=False)  # small: no 'extra'
    assert "saw no data" in caplog.text and "extra.conv.input_quantizer" in caplog.text
    assert not qmodel.extra.conv.input_quantizer.is_calibrated
    qmodel.eval()
    qmodel(torch.randn(1, 3, 64, 64))
    assert qmodel.extra.conv.input_quantizer.is_calibrated
