"""Small models built from code for the QAT tests (torchvision is not usable in the CPU venv),
and measuring helpers. Not a test module: imported by test_prepare.py and test_ddp.py."""

from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from torchqat.nn import QuantModuleMixin


def estimate_bn_statistics(model: nn.Module, forward: Callable[[], object], steps: int = 4):
    """Gives ``model``'s BatchNorm layers the running statistics a trained model has: the
    cumulative average (``momentum=None``) of the batch statistics over ``steps`` calls of
    ``forward()`` in train mode under ``torch.no_grad()``; restores the momenta and returns the
    model in eval mode.

    A model built from code starts at (0, 1). Calibration runs in eval mode, where those make a
    random network's activations shrink layer after layer, so its input scales come out far too
    small and training then clips most activations (``calibrate`` warns). With the default
    momentum of 0.1, a few batches leave the statistics mostly at (0, 1) still."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for _ in range(steps):
                forward()
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return model.eval()


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``reference``, in dB."""
    reference = reference.detach().double()
    noise = (test.detach().double() - reference).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise.clamp_min(1e-30)))


def layer_sqnr(qmodel: nn.Module, *inputs) -> Dict[str, float]:
    """For every quantized layer: the SQNR of its output against the float layer (same float
    weight, no quantizers) applied to the very input the quantized layer received."""
    results: Dict[str, float] = {}
    handles = []

    def hook(name):
        def fn(module, args, output):
            float_forward = module._FLOAT_MODULE.forward
            with torch.no_grad():
                reference = float_forward(module, args[0])
            results[name] = sqnr_db(reference, output)

        return fn

    for name, m in qmodel.named_modules():
        if isinstance(m, QuantModuleMixin):
            handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            qmodel(*inputs)
    finally:
        for h in handles:
            h.remove()
    return results


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stack with a depthwise separable block, pooling and a Linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16),   # depthwise
            nn.Conv2d(16, 32, 1),                          # pointwise
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, stride=2, padding=2, dilation=2),
            nn.ReLU(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.head(x.mean(dim=(2, 3)))


class ConvBNSiLU(nn.Module):
    def __init__(self, cin, cout, k=3, s=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1 = ConvBNSiLU(c, c, 3)
        self.cv2 = ConvBNSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's split → bottlenecks → concat block."""

    def __init__(self, cin, cout, n=2):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBNSiLU(cin, 2 * self.c, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = ConvBNSiLU((2 + n) * self.c, cout, 1)

    def forward(self, x):
        ys = list(self.cv1(x).chunk(2, dim=1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class SPPF(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1 = ConvBNSiLU(c, c // 2, 1)
        self.cv2 = ConvBNSiLU(c * 2, c, 1)

    def forward(self, x):
        x = self.cv1(x)
        y1 = F.max_pool2d(x, 5, 1, 2)
        y2 = F.max_pool2d(y1, 5, 1, 2)
        y3 = F.max_pool2d(y2, 5, 1, 2)
        return self.cv2(torch.cat([x, y1, y2, y3], dim=1))


class TinyDetector(nn.Module):
    """A small YOLO-style detector: residual adds, split/concat, SPPF, nearest upsampling and a
    grouped transposed-convolution upsampling in the neck, SiLU everywhere, two heads, and
    data-dependent Python control flow (an extra stride-64 level only for inputs of 128 pixels
    and more; different outputs in training and eval)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.no = num_classes + 5
        self.stem = ConvBNSiLU(3, 16, 3, 2)
        self.stage1 = nn.Sequential(ConvBNSiLU(16, 32, 3, 2), C2f(32, 32, 1))
        self.stage2 = nn.Sequential(ConvBNSiLU(32, 64, 3, 2), C2f(64, 64, 1), SPPF(64))
        self.extra = ConvBNSiLU(64, 64, 3, 2)   # used only for large inputs
        self.up_nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_learned = nn.ConvTranspose2d(64, 64, 2, stride=2, groups=4)
        self.neck = C2f(64 + 32, 32, 1)
        self.heads = nn.ModuleList([nn.Conv2d(32, 3 * self.no, 1), nn.Conv2d(64, 3 * self.no, 1)])

    def forward(self, x):
        x = self.stem(x)
        p3 = self.stage1(x)
        p4 = self.stage2(p3)
        if p4.shape[-1] >= 8:   # dynamic: an extra level for large inputs
            p4 = p4 + F.interpolate(self.extra(p4), size=p4.shape[-2:], mode="nearest")
        up = self.up_nearest(p4) + self.up_learned(p4)
        p3 = self.neck(torch.cat([up, p3], dim=1))
        outs: List[torch.Tensor] = []
        for head, feat in zip(self.heads, (p3, p4)):
            y = head(feat)
            b, _, h, w = y.shape
            outs.append(y.view(b, 3, self.no, h, w).permute(0, 1, 3, 4, 2))
        if self.training:
            return outs
        return torch.cat([o.sigmoid().flatten(1, 3) for o in outs], dim=1)


def detector_loss(outs: List[torch.Tensor]) -> torch.Tensor:
    """A stand-in detection loss: objectness and class logits pulled towards fixed targets."""
    loss = outs[0].new_zeros(())
    for o in outs:
        target = torch.zeros_like(o)
        target[..., 4] = 1.0
        loss = loss + F.binary_cross_entropy_with_logits(o[..., 4:], target[..., 4:]) + \
            o[..., :4].pow(2).mean()
    return loss
