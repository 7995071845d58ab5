"""The main job: quantization-aware training of a detector, end to end.

On the digits detection task (``torchqat.data``: scikit-learn's digits on 64×64 canvases with
clutter) with the TinyYOLO detector of ``examples/detector``:

  1. data          generate (or load the cached) train / val splits
  2. float         train the float detector, or reuse the checkpoint a previous run cached
  3. PTQ           post-training quantization: prepare_qat + calibrate (the baseline)
  4. QAT           fine-tune the calibrated model with learnable scales (LSQ)
  5. INT8          convert PTQ and QAT to real INT8 kernels          (needs tq.convert)
  6. evaluate      COCO mAP50-95 / mAP50 (pycocotools) of every model
  7. latency       CPU latency, float vs fake-quant vs INT8
  8. TorchScript   export, reload, same detections                  (needs tq.export_torchscript)
  9. ONNX          QDQ export, ONNX Runtime agrees                   (needs tq.export_onnx)
 10. report        per-layer table and pictures; sensitivity (full mode); summary and targets

Targets (issue 6): QAT mAP50-95 within 0.5 points (0.005) of float; QAT above PTQ; QAT INT8
within 0.1 points of QAT fake-quant; INT8 latency >= 2x float.

    python examples/detector_qat.py              # full job, ~10 minutes on 2 cores
    python examples/detector_qat.py --quick      # small data, few steps: CI, under 2 minutes
    python examples/detector_qat.py --check      # assert the invariants (and, in full mode,
                                                 # exit 1 if a target is missed)
    python examples/detector_qat.py --torchvision   # the same flow on a torchvision detector
    python examples/detector_qat.py --activation-bits 8   # 8-bit layer inputs (the default
                                                          # is 7: see qat_config)

Pictures go to ``--out`` (default ``out/detector``); the float checkpoint and the data set are
cached in ``$TORCHQAT_CACHE`` (default ``~/.cache/torchqat``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torchqat as tq  # noqa: E402
from torchqat.data import (DigitsDetection, NUM_CLASSES, default_cache_dir,  # noqa: E402
                           detection_collate)
from detector import DetectionLoss, TinyYOLO, coco_map, nms, predict  # noqa: E402
from torchqat.observers import MIN_SCALE  # noqa: E402


@dataclass
class Settings:
    train_images: int
    val_images: int
    float_epochs: int
    qat_epochs: int
    calib_batches: int
    batch_size: int = 32
    width: int = 16
    float_lr: float = 4e-3
    qat_lr: float = 1e-4
    seed: int = 0


FULL = Settings(train_images=4000, val_images=500, float_epochs=5, qat_epochs=2,
                calib_batches=16)
QUICK = Settings(train_images=384, val_images=96, float_epochs=2, qat_epochs=1,
                 calib_batches=2)

def qat_config(activation_bits: int = 7) -> tq.QATConfig:
    """int8 per-channel learnable weights and learnable 7-bit layer inputs ([0, 127]) by default.

    Why 7 bits: on x86 CPUs without AVX-512 VNNI (the AVX2 machines this job is run on), an input
    range of [0, 127] lets tq.convert run the avx2_u7 kernel, whose pairs of products cannot
    saturate int16; the full-range uint8 kernel must widen to int16 first and is 1.1-1.4x slower
    (docs/benchmarks.md). PyTorch's own x86 quantization backend makes the same trade
    (``reduce_range``: 7-bit activations). The job's accuracy targets hold at 7 bits; pass
    --activation-bits 8 on a VNNI CPU, where both ranges run equally fast. The head's final 1x1
    convolutions see the features every detection depends on: they are given a minmax observer,
    so calibration never clips their input."""
    return tq.QATConfig(
        activation=tq.QuantSpec(bits=activation_bits, symmetric=False, learnable=True),
        overrides={"heads.*_out": {"activation": {"observer": "minmax"}}},
    )


def log(msg: str) -> None:
    print(msg, flush=True)


def loader(ds, batch_size: int, shuffle: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                                       collate_fn=detection_collate)


def train(model: nn.Module, ds, epochs: int, optimizer, s: Settings, desc: str,
          freeze_bn: bool = False, seed: int = 0) -> float:
    """Trains with a one-cycle (float) or cosine (QAT) schedule; returns seconds."""
    from tqdm.auto import tqdm

    loss_fn = DetectionLoss(model.strides, NUM_CLASSES)
    dl = loader(ds, s.batch_size, True, seed)
    steps = epochs * len(dl)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps,
        pct_start=0.1 if not freeze_bn else 0.01)
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, unit="step", leave=False, mininterval=1.0)
    for _ in range(epochs):
        model.train()
        if freeze_bn:
            # QAT fine-tuning keeps the BatchNorm statistics of the float model: with batches
            # of 32 small images they would otherwise drift under the quantization noise.
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        for images, targets in dl:
            loss, parts = loss_fn(model(images), targets, tuple(images.shape[-2:]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", box=f"{parts['box'].item():.3f}",
                            refresh=False)
            bar.update(1)
    bar.close()
    return time.perf_counter() - start


def evaluate(model: nn.Module, ds, s: Settings) -> Dict[str, float]:
    dets = predict(model, loader(ds, 64, False), TinyYOLO.strides)
    return coco_map(dets, [ds[i][1] for i in range(len(ds))], NUM_CLASSES)


# -- steps ---------------------------------------------------------------------------------------

def step_data(s: Settings):
    t = time.perf_counter()
    train_ds = DigitsDetection("train", num_images=s.train_images, seed=s.seed)
    val_ds = DigitsDetection("val", num_images=s.val_images, seed=s.seed)
    log(f"[1 data] {train_ds}\n         {val_ds}  ({time.perf_counter() - t:.1f} s)")
    return train_ds, val_ds


def step_float(s: Settings, train_ds, retrain: bool) -> nn.Module:
    key = hashlib.sha1(json.dumps({"model": "TinyYOLO-v1", **asdict(s),
                                   "data": train_ds.spec.key()}, sort_keys=True,
                                  default=str).encode()).hexdigest()[:12]
    path = os.path.join(default_cache_dir(), f"detector_float_{key}.pt")
    torch.manual_seed(s.seed)
    model = TinyYOLO(NUM_CLASSES, 1, s.width)
    if os.path.exists(path) and not retrain:
        model.load_state_dict(torch.load(path, map_location="cpu"))
        log(f"[2 float] reused the checkpoint {path}")
        return model.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=s.float_lr, weight_decay=5e-4)
    secs = train(model, train_ds, s.float_epochs, opt, s, "float training", seed=s.seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(model.state_dict(), path)
    log(f"[2 float] trained {s.float_epochs} epochs in {secs:.0f} s; cached {path}")
    return model.eval()


def step_ptq(float_model: nn.Module, train_ds, s: Settings,
             activation_bits: int = 7) -> nn.Module:
    t = time.perf_counter()
    qmodel = tq.prepare_qat(float_model, qat_config(activation_bits))
    tq.calibrate(qmodel, loader(train_ds, s.batch_size, True, s.seed + 1),
                 num_batches=s.calib_batches)
    n = sum(isinstance(m, tq.FakeQuantizer) for m in qmodel.modules())
    log(f"[3 PTQ] prepare_qat + calibrate on {s.calib_batches} batches: {n} quantizers "
        f"({time.perf_counter() - t:.1f} s)")
    return qmodel.eval()


def qat_optimizer(model: nn.Module, lr: float):
    """AdamW moves every parameter by about ``lr`` per step whatever its size; quantizer scales
    are ~100 times smaller than weights, so they get ~100 times smaller a rate and no decay."""
    quant = [p for n, p in model.named_parameters() if "quantizer." in n]
    other = [p for n, p in model.named_parameters() if "quantizer." not in n]
    return torch.optim.AdamW([{"params": other, "lr": lr, "weight_decay": 5e-4},
                              {"params": quant, "lr": lr / 100, "weight_decay": 0.0}])


def step_qat(ptq_model: nn.Module, train_ds, s: Settings) -> nn.Module:
    qmodel = copy.deepcopy(ptq_model)
    secs = train(qmodel, train_ds, s.qat_epochs, qat_optimizer(qmodel, s.qat_lr), s,
                 "QAT fine-tuning", freeze_bn=True, seed=s.seed + 2)
    log(f"[4 QAT] fine-tuned {s.qat_epochs} epochs in {secs:.0f} s")
    return qmodel.eval()


def step_convert(qmodel: nn.Module, label: str) -> Optional[nn.Module]:
    if not hasattr(tq, "convert"):
        log(f"[5 INT8] {label}: tq.convert not available yet; skipped")
        return None
    t = time.perf_counter()
    imodel = tq.convert(qmodel)
    log(f"[5 INT8] converted {label} ({time.perf_counter() - t:.1f} s)")
    return imodel.eval()


def step_evaluate(models: Dict[str, Optional[nn.Module]], val_ds, s: Settings):
    maps = {}
    for name, model in models.items():
        if model is None:
            continue
        t = time.perf_counter()
        maps[name] = evaluate(model, val_ds, s)
        log(f"[6 evaluate] {name:14s} mAP50-95 {100 * maps[name]['mAP50-95']:6.2f}  "
            f"mAP50 {100 * maps[name]['mAP50']:6.2f}  ({time.perf_counter() - t:.1f} s)")
    return maps


@torch.no_grad()
def latency_ms(models: Dict[str, nn.Module], x: torch.Tensor, runs: int = 20) -> Dict[str, float]:
    """Median of ``runs`` forwards of each model, interleaved (A B C A B C ...) after a warm-up:
    every model meets the same machine state (caches, other load), so their ratios compare like
    for like (docs/benchmarks.md)."""
    for model in models.values():
        model.eval()
    for _ in range(3):
        for model in models.values():
            model(x)
    samples: Dict[str, List[float]] = {name: [] for name in models}
    for _ in range(runs):
        for name, model in models.items():
            t = time.perf_counter()
            model(x)
            samples[name].append(time.perf_counter() - t)
    return {name: 1000 * sorted(v)[len(v) // 2] for name, v in samples.items()}


def step_latency(models: Dict[str, Optional[nn.Module]], val_ds, runs: int):
    x = torch.stack([val_ds[i][0] for i in range(8)])
    out = latency_ms({name: m for name, m in models.items() if m is not None}, x, runs)
    line = ", ".join(f"{k} {v:.1f} ms" for k, v in out.items())
    log(f"[7 latency] batch of 8, {torch.get_num_threads()} thread(s), medians of {runs} "
        f"interleaved runs: {line}")
    if "QAT INT8" not in out:
        log("[7 latency] INT8: tq.convert not available yet; skipped")
    return out


def step_torchscript(imodel: Optional[nn.Module], val_ds, out_dir: str):
    """Exports the INT8 model to TorchScript, reloads it and runs it in Python and (when built)
    in the libtorch example program: ``(reload max |diff|, C++ max |diff| or None)``, both
    against the INT8 model in Python (the same kernels: both must be 0), or None if skipped."""
    if imodel is None or not hasattr(tq, "export_torchscript"):
        log("[8 TorchScript] tq.export_torchscript / tq.convert not available yet; skipped")
        return None
    x = torch.stack([val_ds[i][0] for i in range(4)])
    path = os.path.join(out_dir, "detector_int8.pt")
    tq.export_torchscript(imodel, path, x)
    loaded = torch.jit.load(path)
    with torch.no_grad():
        diff = (loaded(x) - imodel(x)).abs().max().item()
    log(f"[8 TorchScript] {path}; reloaded output max |diff| {diff:.3g}")
    return diff, run_cpp_program(path, x, imodel, out_dir)


def cpp_program() -> str:
    """Where `make cpp-example` (part of `make test`) builds the libtorchqat example program:
    examples/cpp/check.py owns that path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "torchqat_cpp_check", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpp",
                                           "check.py"))
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    return str(check.program_path())


