"""A detection data set that needs no download: scikit-learn's handwritten digits placed on larger
canvases with clutter.

Each image is a ``size × size`` grayscale canvas holding 1 to ``max_objects`` digits (classes 0-9),
each upscaled to a random height in ``[min_digit, max_digit]`` pixels and placed so that no two
digits overlap by more than ``max_overlap`` (IoU). The background carries Gaussian noise, random
line strokes and *fragments* of other digits (a cropped half of a digit, without a label), so the
detector must tell a whole digit from a digit-like scrap. Boxes are the tight extent of a digit's
ink in pixels, ``xyxy`` with ``x2``/``y2`` exclusive (a one-pixel-wide digit at column 3 has
``x1=3, x2=4``), as COCO's ``[x, y, w, h]`` reads them.

The train and validation splits draw from **disjoint** source digits (a seeded split of the 1797
digits, 70/30, stratified by class), so validation measures recognition of unseen handwriting.

Generation is deterministic for a given ``(split, num_images, size, seed, …)`` and takes ~3 s per
1000 images; the arrays are cached in ``cache_dir`` (default ``$TORCHQAT_CACHE`` or
``~/.cache/torchqat``) as ``.npz`` and loaded from there afterwards.

    from torchqat.data import DigitsDetection, detection_collate
    train = DigitsDetection("train")
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True,
                                         collate_fn=detection_collate)
    images, targets = next(iter(loader))   # [32, 1, 64, 64]; list of {"boxes", "labels"}
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["DetectionSetSpec", "generate_digits_detection", "load_digits_detection",
           "DigitsDetection", "detection_collate", "NUM_CLASSES", "default_cache_dir"]

NUM_CLASSES = 10
# Bump when the generator changes, so stale caches are not reused.
_FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass(frozen=True)
class DetectionSetSpec:
    """Everything that determines a generated split (the cache key)."""

    split: str = "train"
    num_images: int = 4000
    size: int = 64
    min_digit: int = 12
    max_digit: int = 32
    max_objects: int = 4
    max_overlap: float = 0.05
    seed: int = 0

    def validate(self) -> None:
        where = "torchqat.data"
        if self.split not in SPLITS:
            raise ValueError(f"{where}: split must be one of {SPLITS}, got {self.split!r}")
        if not isinstance(self.num_images, int) or self.num_images < 1:
            raise ValueError(f"{where}: num_images must be a positive integer, "
                             f"got {self.num_images!r}")
        if not 8 <= self.min_digit <= self.max_digit:
            raise ValueError(f"{where}: need 8 <= min_digit <= max_digit, got min_digit="
                             f"{self.min_digit}, max_digit={self.max_digit}")
        if self.max_digit > self.size // 2:
            raise ValueError(f"{where}: max_digit must be at most size/2 ({self.size // 2}) so "
                             f"several digits fit, got {self.max_digit}")
        if not isinstance(self.max_objects, int) or self.max_objects < 1:
            raise ValueError(f"{where}: max_objects must be a positive integer, "
                             f"got {self.max_objects!r}")
        if not 0.0 <= self.max_overlap < 1.0:
            raise ValueError(f"{where}: max_overlap must be in [0, 1), got {self.max_overlap!r}")

    def key(self) -> str:
        blob = json.dumps({"v": _FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def default_cache_dir() -> str:
    return os.environ.get("TORCHQAT_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "torchqat"))


def _source_digits(split: str, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """The 8×8 digits of ``split`` (float in [0, 1]) and their labels; train and val are
    disjoint, 70/30 per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed + 7919)
    train_idx, val_idx = [], []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        cut = int(round(0.7 * len(idx)))
        train_idx.append(idx[:cut])
        val_idx.append(idx[cut:])
    idx = np.sort(np.concatenate(train_idx if split == "train" else val_idx))
    return images[idx], labels[idx]


