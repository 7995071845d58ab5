"""Smoke test of the QAT-step benchmark: it runs end to end, with its breakdown, and prints its
summary (benchmarks are not timed in tests; this only keeps the script from rotting). And its
"copy floor" model computes what the float model computes, so that it times passes only."""

import os
import re
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script_env():
    """The environment a benchmark script runs in: this checkout's torchqat first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(ROOT, "python")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env

def test_bench_qat_step_runs_and_prints_its_summary():
    env = _script_env()
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_qat_step.py"), "--threads", "1",
         "--reps", "1", "--breakdown"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout
    assert re.search(r"^  float +\d+\.\d +1\.00$", out, re.M), out
    assert re.search(r"^  torchqat +\d+\.\d +\d\.\d\d$", out, re.M), out
    assert re.search(r"^  1 thread: .*TinyDetector \d\.\d\d$", out, re.M), out
    # --breakdown: the pass_through groups and the copy floor, each with its ratio to float.
    for row in ("copy floor \\(model input scale fixed\\)", "weights off", "inputs off",
                "stem.conv input scale fixed"):
        assert re.search(rf"^  {row} +\d+\.\d +\d\.\d{{3}}", out, re.M), (row, out)
    # The benchmark's model has trained BatchNorm statistics: calibrate does not warn.
    assert "initial running statistics" not in run.stderr


def test_copy_floor_model_computes_the_float_model():
    # The floor replaces every quantizer by passes that move the same bytes and leave values and
    # gradients unchanged: its loss and parameter gradients are the float model's.
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_qat_step as bench
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    from qat_models import TinyDetector, detector_loss

    torch.manual_seed(0)
    batch = torch.randn(2, 3, 64, 64)
    model = bench.with_trained_bn(TinyDetector(num_classes=3), batch)
    qmodel = bench.torchqat_model(model, batch)
    floor = bench.copy_floor_model(qmodel, "stem.conv.input_quantizer")
    reference = bench.copy.deepcopy(model)
    losses = {}
    for name, m in (("float", reference), ("floor", floor)):
        m.train()
        loss = detector_loss(m(batch))
        loss.backward()
        losses[name] = loss.detach()
    assert torch.equal(losses["float"], losses["floor"])
    grads = {n: p.grad for n, p in floor.named_parameters() if p.grad is not None}
    for n, p in reference.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    # Every layer-input scale but the model input's received its (zero) gradient.
    scales = [n for n in grads if n.endswith("input_quantizer.scale")]
    assert len(scales) == sum(n.endswith("input_quantizer.scale")
                              for n, _ in floor.named_parameters()) - 1


def test_bench_fake_quant_dram_runs_and_checks_its_arguments():
    env = _script_env()
    script = os.path.join(ROOT, "benchmarks", "bench_fake_quant_dram.py")
    run = subprocess.run([sys.executable, script, "--shape", "2,3,8,8", "--count", "2", "--reps",
                          "1"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for row in ("torchqat forward", "aten relu", "aten clone", "torchqat LSQ backward_",
                "torchqat LSQ\\+SiLU backward_", "aten addcmul_"):
        assert re.search(rf"^{row} +\d+\.\d{{3}}$", run.stdout, re.M), (row, run.stdout)
    bad = subprocess.run([sys.executable, script, "--shape", "2,x"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode != 0 and "--shape must be positive integers" in bad.stderr
