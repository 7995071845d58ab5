"""DistributedDataParallel with 2 processes on gloo (localhost, bounded time): calibration
statistics are reduced across ranks — every rank ends with the same scales, equal to what one
process computes from all the data — and learnable scales train like any other parameter."""

import copy
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchqat as tq
from torchqat import QATConfig, QuantSpec
from torchqat.prepare import quantizers_of
from qat_models import TinyDetector, detector_loss

WORLD = 2
TIMEOUT_S = 150
LR = 1e-5

# Min-max everywhere (exact reference), plus a moving average, a percentile (histogram) and an
# MSE weight observer on chosen layers.
CONFIG = QATConfig(
    activation=QuantSpec(bits=8, symmetric=False, learnable=True, observer="minmax"),
    overrides={
        "stage1.0": {"activation": {"observer": "moving_average", "averaging_constant": 0.5}},
        "neck.cv1": {"activation": {"observer": "percentile", "percentile": 99.9}},
        "stage2.0": {"weight": {"bits": 4, "observer": "mse"}},
    },
)


def float_model():
    torch.manual_seed(0)
    model = TinyDetector()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, 64, 64))
    return model


def calibration_batches(rank):
    # Rank 0 sees 64-pixel images (the detector's 'extra' branch runs), rank 1 32-pixel ones
    # with a wider spread: the ranks' statistics differ, and one layer only runs on rank 0.
    g = torch.Generator().manual_seed(100 + rank)
    size, spread = (64, 1.0) if rank == 0 else (32, 3.0)
    return [torch.randn(2, 3, size, size, generator=g) * spread for _ in range(3)]


def training_batches(rank):
    g = torch.Generator().manual_seed(200 + rank)
    return [torch.randn(2, 3, 64, 64, generator=g) for _ in range(3)]


def qparams(model):
    return {n: (q.scale.detach().clone(), q.zero_point.detach().clone())
            for n, q in quantizers_of(model)}


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        qmodel = tq.prepare_qat(float_model(), CONFIG)
        tq.calibrate(qmodel, calibration_batches(rank), progress=False)
        calibrated = qparams(qmodel)
        state = copy.deepcopy(qmodel.state_dict())

        qmodel.train()
        ddp = torch.nn.parallel.DistributedDataParallel(qmodel)
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        for x in training_batches(rank):
            loss = detector_loss(ddp(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.save({"calibrated": calibrated, "state": state, "trained": qparams(qmodel),
                    "params": {n: p.detach().clone() for n, p in qmodel.named_parameters()}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    ctx = mp.start_processes(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


def test_every_rank_ends_calibration_with_the_same_scales(ddp_results):
    r0, r1 = (r["calibrated"] for r in ddp_results)
    assert r0.keys() == r1.keys() and len(r0) == 2 * 21
    for name in r0:
        assert torch.equal(r0[name][0], r1[name][0]), name
        assert torch.equal(r0[name][1], r1[name][1]), name


def test_reduced_statistics_equal_one_process_over_all_data(ddp_results):
    got = ddp_results[0]["calibrated"]
    everything = calibration_batches(0) + calibration_batches(1)
    single = tq.calibrate(tq.prepare_qat(float_model(), CONFIG), everything, progress=False)
    ref = qparams(single)
    # Moving averages are averaged over ranks: the mean of each rank's own average.
    per_rank = [qparams(tq.calibrate(tq.prepare_qat(float_model(), CONFIG),
                                     calibration_batches(r), progress=False))
                for r in range(WORLD)]
    for name, (scale, zp) in got.items():
        if name.startswith("stage1.0.") and "input" in name:
            # Both ranks' averaged minima are < 0 < maxima, so the range (the scale times the
            # number of steps) of the rank average is the average of the ranks' ranges.
            q = dict(quantizers_of(single))[name]
            steps = q.quant_max - q.quant_min
            torch.testing.assert_close(scale * steps, sum(p[name][0] for p in per_rank) * steps
                                       / WORLD, rtol=1e-5, atol=0)
        elif name.startswith("neck.cv1.") and "input" in name:
            # Histograms: each rank binned over its own range, so within a few bins.
            torch.testing.assert_close(scale, ref[name][0], rtol=0.02, atol=0)
        else:
            torch.testing.assert_close(scale, ref[name][0], rtol=1e-6, atol=0, msg=name)
            assert torch.equal(zp, ref[name][1]), name
    # The branch that ran only on rank 0 got scales on rank 1 too.
    assert "extra.conv.input_quantizer" in got
    assert torch.equal(got["extra.conv.input_quantizer"][0],
                       ddp_results[1]["calibrated"]["extra.conv.input_quantizer"][0])


def test_learnable_scales_train_like_any_parameter_under_ddp(ddp_results):
    p0, p1 = (r["params"] for r in ddp_results)
    for name in p0:
        assert torch.equal(p0[name], p1[name]), name   # DDP keeps ranks in step
    calibrated = ddp_results[0]["calibrated"]
    trained = ddp_results[0]["trained"]
    moved = [n for n in calibrated if not torch.equal(calibrated[n][0], trained[n][0])]
    assert len(moved) == len(calibrated)

    # The same steps in one process, averaging the two ranks' gradients by hand, with the
    # workers' one thread: reductions split over threads round differently, and three steps of
    # LSQ training (a rounding flip moves a scale's gradient by a whole quantization step) can
    # amplify that beyond any tolerance worth asserting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tq.prepare_qat(float_model(), CONFIG)
        model.load_state_dict(ddp_results[0]["state"])
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        for x0, x1 in zip(training_batches(0), training_batches(1)):
            grads = []
            for x in (x0, x1):
                opt.zero_grad()
                detector_loss(model(x)).backward()
                grads.append([p.grad.clone() if p.grad is not None else None
                              for p in model.parameters()])
            for p, g0, g1 in zip(model.parameters(), *grads):
                p.grad = None if g0 is None else (g0 + g1) / 2
            opt.step()
    finally:
        torch.set_num_threads(threads)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), p0[name], rtol=1e-4, atol=1e-7, msg=name)
