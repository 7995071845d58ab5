"""Quantization-aware training of a small CNN on scikit-learn's digits (8x8 images, 10 classes).

1. Train the CNN in float.
2. For 8-bit (per-channel weights) and 4-bit LSQ (first and last layer at 8 bits, as in the LSQ
   paper): post-training quantization (prepare_qat + calibrate, no training) and QAT
   (prepare_qat + calibrate + fine-tuning).
3. Print the accuracies side by side.

Targets: 8-bit QAT within 0.5 points of float; 4-bit LSQ within 2 points; QAT >= PTQ at 4 bits.

    python examples/classifier_qat.py            # 3 runs averaged; a minute or two on one core
    python examples/classifier_qat.py --quick    # a few seconds, for tests (targets not expected)
    python examples/classifier_qat.py --check    # exit 1 if a target is missed

Needs scikit-learn (the data set ships with it) and tqdm.
"""

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import torchqat as tq


def load_digits_tensors(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(torch.arange(len(y)).numpy(), test_size=0.3,
                                           random_state=seed, stratify=y.numpy())
    mean, std = x[idx_train].mean(), x[idx_train].std()
    x = (x - mean) / std
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),                                                    # 4x4
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),                                                    # 2x2
        )
        self.classifier = nn.Linear(64 * 4, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def batches(x, y, batch_size, generator=None):
    order = torch.randperm(len(y), generator=generator) if generator is not None \
        else torch.arange(len(y))
    for i in range(0, len(y), batch_size):
        j = order[i:i + batch_size]
        yield x[j], y[j]


@torch.no_grad()
def evaluate(model, x, y):
    """``(accuracy in %, mean cross-entropy)``."""
    model.eval()
    correct, loss = 0, 0.0
    for xb, yb in batches(x, y, 256):
        logits = model(xb)
        correct += (logits.argmax(1) == yb).sum().item()
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
    return 100.0 * correct / len(y), loss / len(y)


def train(model, x, y, epochs, optimizer, seed, batch_size=64):
    g = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[grp["lr"] for grp in optimizer.param_groups], total_steps=steps,
        pct_start=0.15)
    for _ in range(epochs):
        model.train()
        for xb, yb in batches(x, y, batch_size, g):
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sched.step()


def qat_optimizer(model, lr):
    """Adam moves every parameter by about ``lr`` per step whatever its size, and quantizer
    scales are 10 to 100 times smaller than weights: they get their own group with a 10 times
    smaller learning rate, and no weight decay."""
    quant, other = [], []
    for name, p in model.named_parameters():
        (quant if "quantizer." in name else other).append(p)
    return torch.optim.AdamW([
        {"params": other, "lr": lr, "weight_decay": 1e-4},
        {"params": quant, "lr": lr * 0.1, "weight_decay": 0.0},
    ])


CONFIGS = {
    "8-bit, per-channel weights": tq.QATConfig(
        weight=tq.QuantSpec(bits=8, symmetric=True, per_channel=True, narrow_range=True,
                            learnable=True),
        activation=tq.QuantSpec(bits=8, symmetric=False, learnable=True),
    ),
    "4-bit LSQ (first/last layer 8-bit)": tq.QATConfig(
        weight=tq.QuantSpec(bits=4, symmetric=True, per_channel=True, learnable=True,
                            observer="mse"),
        activation=tq.QuantSpec(bits=4, symmetric=False, learnable=True, observer="mse"),
        overrides={
            "features.0": {"weight": {"bits": 8, "observer": "minmax"},
                           "activation": {"bits": 8, "observer": "minmax"}},
            "classifier": {"weight": {"bits": 8, "observer": "minmax"},
                           "activation": {"bits": 8, "observer": "minmax"}},
        },
    ),
}


def run(seed: int, float_epochs: int, qat_epochs: int, progress: bool):
    """Float, then PTQ and QAT for each config:
    ``(float (acc, loss), {label: ((acc, loss) PTQ, (acc, loss) QAT)}, n_train, n_test)``."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_tensors(seed)
    model = DigitsCNN()
    train(model, x_train, y_train, float_epochs,
          torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4), seed)
    results = {}
    for label, config in CONFIGS.items():
        qmodel = tq.prepare_qat(model, config)
        calib = [xb for xb, _ in batches(x_train, y_train, 64, torch.Generator().manual_seed(1))]
        tq.calibrate(qmodel, calib, num_batches=8, progress=progress)
        ptq = evaluate(qmodel, x_test, y_test)
        # Fine-tuning from the calibrated model: a learning rate ~1/30 of the float training's.
        train(qmodel, x_train, y_train, qat_epochs, qat_optimizer(qmodel, 1e-4), seed + 1)
        results[label] = (ptq, evaluate(qmodel, x_test, y_test))
    return evaluate(model, x_test, y_test), results, len(y_train), len(y_test)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, a few epochs (tests)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--seeds", type=int, default=3,
                        help="runs (data split and initialisation) to average (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: on 8x8 images more threads cost more "
                             "in synchronisation than they save)")
    args = parser.parse_args(argv)

    seeds = 1 if args.quick else args.seeds
    float_epochs, qat_epochs = (4, 1) if args.quick else (30, 10)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs = [run(seed, float_epochs, qat_epochs, progress=not args.quick) for seed in range(seeds)]
    n_train, n_test = runs[0][2], runs[0][3]

    def mean(values):
        return sum(values) / len(values)

    fl = [mean([r[0][k] for r in runs]) for k in (0, 1)]
    rows = [(label,) + tuple(mean([r[1][label][i][k] for r in runs]) for i in (0, 1) for k in (0, 1))
            for label in CONFIGS]
    print(f"\ndigits: {n_train} training / {n_test} test images; {float_epochs} float + "
          f"{qat_epochs} QAT epochs; mean of {seeds} run(s) (seeds 0..{seeds - 1}); "
          f"{time.perf_counter() - start:.0f} s")
    print(f"{'':36s} {'test accuracy, %':^23s}   {'test cross-entropy':^23s}")
    print(f"{'':36s} {'float':>7s} {'PTQ':>7s} {'QAT':>7s}   {'float':>7s} {'PTQ':>7s} {'QAT':>7s}")
    for label, ptq_acc, ptq_loss, qat_acc, qat_loss in rows:
        print(f"{label:36s} {fl[0]:7.2f} {ptq_acc:7.2f} {qat_acc:7.2f}   "
              f"{fl[1]:7.4f} {ptq_loss:7.4f} {qat_loss:7.4f}")
    if seeds > 1:
        print("per run, accuracy: float / PTQ QAT (8-bit) / PTQ QAT (4-bit)")
        for seed, (f, res, _, _) in enumerate(runs):
            cells = " / ".join(f"{p[0]:6.2f} {q[0]:6.2f}" for p, q in res.values())
            print(f"  seed {seed}: {f[0]:6.2f} / {cells}")

    (_, _, _, qat8, _), (_, ptq4, ptq4_loss, qat4, qat4_loss) = rows
    checks = [
        ("8-bit QAT within 0.5 points of float", qat8 >= fl[0] - 0.5),
        ("4-bit LSQ within 2 points of float", qat4 >= fl[0] - 2.0),
        ("QAT >= PTQ at 4 bits (accuracy)", qat4 >= ptq4),
    ]
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}")
    print(f"  (4-bit test cross-entropy: PTQ {ptq4_loss:.4f}, QAT {qat4_loss:.4f})")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
