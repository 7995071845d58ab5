"""TinyYOLO: a compact YOLO-style, anchor-free detector built from code.

Backbone: ``Conv`` (conv → bn → SiLU) downsampling blocks and C2f residual stages (YOLOv8's
cross-stage block with bottlenecks). Neck: a PAN — top-down upsample-and-concat, then bottom-up
strided convs and concat — over three scales (strides 4, 8, 16 for the 64×64 digits canvases).
Head: per level, a box branch (4 distances + centerness) and a class branch (one logit per class),
FCOS-style: every grid point predicts the distances from itself to the four sides of its object.

``TinyYOLO.forward`` returns one tensor ``[B, N, 4 + 1 + num_classes]`` of raw outputs over all
levels' points (level by level, row-major), so the network is a plain conv stack that quantizes,
converts and exports as a whole; :class:`DetectionLoss` and :func:`decode` interpret it using
``model.strides``.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Conv", "Bottleneck", "C2f", "TinyYOLO", "make_points", "box_iou", "nms",
           "batched_nms", "decode", "DetectionLoss"]


class Conv(nn.Module):
    """``act(bn(conv(x)))`` with a bias-free convolution: the structure INT8 conversion folds
    (BatchNorm into the epilogue's per-channel scale and bias, SiLU after it)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3×3 ``Conv`` with a residual add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f: a 1×1 ``Conv`` splits into two halves; bottlenecks run on the second half,
    every intermediate result is concatenated and a 1×1 ``Conv`` mixes them."""

    def __init__(self, c_in: int, c_out: int, n: int = 1) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = Conv(c_in, 2 * self.c, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = Conv((2 + n) * self.c, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class Head(nn.Module):
    """One level's decoupled head: box branch → 4 distances + 1 centerness logit; class branch →
    ``num_classes`` logits."""

    def __init__(self, c_in: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.box = Conv(c_in, hidden, 3)
        self.box_out = nn.Conv2d(hidden, 5, 1)
        self.cls = Conv(c_in, hidden, 3)
        self.cls_out = nn.Conv2d(hidden, num_classes, 1)
        # Focal-loss prior (RetinaNet): start every class at p = 0.01, so the many background
        # points do not swamp the first steps.
        nn.init.constant_(self.cls_out.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.box_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.box_out(self.box(x)), self.cls_out(self.cls(x))], 1)
        return out.flatten(2).transpose(1, 2)  # [B, H*W, 5 + C]


class TinyYOLO(nn.Module):
    """The detector. ``width`` scales every channel count (16 → 16/32/64/128 channels,
    ~0.5 M parameters); ``in_channels`` 1 (gray) or 3."""

    strides: Tuple[int, int, int] = (4, 8, 16)

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.stem = Conv(in_channels, w, 3, 2)                               # /2
        self.stage2 = nn.Sequential(Conv(w, 2 * w, 3, 2), C2f(2 * w, 2 * w, 1))          # /4
        self.stage3 = nn.Sequential(Conv(2 * w, 4 * w, 3, 2), C2f(4 * w, 4 * w, 2))      # /8
        self.stage4 = nn.Sequential(Conv(4 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w, 1))      # /16
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top3 = C2f(12 * w, 4 * w, 1)
        self.top2 = C2f(6 * w, 2 * w, 1)
        self.down2 = Conv(2 * w, 2 * w, 3, 2)
        self.pan3 = C2f(6 * w, 4 * w, 1)
        self.down3 = Conv(4 * w, 4 * w, 3, 2)
        self.pan4 = C2f(12 * w, 8 * w, 1)
        self.heads = nn.ModuleList(Head(c, 2 * w, num_classes) for c in (2 * w, 4 * w, 8 * w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c2 = self.stage2(self.stem(x))
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        t3 = self.top3(torch.cat([self.up(c4), c3], 1))
        n2 = self.top2(torch.cat([self.up(t3), c2], 1))
        n3 = self.pan3(torch.cat([self.down2(n2), t3], 1))
        n4 = self.pan4(torch.cat([self.down3(n3), c4], 1))
        return torch.cat([h(f) for h, f in zip(self.heads, (n2, n3, n4))], 1)


def make_points(height: int, width: int, strides: Sequence[int],
                device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Grid-cell centres of every level, in the order of ``TinyYOLO.forward``'s output:
    ``(points [N, 2] as (x, y) pixels, stride of each point [N])``."""
    pts, strs = [], []
    for s in strides:
        h, w = math.ceil(height / s), math.ceil(width / s)
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                                indexing="ij")
        pts.append(torch.stack([xs, ys], -1).reshape(-1, 2).float().add_(0.5).mul_(s))
        strs.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(pts), torch.cat(strs)


