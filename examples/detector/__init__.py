"""A compact YOLO-style detector built from code, for the QAT demo (``examples/detector_qat.py``).

- ``model``: ``Conv`` (conv → bn → SiLU) blocks, C2f residual bottlenecks, a PAN neck over three
  scales (strides 4, 8, 16) and an anchor-free FCOS-style head (class, box distances,
  centerness); the loss (focal + GIoU + centerness BCE); decoding and batched NMS in plain torch.
- ``evaluate``: COCO mAP50-95 / mAP50 with pycocotools, from in-memory dicts.
"""

from .model import (Conv, C2f, Bottleneck, TinyYOLO, DetectionLoss, decode, batched_nms, box_iou,
                    nms)
from .evaluate import coco_map, predict

__all__ = ["Conv", "C2f", "Bottleneck", "TinyYOLO", "DetectionLoss", "decode", "batched_nms",
           "box_iou", "nms", "coco_map", "predict"]
