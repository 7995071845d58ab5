"""COCO-style evaluation with pycocotools, from in-memory ground truth and detections."""

from __future__ import annotations

import contextlib
import io
from typing import Dict, Iterable, List, Sequence

import torch

from .model import decode

__all__ = ["coco_map", "predict"]


def _xywh(box: Sequence[float]) -> List[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_map(detections: Sequence[Dict[str, torch.Tensor]],
             targets: Sequence[Dict[str, torch.Tensor]], num_classes: int = 10
             ) -> Dict[str, float]:
    """COCO mAP of ``detections`` (per image: ``boxes`` xyxy, ``scores``, ``labels``) against
    ``targets`` (per image: ``boxes``, ``labels``), one entry per image in the same order.

    Returns ``{"mAP50-95", "mAP50", "mAP75"}`` as fractions in [0, 1] (pycocotools' ``stats``;
    ``-1`` there, meaning no ground truth, is returned as NaN). ``maxDets`` is COCO's 100.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(detections) != len(targets):
        raise ValueError(f"coco_map: {len(detections)} detections for {len(targets)} images")
    images, annotations, results = [], [], []
    for image_id, (det, tgt) in enumerate(zip(detections, targets)):
        images.append({"id": image_id})
        for box, label in zip(tgt["boxes"].tolist(), tgt["labels"].tolist()):
            xywh = _xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(label), "bbox": xywh,
                                "area": xywh[2] * xywh[3], "iscrowd": 0})
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                     det["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": int(label),
                            "bbox": _xywh(box), "score": float(score)})
    nan = float("nan")
    if not annotations:
        return {"mAP50-95": nan, "mAP50": nan, "mAP75": nan}
    if not results:
        return {"mAP50-95": 0.0, "mAP50": 0.0, "mAP75": 0.0}
    quiet = io.StringIO()  # pycocotools prints its progress and the 12-line summary
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in range(num_classes)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [nan if s < 0 else float(s) for s in ev.stats[:3]]
    return {"mAP50-95": stats[0], "mAP50": stats[1], "mAP75": stats[2]}


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable, strides: Sequence[int],
            **decode_kwargs) -> List[Dict[str, torch.Tensor]]:
    """Runs ``model`` (in eval mode; its training flag is restored) over ``(images, targets)``
    batches and decodes: one detection dict per image."""
    was_training = model.training
    model.eval()
    out: List[Dict[str, torch.Tensor]] = []
    try:
        for images, _ in batches:
            raw = model(images)
            out.extend(decode(raw, tuple(images.shape[-2:]), strides, **decode_kwargs))
    finally:
        model.train(was_training)
    return out