def distances_to_boxes(points: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """``(x - l, y - t, x + r, y + b)``."""
    return torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)


def box_distances(raw: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Raw box outputs → non-negative distances in pixels (softplus, in units of the stride)."""
    return F.softplus(raw) * strides[:, None]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[n, m]`` of xyxy boxes."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-9)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of matched xyxy boxes ``[n, 4]``."""
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_p + area_t - inter
    iou = inter / union.clamp(min=1e-9)
    hull = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).prod(-1)
    return 1 - iou + (hull - union) / hull.clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression (as ``torchvision.ops.nms``): indices of the kept boxes,
    by decreasing score. A box is dropped when its IoU with a kept, higher-scoring box is
    *greater than* ``iou_threshold``."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    n = order.numel()
    removed = [False] * n
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        row = over[i]
        for j in row[i + 1:].nonzero()[0]:
            removed[i + 1 + j] = True
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS within each class: shifting each class's boxes by a class-dependent offset larger
    than every coordinate makes boxes of different classes disjoint, so one NMS does all."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset[:, None], scores, iou_threshold)


@torch.no_grad()
def decode(output: torch.Tensor, image_size: Tuple[int, int], strides: Sequence[int],
           score_threshold: float = 0.05, iou_threshold: float = 0.6, pre_nms: int = 300,
           max_detections: int = 100) -> List[Dict[str, torch.Tensor]]:
    """Raw output ``[B, N, 5 + C]`` → per image ``{"boxes" [k, 4] xyxy, "scores" [k],
    "labels" [k]}``. Score = ``sqrt(sigmoid(class) * sigmoid(centerness))`` (FCOS); candidates
    above ``score_threshold`` (at most ``pre_nms``), class-wise NMS, the best
    ``max_detections``."""
    h, w = image_size
    points, point_strides = make_points(h, w, strides, output.device)
    output = output.float()
    boxes_all = distances_to_boxes(points, box_distances(output[..., :4], point_strides))
    boxes_all[..., 0::2] = boxes_all[..., 0::2].clamp(0, w)
    boxes_all[..., 1::2] = boxes_all[..., 1::2].clamp(0, h)
    scores_all = (output[..., 5:].sigmoid() * output[..., 4:5].sigmoid()).sqrt()
    num_classes = scores_all.shape[-1]
    results = []
    for boxes, scores in zip(boxes_all, scores_all):
        flat = scores.flatten()
        idx = (flat > score_threshold).nonzero().squeeze(1)
        if idx.numel() > pre_nms:
            idx = idx[flat[idx].topk(pre_nms).indices]
        point, label = idx // num_classes, idx % num_classes
        b, s = boxes[point], flat[idx]
        keep = batched_nms(b, s, label, iou_threshold)[:max_detections]
        results.append({"boxes": b[keep], "scores": s[keep], "labels": label[keep]})
    return results


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    return (alpha * targets + (1 - alpha) * (1 - targets)) * loss


