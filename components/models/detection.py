"""A dense one-stage box detector (CenterNet-style) on dlvm's ResNet or ViT backbone: the model,
its training targets, its two losses and the decoding of its outputs into boxes, in one module.

Why CenterNet: an object is its center point. The head predicts, on one feature map of
stride ``s``, a heat map per class whose peaks are object centers, and at every location the
box size and the sub-pixel offset of the center. No anchors to tune, no matching rules, and
decoding is a 3x3 max-pool and a top-k (no NMS needed; a class-wise NMS is still offered for
heavily overlapping boxes). Defects on inspection images are small, so the head works on a
fine map: the backbone's stages are merged top-down (a one-level FPN) at the resolution of
``fine_stage``. A ViT has one resolution, its patch grid; as in ViTDet's simple feature pyramid,
its last tokens, seen as a map, are upsampled by transposed convolutions into finer levels
(level 3: the patch grid, 2: twice as fine, 1: four times), and the head merges the levels from
``fine_stage`` on the same way. The ViT takes any input whose sides are multiples of its patch
(its position table is resized to the grid), so it trains on crops and detects whole images.

Losses, each a small module with its own test:

* :class:`FocalHeatmapLoss`: CenterNet's penalty-reduced focal loss; the target is a Gaussian
  bump per object (radius from the box size), so near misses are penalised less.
* :class:`CenterRegressionLoss`: L1 on size and offset, only at object centers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.models.backbones import build_backbone, config_from_dict, config_to_dict
from components.models.resnet import ResNet, ResNetConfig
from components.models.vit import VisionTransformer, ViTConfig


@dataclass(frozen=True)
class DetectorConfig:
    """The head on a backbone: ``num_classes`` heat maps at the resolution of ResNet stage
    ``fine_stage`` (1-based; a ViT's pyramid level, see the module doc), ``head_width``
    channels in the merged map and the heads."""

    num_classes: int
    fine_stage: int = 2
    head_width: int = 64

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"a detector needs at least one class, got {self.num_classes}")
        if self.fine_stage < 1 or self.head_width < 1:
            raise ValueError(f"fine_stage and head_width must be >= 1, got {self.fine_stage}, {self.head_width}")

    def to_dict(self) -> dict:
        return asdict(self)


DETECTOR_FAMILIES = ("resnet", "vit")  # the backbone families a detector is built on
VIT_LEVELS = 3  # a ViT's pyramid: its patch grid (level 3) and two finer levels from it


def backbone_stride(cfg: ResNetConfig | ViTConfig, stage: int) -> int:
    """Pixels per feature-map cell at the output of ResNet stage ``stage`` (1-based), or of a
    ViT's pyramid level ``stage`` (3: the patch grid, each level below twice as fine)."""
    if isinstance(cfg, ViTConfig):
        if not 1 <= stage <= VIT_LEVELS or cfg.patch_size % 2 ** (VIT_LEVELS - stage):
            raise ValueError(f"level {stage} outside this ViT's pyramid levels 1..{VIT_LEVELS} "
                             f"(finer than a pixel for {cfg.patch_size} px patches)")
        return cfg.patch_size // 2 ** (VIT_LEVELS - stage)
    if not 1 <= stage <= len(cfg.layers):
        raise ValueError(f"stage {stage} outside this ResNet's stages 1..{len(cfg.layers)}")
    return cfg.stem_stride * (2 if cfg.stem_pool else 1) * 2 ** (stage - 1)


def _upsampler(channels: int, factor: int) -> nn.Sequential:
    """``log2(factor)`` transposed 2x2 convolutions, halving the channels each time."""
    layers: list[nn.Module] = []
    while factor > 1:
        layers += [nn.ConvTranspose2d(channels, channels // 2, 2, stride=2), nn.BatchNorm2d(channels // 2), nn.GELU()]
        channels, factor = channels // 2, factor // 2
    return nn.Sequential(*layers)


class CenterNet(nn.Module):
    """Encoder (ResNet stages, or a ViT's simple pyramid) -> top-down merged map at ``fine_stage``
    -> heat map, size, offset."""

    def __init__(self, backbone: ResNet | VisionTransformer, cfg: DetectorConfig):
        super().__init__()
        if not isinstance(backbone, (ResNet, VisionTransformer)):
            raise TypeError(f"the detector needs a ResNet or ViT backbone, got a {type(backbone).__name__}")
        self.cfg, self.backbone = cfg, backbone
        self.stride = backbone_stride(backbone.cfg, cfg.fine_stage)
        # a ViT's finer levels, from the patch-grid map (a ResNet has its own stages: none)
        self.pyramid = nn.ModuleList()
        if isinstance(backbone, VisionTransformer):
            dim = backbone.cfg.embed_dim
            levels = range(cfg.fine_stage, VIT_LEVELS + 1)
            self.pyramid.extend(_upsampler(dim, 2 ** (VIT_LEVELS - level)) for level in levels)
            channels = [dim // 2 ** (VIT_LEVELS - level) for level in levels]
        else:
            expansion = 4 if backbone.cfg.bottleneck else 1
            channels = [w * expansion for w in backbone.cfg.widths][cfg.fine_stage - 1:]
        self.lateral = nn.ModuleList(nn.Conv2d(c, cfg.head_width, 1) for c in channels)
        self.smooth = nn.Sequential(nn.Conv2d(cfg.head_width, cfg.head_width, 3, padding=1), nn.BatchNorm2d(
            cfg.head_width), nn.ReLU(inplace=True))

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cfg.head_width, cfg.head_width, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(cfg.head_width, out, 1))

        self.heatmap, self.size, self.offset = head(cfg.num_classes), head(2), head(2)
        # a prior of 0.1 for "a center here" at the start: the focal loss does not drown in background
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - 0.1) / 0.1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalized images ``[B, C, H, W]`` -> ``heatmap`` logits ``[B, K, h, w]``, ``size``
        (box width, height in feature cells) and ``offset`` (center within its cell) ``[B, 2, h, w]``,
        and ``embedding`` ``[B, head_width]``: the merged map's mean over the image."""
        maps = self._maps(x)
        merged = self.lateral[-1](maps[-1])
        for lat, m in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            merged = lat(m) + F.interpolate(merged, size=m.shape[-2:], mode="nearest")
        merged = self.smooth(merged)
        # "embedding": the merged map averaged over the image, what the labeling queue's diversity
        # step compares images by (components/labeling/queue.py); training ignores it.
        return {"heatmap": self.heatmap(merged), "size": self.size(merged), "offset": self.offset(merged),
                "embedding": merged.mean(dim=(2, 3))}

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's maps from ``fine_stage`` on, finest first."""
        b = self.backbone
        if isinstance(b, VisionTransformer):
            grid = b.forward_map(x)
            return [up(grid) for up in self.pyramid]
        x = b.stem(x)
        maps = []
        for i, stage in enumerate(b.stages, start=1):
            x = stage(x)
            if i >= self.cfg.fine_stage:
                maps.append(x)
        return maps

    @property
    def input_multiple(self) -> int:
        """Image and crop sides must be multiples of this (a ViT's patch; 1 for a ResNet)."""
        return self.backbone.cfg.patch_size if isinstance(self.backbone, VisionTransformer) else 1


def detector_state(model: CenterNet, classes: list[str], img_size: int, decoding: dict) -> dict:
    """Everything needed to detect again, as a checkpoint dict (kind ``detector``); its
    ``backbone_config`` makes the trained encoder loadable as a backbone too."""
    if len(classes) != model.cfg.num_classes:
        raise ValueError(f"{len(classes)} class names for a {model.cfg.num_classes}-class detector")
    return {"kind": "detector", "method": "centernet", "backbone_config": config_to_dict(model.backbone.cfg),
            "detector_config": model.cfg.to_dict(), "state_dict": model.state_dict(), "classes": list(classes),
            "img_size": int(img_size), "decoding": dict(decoding)}


def detector_from_state(state: dict) -> CenterNet:
    """The detector a :func:`detector_state` checkpoint holds, in eval mode."""
    if state.get("kind") != "detector" or state.get("method") != "centernet":
        raise ValueError(f"not a centernet detector checkpoint (kind {state.get('kind')!r})")
    # detectors from before the ViT family record a ResNet config without a family
    backbone_cfg = config_from_dict({"family": "resnet", **dict(state["backbone_config"])})
    model = CenterNet(build_backbone(backbone_cfg), DetectorConfig(**dict(state["detector_config"])))
    model.load_state_dict(state["state_dict"])
    return model.eval()


# --- targets -------------------------------------------------------------------------


def gaussian_radius(width: float, height: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest center shift at which a box of this size still overlaps
    the true one by ``min_overlap`` IoU (the tightest of its three cases)."""
    a1, b1, c1 = 1, width + height, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4, 2 * (width + height), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (width + height), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def centernet_targets(boxes: np.ndarray, labels: np.ndarray, num_classes: int, out_size: tuple[int, int],
                      stride: int) -> dict[str, torch.Tensor]:
    """Training targets of one image: boxes ``[n, 4]`` (x1, y1, x2, y2 in input pixels) with
    class indices ``[n]`` -> ``heatmap`` ``[K, h, w]`` (a Gaussian peak of 1 at each center),
    and at each center cell ``size`` / ``offset`` ``[2, h, w]`` and ``mask`` ``[h, w]``."""
    h, w = out_size
    heat = np.zeros((num_classes, h, w), np.float32)
    size = np.zeros((2, h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    for (x1, y1, x2, y2), k in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(labels).reshape(-1)):
        bw, bh = (x2 - x1) / stride, (y2 - y1) / stride
        if bw <= 0 or bh <= 0:
            continue
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        r = max(0, int(gaussian_radius(math.ceil(bw), math.ceil(bh))))
        sigma = (2 * r + 1) / 6
        ys, xs = np.arange(max(0, iy - r), min(h, iy + r + 1)), np.arange(max(0, ix - r), min(w, ix + r + 1))
        g = np.exp(-((ys[:, None] - iy) ** 2 + (xs[None, :] - ix) ** 2) / (2 * sigma ** 2))
        region = heat[int(k), ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
        np.maximum(region, g, out=region)
        heat[int(k), iy, ix] = 1.0
        size[:, iy, ix] = (bw, bh)
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1.0
    return {"heatmap": torch.from_numpy(heat), "size": torch.from_numpy(size), "offset": torch.from_numpy(offset),
            "mask": torch.from_numpy(mask)}


# --- losses --------------------------------------------------------------------------


class FocalHeatmapLoss(nn.Module):
    """CenterNet's penalty-reduced pixel-wise focal loss, normalised by the number of objects:
    positives are the cells where the target is 1; every other cell is a negative whose weight
    ``(1 - target)^beta`` shrinks near a center."""

    def __init__(self, alpha: float = 2.0, beta: float = 4.0):
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
        pos = target.eq(1).float()
        pos_loss = -torch.log(p) * (1 - p) ** self.alpha * pos
        neg_loss = -torch.log(1 - p) * p ** self.alpha * (1 - target) ** self.beta * (1 - pos)
        return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


class CenterRegressionLoss(nn.Module):
    """L1 between predicted and true maps ``[B, 2, h, w]`` at object centers (``mask`` ``[B, h, w]``)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(1)
        return (F.l1_loss(pred, target, reduction="none") * m).sum() / (2 * m.sum()).clamp(min=1.0)


@dataclass(frozen=True)
class LossWeights:
    heatmap: float = 1.0
    size: float = 0.1
    offset: float = 1.0


def detection_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                   weights: LossWeights = LossWeights()) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the three terms, and each term for the log."""
    heat = FocalHeatmapLoss()(outputs["heatmap"], targets["heatmap"])
    size = CenterRegressionLoss()(outputs["size"], targets["size"], targets["mask"])
    offset = CenterRegressionLoss()(outputs["offset"], targets["offset"], targets["mask"])
    total = weights.heatmap * heat + weights.size * size + weights.offset * offset
    parts = {"heatmap": heat, "size": size, "offset": offset}
    return total, {k: float(v.detach()) for k, v in parts.items()}


# --- decoding ------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[n, m]`` of boxes ``[n, 4]`` and ``[m, 4]`` (x1, y1, x2, y2)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy class-wise non-maximum suppression, best score first."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    for i in order:
        same = [j for j in keep if labels[j] == labels[i]]
        if not same or box_iou(boxes[i:i + 1], boxes[same]).max() <= iou:
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)


@torch.no_grad()
def decode(outputs: dict[str, torch.Tensor], stride: int, max_detections: int = 100, score_threshold: float = 0.01,
           nms_iou: float | None = None, image_size: int | None = None) -> list[dict[str, np.ndarray]]:
    """Per image: ``boxes`` ``[n, 4]`` (input pixels), ``scores`` ``[n]``, ``labels`` ``[n]`` from the
    top-``max_detections`` heat-map peaks (cells that are the maximum of their 3x3 neighbourhood)
    above ``score_threshold``; then class-wise NMS at ``nms_iou`` when given."""
    heat = torch.sigmoid(outputs["heatmap"])
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    B, K, h, w = heat.shape
    k = min(max_detections, K * h * w)
    scores, flat = peaks.reshape(B, -1).topk(k)
    labels = torch.div(flat, h * w, rounding_mode="floor")
    cell = flat % (h * w)
    ys, xs = torch.div(cell, w, rounding_mode="floor"), cell % w
    results = []
    for i in range(B):
        size = outputs["size"][i, :, ys[i], xs[i]].clamp(min=0)
        off = outputs["offset"][i, :, ys[i], xs[i]]
        cx, cy = (xs[i] + off[0]) * stride, (ys[i] + off[1]) * stride
        bw, bh = size[0] * stride, size[1] * stride
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
        if image_size is not None:
            boxes = boxes.clamp(0, image_size)
        keep = scores[i] > score_threshold
        out = {"boxes": boxes[keep].numpy().astype(np.float32), "scores": scores[i][keep].numpy().astype(np.float32),
               "labels": labels[i][keep].numpy().astype(np.int64)}
        if nms_iou is not None and len(out["scores"]):
            kept = nms(out["boxes"], out["scores"], out["labels"], nms_iou)
            out = {name: v[kept] for name, v in out.items()}
        results.append(out)
    return results
