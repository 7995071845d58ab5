"""Fake-quantizes the weights of a small convolutional model with torchqat's operators and
prints what it did: per layer, the bits, the per-channel scale range, the signal-to-quantization
noise ratio (SQNR) and whether the result equals PyTorch's own fake-quant operator bit for bit.

    python examples/fake_quant_demo.py

This is the stand-in main job until the detector QAT job lands (`make demo` runs it).
"""

from __future__ import annotations

import torch
from torch import nn

import torchqat


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.SiLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.SiLU(),
        nn.Conv2d(64, 64, 1), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (ref - approx).pow(2).sum()
    return float(10 * torch.log10(ref.pow(2).sum() / noise.clamp_min(1e-30)))


def per_channel_qparams(w: torch.Tensor, bits: int):
    """Symmetric per-output-channel scales from the max magnitude: the narrow range
    [-(2^(b-1) - 1), 2^(b-1) - 1], as int8 weights use."""
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-8)
    scale = (amax / qmax).float()
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return scale, zero_point, -qmax, qmax


def main() -> None:
    model = small_cnn()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref_out = model(x)
    print(f"torchqat {torchqat.__version__} on torch {torch.__version__}, "
          f"CPU kernels: {torch.ops.torchqat.cpu_capability()}\n")
    print(f"{'layer':<8} {'weight shape':<18} {'bits':>4} {'scale range':>23} "
          f"{'SQNR dB':>8} {'== PyTorch op':>14}")
    for bits in (8, 4):
        qmodel = small_cnn()
        for name, module in qmodel.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            w = module.weight.data
            scale, zp, qmin, qmax = per_channel_qparams(w, bits)
            wq = torchqat.fake_quantize(w, scale, zp, qmin, qmax, axis=0)
            same = torch.equal(wq, torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax))
            print(f"{name:<8} {str(tuple(w.shape)):<18} {bits:>4} "
                  f"[{scale.min():.3e}, {scale.max():.3e}] {sqnr_db(w, wq):8.1f} {str(same):>14}")
            module.weight.data = wq
        with torch.no_grad():
            out = qmodel(x)
        print(f"{'model':<8} {'output':<18} {bits:>4} {'':>23} {sqnr_db(ref_out, out):8.1f}\n")


if __name__ == "__main__":
    main()