class DetectionLoss(nn.Module):
    """FCOS's loss with centre sampling: a point is positive for an object when it lies inside
    the box and within ``radius`` strides of its centre (the point nearest the centre counts too,
    so thin digits such as 1 are never left without a positive); a point claimed by two objects
    goes to the smaller. Every level may predict every object (no size ranges: the objects span
    only 12-32 px), and NMS removes the duplicates.

    ``loss = focal(class) + 2 · GIoU(box, weighted by centerness target) + BCE(centerness)``,
    each normalised by the number of positives. Returns ``(total, {"cls", "box", "ctr"})``.
    """

    def __init__(self, strides: Sequence[int], num_classes: int, radius: float = 1.5,
                 box_weight: float = 2.0) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.num_classes = num_classes
        self.radius = radius
        self.box_weight = box_weight

    @torch.no_grad()
    def assign(self, points: torch.Tensor, point_strides: torch.Tensor, boxes: torch.Tensor
               ) -> torch.Tensor:
        """Index of the object each point is positive for, -1 for background: ``[N]``."""
        n = points.shape[0]
        if boxes.numel() == 0:
            return torch.full((n,), -1, dtype=torch.long, device=points.device)
        x, y = points[:, 0:1], points[:, 1:2]                                  # [N, 1]
        inside = ((x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3]))
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        r = self.radius * point_strides[:, None]
        near = ((x - cx).abs() < r) & ((y - cy).abs() < r)
        ok = inside & near
        # The point nearest the centre on each level is positive too.
        start = 0
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        for s in self.strides:
            count = int((point_strides == s).sum())
            nearest = d2[start:start + count].argmin(0) + start
            ok[nearest, torch.arange(boxes.shape[0], device=boxes.device)] = True
            start += count
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(n, -1)
        area = torch.where(ok, area, torch.full_like(area, float("inf")))
        best_area, best = area.min(1)
        return torch.where(torch.isfinite(best_area), best, torch.full_like(best, -1))

    def forward(self, output: torch.Tensor, targets: List[Dict[str, torch.Tensor]],
                image_size: Tuple[int, int]):
        b, n, _ = output.shape
        points, point_strides = make_points(image_size[0], image_size[1], self.strides,
                                            output.device)
        cls_targets = torch.zeros(b, n, self.num_classes, device=output.device)
        pos_pred, pos_gt, pos_points, pos_strides, pos_ctr = [], [], [], [], []
        for i, t in enumerate(targets):
            boxes = t["boxes"].to(output.device).float()
            assigned = self.assign(points, point_strides, boxes)
            pos = (assigned >= 0).nonzero().squeeze(1)
            if pos.numel() == 0:
                continue
            gt = boxes[assigned[pos]]
            cls_targets[i, pos, t["labels"].to(output.device)[assigned[pos]]] = 1.0
            pos_pred.append(output[i, pos])
            pos_gt.append(gt)
            pos_points.append(points[pos])
            pos_strides.append(point_strides[pos])
        num_pos = max(sum(p.shape[0] for p in pos_pred), 1)
        loss_cls = sigmoid_focal_loss(output[..., 5:], cls_targets).sum() / num_pos
        if not pos_pred:
            zero = output.sum() * 0.0
            return loss_cls + zero, {"cls": loss_cls.detach(), "box": zero.detach(),
                                     "ctr": zero.detach()}
        pred = torch.cat(pos_pred)
        gt = torch.cat(pos_gt)
        pts = torch.cat(pos_points)
        strs = torch.cat(pos_strides)
        # Centerness target from the distances to the sides (0 where the point is outside: the
        # nearest-point positives of thin digits).
        ltrb = torch.cat([pts - gt[:, :2], gt[:, 2:] - pts], 1).clamp(min=0)
        lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]
        ctr = ((lr.min(1).values / lr.max(1).values.clamp(min=1e-6))
               * (tb.min(1).values / tb.max(1).values.clamp(min=1e-6))).sqrt()
        pred_boxes = distances_to_boxes(pts, box_distances(pred[:, :4], strs))
        weight = ctr.clamp(min=0.1)
        loss_box = (giou_loss(pred_boxes, gt) * weight).sum() / weight.sum()
        loss_ctr = F.binary_cross_entropy_with_logits(pred[:, 4], ctr, reduction="mean")
        total = loss_cls + self.box_weight * loss_box + loss_ctr
        return total, {"cls": loss_cls.detach(), "box": loss_box.detach(),
                       "ctr": loss_ctr.detach()}