def _resize(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (half-pixel centres, edge clamp) of a 2-D array."""
    h, w = patch.shape
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    top = patch[y0][:, x0] * (1 - fx) + patch[y0][:, x1] * fx
    bottom = patch[y1][:, x0] * (1 - fx) + patch[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` [4] against boxes ``b`` [n, 4] (xyxy)."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter)


# A pixel belongs to a digit's ink above this fraction of its patch's maximum.
_INK = 0.25


def _ink_box(patch: np.ndarray) -> Tuple[int, int, int, int]:
    rows = np.flatnonzero((patch > _INK * patch.max()).any(axis=1))
    cols = np.flatnonzero((patch > _INK * patch.max()).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def generate_digits_detection(spec: DetectionSetSpec) -> Dict[str, np.ndarray]:
    """Generates one split. Returns ``images`` uint8 ``[N, size, size]``, ``boxes`` float32
    ``[M, 4]`` (xyxy pixels), ``labels`` int64 ``[M]`` and ``offsets`` int64 ``[N + 1]`` (the
    objects of image ``i`` are ``offsets[i]:offsets[i + 1]``)."""
    spec.validate()
    src, src_labels = _source_digits(spec.split, spec.seed)
    # Different streams for the two splits even with one seed.
    rng = np.random.default_rng([spec.seed, SPLITS.index(spec.split), _FORMAT_VERSION])
    size = spec.size
    images = np.empty((spec.num_images, size, size), dtype=np.uint8)
    all_boxes: List[np.ndarray] = []
    all_labels: List[np.ndarray] = []
    offsets = np.zeros(spec.num_images + 1, dtype=np.int64)

    for i in range(spec.num_images):
        canvas = rng.normal(0.08, 0.04, (size, size)).clip(0, 1).astype(np.float32)
        # Strokes: short straight lines of moderate brightness.
        for _ in range(rng.integers(0, 4)):
            x0, y0 = rng.uniform(0, size, 2)
            angle = rng.uniform(0, np.pi)
            length = rng.uniform(6, size / 2)
            t = np.linspace(0, length, int(length * 2))
            xs = np.clip((x0 + t * np.cos(angle)).astype(int), 0, size - 1)
            ys = np.clip((y0 + t * np.sin(angle)).astype(int), 0, size - 1)
            canvas[ys, xs] = np.maximum(canvas[ys, xs], rng.uniform(0.3, 0.7))
        # Fragments: the left, right, top or bottom 3/8 of another digit, unlabelled.
        for _ in range(rng.integers(0, 3)):
            frag = src[rng.integers(len(src))]
            side = rng.integers(4)
            frag = [frag[:, :3], frag[:, 5:], frag[:3, :], frag[5:, :]][side]
            scale = rng.uniform(spec.min_digit, spec.max_digit) / 8.0
            fh = max(2, int(round(frag.shape[0] * scale)))
            fw = max(2, int(round(frag.shape[1] * scale)))
            fy, fx = rng.integers(0, size - fh + 1), rng.integers(0, size - fw + 1)
            patch = _resize(frag, fh, fw) * rng.uniform(0.5, 0.9)
            region = canvas[fy:fy + fh, fx:fx + fw]
            np.maximum(region, patch, out=region)

        boxes: List[np.ndarray] = []
        labels: List[int] = []
        want = int(rng.integers(1, spec.max_objects + 1))
        tries = 0
        while len(boxes) < want and tries < 30:
            tries += 1
            k = rng.integers(len(src))
            h = int(rng.integers(spec.min_digit, spec.max_digit + 1))
            w = int(round(h * rng.uniform(0.75, 1.1)))
            patch = _resize(src[k], h, w)
            if patch.max() <= 0:
                continue
            bx0, by0, bx1, by1 = _ink_box(patch)
            y = int(rng.integers(0, size - h + 1))
            x = int(rng.integers(0, size - w + 1))
            box = np.array([x + bx0, y + by0, x + bx1, y + by1], dtype=np.float32)
            if boxes and _iou(box, np.stack(boxes)).max() > spec.max_overlap:
                continue
            patch = patch / patch.max() * rng.uniform(0.75, 1.0)
            region = canvas[y:y + h, x:x + w]
            np.maximum(region, patch, out=region)
            boxes.append(box)
            labels.append(int(src_labels[k]))
        images[i] = np.round(canvas.clip(0, 1) * 255).astype(np.uint8)
        all_boxes.append(np.stack(boxes) if boxes else np.zeros((0, 4), np.float32))
        all_labels.append(np.asarray(labels, dtype=np.int64))
        offsets[i + 1] = offsets[i] + len(boxes)

    return {"images": images, "boxes": np.concatenate(all_boxes).astype(np.float32),
            "labels": np.concatenate(all_labels), "offsets": offsets}


def load_digits_detection(spec: DetectionSetSpec, cache_dir: Optional[str] = None,
                          use_cache: bool = True) -> Dict[str, np.ndarray]:
    """:func:`generate_digits_detection`, cached as ``<cache_dir>/digits_det_<split>_<key>.npz``
    (``key`` hashes the whole spec and the generator's version)."""
    spec.validate()
    if not use_cache:
        return generate_digits_detection(spec)
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"digits_det_{spec.split}_{spec.key()}.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return {k: f[k] for k in ("images", "boxes", "labels", "offsets")}
    arrays = generate_digits_detection(spec)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"  # write then rename: concurrent runs never see half
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


class DigitsDetection(torch.utils.data.Dataset):
    """The digits detection data set as a torch ``Dataset``.

    ``ds[i]`` is ``(image, target)``: ``image`` float32 ``[channels, size, size]`` in ``[0, 1]``
    (``channels=3`` repeats the gray channel, for models that expect RGB), ``target`` a dict
    with ``boxes`` float32 ``[n, 4]`` (xyxy pixels) and ``labels`` int64 ``[n]`` (0-9), as
    torchvision's detection models take them.

    Args:
        split: ``"train"`` or ``"val"`` (disjoint source digits).
        num_images: default 4000 for train, 500 for val.
        channels: 1 or 3.
        cache_dir, use_cache: see :func:`load_digits_detection`.
        The other arguments are the fields of :class:`DetectionSetSpec`.
    """

    def __init__(self, split: str = "train", num_images: Optional[int] = None, size: int = 64,
                 channels: int = 1, seed: int = 0, min_digit: int = 12, max_digit: int = 32,
                 max_objects: int = 4, max_overlap: float = 0.05,
                 cache_dir: Optional[str] = None, use_cache: bool = True) -> None:
        if channels not in (1, 3):
            raise ValueError(f"DigitsDetection: channels must be 1 or 3, got {channels!r}")
        if num_images is None:
            num_images = 4000 if split == "train" else 500
        self.spec = DetectionSetSpec(split, num_images, size, min_digit, max_digit, max_objects,
                                     max_overlap, seed)
        self.channels = channels
        arrays = load_digits_detection(self.spec, cache_dir, use_cache)
        self.images = torch.from_numpy(arrays["images"])
        self.boxes = torch.from_numpy(arrays["boxes"])
        self.labels = torch.from_numpy(arrays["labels"])
        self.offsets = arrays["offsets"].tolist()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"DigitsDetection: index {i} out of range for {len(self)} images")
        i = i % len(self)
        image = self.images[i].float().div_(255.0).unsqueeze(0)
        if self.channels == 3:
            image = image.expand(3, -1, -1).contiguous()
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return image, {"boxes": self.boxes[lo:hi].clone(), "labels": self.labels[lo:hi].clone()}

    def __repr__(self) -> str:
        s = self.spec
        return (f"DigitsDetection(split={s.split!r}, images={len(self)}, objects="
                f"{len(self.labels)}, size={s.size}, channels={self.channels}, digits="
                f"{s.min_digit}-{s.max_digit}px, seed={s.seed})")


def detection_collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]):
    """``DataLoader`` collate function: ``(images [B, C, H, W], [target, …])``."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]