def run_cpp_program(model_path: str, x: torch.Tensor, imodel: nn.Module, out_dir: str):
    """Runs the saved INT8 TorchScript model through examples/cpp's libtorch program and
    compares its detections' raw outputs with Python's (they must be equal: same kernels)."""
    import subprocess

    binary = os.path.abspath(cpp_program())
    if not os.path.exists(binary):
        log("[8 C++] examples/cpp program not built (run `make cpp-example` or `make test`); "
            "skipped")
        return None
    inp, outp = os.path.join(out_dir, "cpp_input.pt"), os.path.join(out_dir, "cpp_output.pt")
    torch.save(x, inp)
    result = subprocess.run([binary, model_path, inp, outp, "--threads", "1"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"examples/cpp program failed: {result.stderr.strip()}")
    got = torch.load(outp, weights_only=True)
    with torch.no_grad():
        want = imodel(x)
    diff = (got - want).abs().max().item()
    log(f"[8 C++] {binary}: output max |diff| vs Python {diff:.3g} "
        f"({'same' if torch.equal(got, want) else 'DIFFERENT'} detections)")
    return diff


def head_output_steps(qmodel: nn.Module, height: int, width: int) -> torch.Tensor:
    """One quantization step of every raw output of the QAT TinyYOLO, ``[N points, 5 + C]``:
    each level's output channels come from its head's ``box_out`` and ``cls_out`` layers, whose
    step per channel is ``torchqat.export.output_step`` (``docs/export_onnx.md``)."""
    from torchqat.export import output_step

    taus = []
    for head, stride in zip(qmodel.heads, qmodel.strides):
        tau = torch.cat([output_step(head.box_out), output_step(head.cls_out)])
        taus.append(tau.expand((height // stride) * (width // stride), -1))
    return torch.cat(taus)


def step_onnx(qmodel: nn.Module, imodel: Optional[nn.Module], val_ds, out_dir: str):
    """QDQ export, run in ONNX Runtime: ``(max |diff| vs the INT8 model, the largest ratio of
    the difference to its bound)``, or None if skipped. The bound: ORT may round an input code
    of a head's last layer one step away from torchqat, so an output may move by one output
    step ``tau`` (``head_output_steps``); the INT8 model is within float rounding of the QAT
    model (``docs/convert.md``), covered by ``1e-5 * max |y|``."""
    if imodel is None or not hasattr(tq, "export_onnx"):
        log("[9 ONNX] tq.export_onnx / tq.convert not available yet; skipped")
        return None
    ranges = {(q.quant_min, q.quant_max) for q in qmodel.modules()
              if isinstance(q, tq.FakeQuantizer) and q.role == "activation"}
    unexportable = sorted(r for r in ranges if not tq.export.onnx_exports_activation_range(*r, 18))
    if unexportable:
        log(f"[9 ONNX] skipped: activation ranges {unexportable} fit no ONNX integer type")
        return None

    x = torch.stack([val_ds[i][0] for i in range(4)])
    path = os.path.join(out_dir, "detector_qdq.onnx")
    tq.export_onnx(qmodel, x, path)
    # ONNX Runtime's exact u8s8 kernels: its default ones saturate on CPUs without VNNI.
    sess = tq.export.onnxruntime_session(path, threads=1)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        want = imodel(x)
    diff = float((got - want).abs().max())
    ratio = step_ratio(got, want, head_output_steps(qmodel, x.shape[-2], x.shape[-1]))
    log(f"[9 ONNX] {path}; ONNX Runtime vs INT8 model max |diff| {diff:.3g} "
        f"({ratio:.3f} of the one-output-step bound)")
    return diff, ratio


def draw_detections(model: nn.Module, val_ds, path: str, title: str, n: int = 8) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = torch.stack([val_ds[i][0] for i in range(n)])
    dets = predict(model, [(images, None)], TinyYOLO.strides)
    cols = 4
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.1 * rows))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i, 0], cmap="gray", vmin=0, vmax=1)
        for box in val_ds[i][1]["boxes"].tolist():
            ax.add_patch(plt.Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0],
                                       box[3] - box[1], fill=False, color="lime", lw=1, ls=":"))
        d = dets[i]
        # For the picture only: the best class per object (class-agnostic NMS), so that the
        # runner-up classes mAP counts do not stack their labels on each other.
        keep = nms(d["boxes"], d["scores"], 0.5)
        keep = keep[d["scores"][keep] >= 0.3]
        for box, score, label in zip(d["boxes"][keep].tolist(), d["scores"][keep].tolist(),
                                     d["labels"][keep].tolist()):
            ax.add_patch(plt.Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0],
                                       box[3] - box[1], fill=False, color="red", lw=1.2))
            ax.text(box[0], box[1] - 1, f"{label} {score:.2f}", color="yellow", fontsize=8)
    fig.suptitle(f"{title}: detections (red: class, score >= 0.3) and ground truth (green dotted)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary_table(maps, latency, times, targets):
    from rich.console import Console
    from rich.table import Table

    table = Table(title="torchqat detector job (TinyYOLO on digits detection)")
    for c in ("model", "mAP50-95", "mAP50", "latency, batch 8 (ms)"):
        table.add_column(c, justify="left" if c == "model" else "right")
    for name, m in maps.items():
        lat = latency.get(name)
        table.add_row(name, f"{100 * m['mAP50-95']:.2f}", f"{100 * m['mAP50']:.2f}",
                      f"{lat:.1f}" if lat is not None else "-")
    console = Console(width=110)
    console.print(table)
    console.print("  ".join(f"{k}: {v:.0f} s" for k, v in times.items()))
    for text, ok in targets:
        mark = "[green]ok[/green]" if ok else ("[yellow]n/a[/yellow]" if ok is None
                                               else "[red]MISSED[/red]")
        console.print(f"  [{mark}] {text}")


def step_ratio(got: torch.Tensor, want: torch.Tensor, tau: torch.Tensor) -> float:
    """The largest ``|got - want| / (tau + 1e-5 max |want|)``: at most 1 where ``got`` is within
    one output step ``tau`` (broadcast against the outputs) of ``want``, up to float
    rounding."""
    err = (got.double() - want.double()).abs()
    return float((err / (tau.double() + 1e-5 * want.double().abs().max())).max())


def compute_targets(maps) -> List:
    f, p, q = (maps[k]["mAP50-95"] for k in ("float", "PTQ fake-quant", "QAT fake-quant"))
    targets = [
        (f"QAT mAP50-95 within 0.5 points of float ({100 * q:.2f} vs {100 * f:.2f})",
         q >= f - 0.005),
        (f"QAT above PTQ ({100 * q:.2f} vs {100 * p:.2f})", q > p),
    ]
    if "QAT INT8" in maps:
        qi = maps["QAT INT8"]["mAP50-95"]
        targets.append((f"QAT INT8 within 0.1 points of QAT fake-quant ({100 * qi:.2f})",
                        abs(qi - q) <= 0.001))
    else:
        targets.append(("QAT INT8 within 0.1 points of QAT fake-quant (tq.convert not "
                        "available yet)", None))
    return targets


def run_tinyyolo(args) -> int:
    s = QUICK if args.quick else FULL
    torch.manual_seed(s.seed)
    os.makedirs(args.out, exist_ok=True)
    times = {}
    t0 = time.perf_counter()
    train_ds, val_ds = step_data(s)
    t = time.perf_counter()
    float_model = step_float(s, train_ds, args.retrain)
    times["float"] = time.perf_counter() - t
    ptq = step_ptq(float_model, train_ds, s, args.activation_bits)
    t = time.perf_counter()
    qat = step_qat(ptq, train_ds, s)
    times["QAT"] = time.perf_counter() - t
    ptq_int8 = step_convert(ptq, "PTQ")
    qat_int8 = step_convert(qat, "QAT")
    t = time.perf_counter()
    maps = step_evaluate({"float": float_model, "PTQ fake-quant": ptq, "PTQ INT8": ptq_int8,
                          "QAT fake-quant": qat, "QAT INT8": qat_int8}, val_ds, s)
    times["evaluation"] = time.perf_counter() - t
    latency = step_latency({"float": float_model, "QAT fake-quant": qat, "QAT INT8": qat_int8},
                           val_ds, 5 if args.quick else 20)
    ts_diff = step_torchscript(qat_int8, val_ds, args.out)
    onnx_diff = step_onnx(qat, qat_int8, val_ds, args.out)

    # 10: report, pictures, sensitivity.
    t = time.perf_counter()
    calib = [b[0] for _, b in zip(range(4), loader(val_ds, 32, False))]
    rep = tq.report(qat, calib, float_model=float_model)
    worst = ", ".join(f"{r.name} {r.sqnr_layer:.1f} dB" for r in rep.worst(3))
    log(f"[10 report] {len(rep)} layers; model output SQNR vs float {rep.output_sqnr:.1f} dB; "
        f"lowest layer SQNR: {worst}")
    if args.verbose:
        log(str(rep))
    pictures = tq.plot_report(rep, out_dir=args.out, prefix="qat_")
    pictures.append(draw_detections(float_model, val_ds,
                                    os.path.join(args.out, "detections_float.png"), "float"))
    pictures.append(draw_detections(qat, val_ds, os.path.join(args.out, "detections_qat.png"),
                                    "QAT fake-quant"))
    if qat_int8 is not None:
        pictures.append(draw_detections(qat_int8, val_ds,
                                        os.path.join(args.out, "detections_qat_int8.png"),
                                        "QAT INT8"))
    log(f"[10 report] pictures: {', '.join(os.path.basename(p) for p in pictures)} in {args.out}")
    if not args.quick and not args.no_sensitivity:
        sens = tq.sensitivity(qat, calib[:2])
        log("[10 sensitivity] layers whose quantization alone costs the most output SQNR:")
        for name, value, _ in sens.rows[:5]:
            log(f"    {name:28s} {value:6.1f} dB")
    times["report"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0

    targets = compute_targets(maps)
    if "QAT INT8" in latency:
        ratio = latency["float"] / latency["QAT INT8"]
        targets.append((f"INT8 latency >= 2x float ({ratio:.2f}x)", ratio >= 2.0))
    summary_table(maps, latency, times, targets)

    if args.check:
        problems = []
        for name, m in maps.items():
            for k, v in m.items():
                if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                    problems.append(f"{name} {k} = {v}")
        # PTQ differs from float by quantization alone (QAT also by its training): int8 must
        # keep the output well above 20 dB.
        ptq_sqnr = tq.report(ptq, calib, float_model=float_model, samples=False).output_sqnr
        log(f"check: PTQ model output SQNR vs float {ptq_sqnr:.1f} dB")
        if not math.isfinite(rep.output_sqnr) or not ptq_sqnr > 20:
            problems.append(f"output SQNR vs float: PTQ {ptq_sqnr:.1f} dB (<= 20 dB), QAT "
                            f"{rep.output_sqnr:.1f} dB")
        if len(rep) != sum(isinstance(m, nn.Conv2d) for m in float_model.modules()):
            problems.append("report rows do not match the model's convolutions")
        for p in pictures:
            if not os.path.getsize(p) > 1000:
                problems.append(f"picture {p} is empty")
        # INT8 against fake-quant (docs/convert.md): layer by layer within float rounding; end
        # to end an activation within that rounding of a step boundary may round to the next
        # step in one model only. As for ONNX Runtime, the outputs must stay within one output
        # step of the heads' last layers (in this deep network a flip reaches many outputs, so
        # "few outputs differ" does not hold); and mAP50-95 within 0.1 points.
        for label, fq_model, int8_model in (("PTQ", ptq, ptq_int8), ("QAT", qat, qat_int8)):
            if int8_model is None:
                continue
            with torch.no_grad():
                want, got = fq_model(calib[0]), int8_model(calib[0])
            tau = head_output_steps(fq_model, *calib[0].shape[-2:])
            ratio = step_ratio(got, want, tau)
            log(f"check: {label} INT8 vs fake-quant raw outputs: max |diff| "
                f"{(got - want).abs().max().item():.3g}, {ratio:.3f} of one output step")
            if ratio > 1.0:
                problems.append(f"{label} INT8 differs from fake-quant by more than one output "
                                f"step ({ratio:.3f} of it)")
            d = abs(maps[f"{label} INT8"]["mAP50-95"] - maps[f"{label} fake-quant"]["mAP50-95"])
            if d > 0.001:
                problems.append(f"{label} INT8 and fake-quant mAP50-95 differ by "
                                f"{100 * d:.3f} points (> 0.1)")
        if ts_diff is not None:
            reload_diff, cpp_diff = ts_diff
            if reload_diff != 0:
                problems.append(f"TorchScript reload differs by {reload_diff}")
            if cpp_diff is not None and cpp_diff != 0:
                problems.append(f"the C++ program's output differs by {cpp_diff}")
        if onnx_diff is not None and not onnx_diff[1] <= 1.0:
            problems.append(f"ONNX Runtime differs from the INT8 model by {onnx_diff[0]:.3g}, "
                            f"{onnx_diff[1]:.3f} of the one-output-step bound")
        if not args.quick:
            problems += [f"target missed: {text}" for text, ok in targets if ok is False]
        if problems:
            for p in problems:
                log(f"CHECK FAILED: {p}")
            return 1
        log("check: all invariants hold" + ("" if args.quick else " and all targets met"))
    return 0


def torchvision_flow() -> Dict[str, object]:
    """The same flow (prepare_qat, calibrate, QAT steps, evaluate, convert, TorchScript) on
    torchvision's SSDlite320-MobileNetV3 with random weights, in quick mode (64 training
    images, 8 QAT steps, 32 validation images): nothing in torchqat is
    special-cased for TinyYOLO. Returns what ``run_torchvision`` logs and checks (also used by
    tests/test_detector_torchvision.py). Needs torchvision."""
    import torchvision
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    s = QUICK
    train_ds = DigitsDetection("train", num_images=64, channels=3, seed=s.seed)
    val_ds = DigitsDetection("val", num_images=32, channels=3, seed=s.seed)
    torch.manual_seed(0)
    # Labels 1..10 (0 is the background class of torchvision's detectors).
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                          num_classes=NUM_CLASSES + 1)
    # Its transform resizes every image to 320x320; 160 is plenty for 64x64 canvases and the
    # anchors are relative to the image size.
    model.transform.fixed_size = (160, 160)

    def shift(targets):
        return [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]

    def forward(m, batch):
        m.eval()
        return m(list(batch[0]))

    # Random init leaves BatchNorm's running statistics at (0, 1), and in eval mode the
    # activations then shrink layer after layer to ~1e-12 (below any useful scale): estimate the
    # statistics on a few training batches first (cumulative average), as a trained model has.
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for _, (images, targets) in zip(range(4), loader(train_ds, 8, True, seed=1)):
            model(list(images), shift(targets))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()

    qmodel = tq.prepare_qat(model, tq.QATConfig())
    quantizers = {n: q for n, q in qmodel.named_modules() if isinstance(q, tq.FakeQuantizer)}
    tq.calibrate(qmodel, loader(train_ds, 8, True), num_batches=2, forward_fn=forward,
                 progress=False)
    scales_before = {n: q.scale.detach().clone() for n, q in quantizers.items()}
    opt = qat_optimizer(qmodel, 1e-4)
    qmodel.train()
    losses, with_grad = [], set()
    for images, targets in loader(train_ds, 8, True):
        loss = sum(qmodel(list(images), shift(targets)).values())
        opt.zero_grad()
        loss.backward()
        with_grad |= {n for n, q in quantizers.items()
                      if q.scale.grad is not None and bool(q.scale.grad.ne(0).any())}
        opt.step()
        losses.append(loss.item())
    qmodel.eval()
    moved = {n for n, q in quantizers.items() if not torch.equal(scales_before[n], q.scale.detach())}

    dets, gts = [], []
    with torch.no_grad():
        for images, targets in loader(val_ds, 8, False):
            for d in qmodel(list(images)):
                dets.append({"boxes": d["boxes"], "scores": d["scores"],
                             "labels": d["labels"] - 1})
            gts.extend(targets)
    result: Dict[str, object] = {
        "version": torchvision.__version__, "quantizers": len(quantizers),
        "quantizer_names": sorted(quantizers),
        "scales_moved": sorted(moved), "scales_with_grad": sorted(with_grad),
        # Input quantizers that only saw zeros in calibration (random init): scale at the floor.
        "scales_at_floor": sum(bool((scales_before[n] <= MIN_SCALE).all()) for n in quantizers),
        "losses": losses, "map": coco_map(dets, gts, NUM_CLASSES)}

    if hasattr(tq, "convert"):
        imodel = tq.convert(qmodel).eval()
        images = [val_ds[i][0] for i in range(4)]
        result["int8_layers"] = sum(type(m).__name__.startswith("Int8")
                                    for m in imodel.modules())
        result.update(qat_model=qmodel, int8_model=imodel, images=images)
        # The raw outputs (the head's box regressions and class logits, before the decoding
        # and NMS that may drop or reorder boxes) of the fake-quant and INT8 models.
        raw = [torch.cat([v.flatten(1) for v in ssd_raw_outputs(m, images).values()], 1)
               for m in (qmodel, imodel)]
        result["int8_step_ratio"] = step_ratio(raw[1], raw[0], ssd_output_step(qmodel))
        err = (raw[1].double() - raw[0].double()).abs()
        scale = raw[0].double().abs().max()
        # (fraction of raw outputs beyond 1e-5 of their range, max |diff| / range)
        result["int8_far"] = (float((err > 1e-5 * scale).double().mean()), float(err.max() / scale))
        with torch.no_grad():
            want = imodel(images)
            scripted = torch.jit.script(imodel)
            got = scripted(images)
        # TorchScript's detection models return (losses, detections).
        got = got[1] if isinstance(got, tuple) else got
        result["torchscript_equal"] = all(torch.equal(a[k], b[k]) for a, b in zip(got, want)
                                          for k in ("boxes", "scores", "labels"))
    return result


def ssd_output_step(qmodel: nn.Module) -> torch.Tensor:
    """One output step (``torchqat.export.output_step``) of the last layers of a torchvision
    SSD's classification and regression heads, the largest of all (one bound for every raw
    output)."""
    from torchqat.export import output_step

    finals = [block[-1] for head in (qmodel.head.classification_head,
                                     qmodel.head.regression_head) for block in head.module_list]
    return max(output_step(layer).max() for layer in finals)


@torch.no_grad()
def ssd_raw_outputs(model: nn.Module, images: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A torchvision SSD's head outputs (``bbox_regression`` and ``cls_logits``) for
    ``images``, through its own transform and backbone."""
    batch, _ = model.transform(images)
    features = list(model.backbone(batch.tensors).values())
    return model.head(features)


def run_torchvision(args) -> int:
    """``torchvision_flow`` with its log line and, with ``--check``, its invariants."""
    try:
        import torchvision  # noqa: F401
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large  # noqa: F401
    except Exception as e:  # noqa: BLE001  (torchvision fails to import in several ways)
        log(f"[torchvision] torchvision does not import here ({type(e).__name__}: {e}); "
            "skipped")
        return 0
    r = torchvision_flow()
    losses, m = r["losses"], r["map"]
    log(f"[torchvision {r['version']}] SSDlite320-MobileNetV3 (random init): "
        f"{r['quantizers']} quantizers ({r['scales_at_floor']} calibrated on zeros), "
        f"{len(r['scales_with_grad'])} got a scale gradient, {len(r['scales_moved'])} moved; "
        f"{len(losses)} QAT "
        f"steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; mAP50-95 {100 * m['mAP50-95']:.2f} "
        "(untrained: expected near 0)")
    if "int8_step_ratio" in r:
        log(f"[torchvision] INT8 ({r['int8_layers']} layers) vs fake-quant raw head outputs: "
            f"{r['int8_step_ratio']:.3f} of one output step, {100 * r['int8_far'][0]:.2f}% beyond "
            f"1e-5 of the range, max {r['int8_far'][1]:.2g} of it; TorchScript detections "
            f"{'equal' if r['torchscript_equal'] else 'DIFFERENT'}")
    if args.check:
        problems = torchvision_problems(r)
        for p in problems:
            log(f"CHECK FAILED (torchvision): {p}")
        if problems:
            return 1
        log("check (torchvision): all invariants hold")
    return 0


def quantizers_without_grad(r: Dict[str, object]) -> List[str]:
    return sorted(set(r["quantizer_names"]) - set(r["scales_with_grad"]))


def torchvision_problems(r: Dict[str, object]) -> List[str]:
    """The torchvision flow's invariants that ``r`` (from ``torchvision_flow``) breaks."""
    problems = []
    if not all(math.isfinite(v) for v in r["losses"] + list(r["map"].values())):
        problems.append("non-finite loss or mAP")
    # LSQ: a learnable scale moves exactly when a gradient reaches it.
    if r["scales_moved"] != r["scales_with_grad"]:
        problems.append("the scales that moved in QAT are not those that got a gradient: "
                        f"{sorted(set(r['scales_moved']) ^ set(r['scales_with_grad']))[:5]}")
    # Every loss term goes through the trunk (backbone.features): its scales all get gradients.
    # The extra blocks and the heads of the coarse levels may get none in 8 steps: the box loss
    # covers anchors matched to a digit, and hard-negative mining picks 3 negatives per match.
    without = [n for n in quantizers_without_grad(r) if n.startswith("backbone.features.")]
    if without:
        problems.append(f"{len(without)} trunk quantizers got no scale gradient: {without[:5]}")
    if "int8_step_ratio" in r:
        # Logged, not asserted: in this 98-layer network with squeeze-excitation gates, codes
        # flipped at rounding ties early on carry through many layers, and the end-to-end
        # difference exceeds one output step of the heads (1.05 steps measured). What convert
        # guarantees, every INT8 layer within float rounding of the QAT layer on the same input,
        # is asserted layer by layer in tests/test_detector_torchvision.py.
        if not math.isfinite(r["int8_step_ratio"]):
            problems.append("the INT8 model's raw outputs are not finite")
        if not r["torchscript_equal"]:
            problems.append("the scripted INT8 model's detections differ")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, few steps (CI)")
    parser.add_argument("--check", action="store_true",
                        help="assert the job's invariants; in full mode also the targets")
    parser.add_argument("--out", default=os.path.join("out", "detector"),
                        help="folder for pictures and exports (default out/detector)")
    parser.add_argument("--retrain", action="store_true",
                        help="train the float model even if a cached checkpoint exists")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: with small convolutions on a shared "
                             "machine, a second OpenMP thread waiting for a busy core made each "
                             "step many times slower)")
    parser.add_argument("--torchvision", action="store_true",
                        help="also run the flow on a torchvision detector (random init)")
    parser.add_argument("--only-torchvision", action="store_true",
                        help="run only the torchvision flow")
    parser.add_argument("--no-sensitivity", action="store_true",
                        help="skip the per-layer sensitivity ranking of the full mode")
    parser.add_argument("--verbose", action="store_true", help="print the per-layer report")
    parser.add_argument("--activation-bits", type=int, choices=(7, 8), default=7,
                        help="bits of every layer input (default 7: the avx2_u7 INT8 kernel on "
                             "AVX2 CPUs; 8 is as fast on AVX-512 VNNI CPUs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rc = 0 if args.only_torchvision else run_tinyyolo(args)
    if args.torchvision or args.only_torchvision:
        rc = max(rc, run_torchvision(args))
    return rc


if __name__ == "__main__":
    sys.exit(main())
