"""Train a box detector (components/models/detection.py) on labeled images, and turn its
outputs into boxes. One function from top to bottom, every knob in :class:`DetectConfig`.

Images are square ``uint8 [N, S, S]`` (decoded at the model's input size); boxes are pixel
corners ``(x1, y1, x2, y2)`` in that ``S x S`` frame. Augmentation is the dihedral group
(flips and 90-degree turns), applied to image and boxes together: inspection images have no
"up", and a defect turned is still the same defect.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from components.models.detection import CenterNet, DetectorConfig, LossWeights, centernet_targets, decode, \
    detection_loss, detector_from_state
from components.models.resnet import ResNet
from components.models.vit import normalize_uint8
from components.training.device import autocast_for, pick_device
from components.training.optim import cosine_lr, param_groups


@dataclass(frozen=True)
class DetectConfig:
    """Every knob of detector training and decoding."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    backbone_lr_scale: float = 1.0  # < 1: a pretrained backbone moves slower than the new head
    weight_decay: float = 1e-4
    warmup: int = 50
    fine_stage: int = 2
    head_width: int = 64
    flips: bool = True
    turns: bool = True
    crop: int | None = None  # train on random crop x crop windows (the model is convolutional: it detects on
    # whole images); small defects keep their pixels while a step costs what a small image costs
    size_weight: float = 0.1
    max_detections: int = 100
    score_threshold: float = 0.01  # decoding keeps peaks above this; evaluation sweeps the rest
    nms_iou: float | None = 0.6
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.max_detections < 1:
            raise ValueError(f"steps, batch_size, max_detections must be >= 1 and lr > 0, got {self}")
        if self.crop is not None and self.crop < 8:
            raise ValueError(f"crop must be >= 8 px, got {self.crop}")
        if not 0 <= self.score_threshold < 1:
            raise ValueError(f"score_threshold must be in [0, 1), got {self.score_threshold}")

    def to_dict(self) -> dict:
        return asdict(self)


def flip_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
    """Boxes of an ``S x S`` image mirrored left-right (``image[:, ::-1]``)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], axis=1)


def turn_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
    """Boxes of an ``S x S`` image turned 90 degrees counter-clockwise (``np.rot90(image)``):
    the point (x, y) goes to (y, S - x)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack([b[:, 1], size - b[:, 2], b[:, 3], size - b[:, 0]], axis=1)


def augment(image: np.ndarray, boxes: np.ndarray, turns: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Image and boxes turned ``turns`` quarter turns counter-clockwise, then mirrored if ``flip``."""
    size = image.shape[-1]
    if image.shape[-2] != size:
        raise ValueError(f"box augmentation needs square images, got {image.shape}")
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    for _ in range(turns % 4):
        image, boxes = np.rot90(image), turn_boxes(boxes, size)
    if flip:
        image, boxes = image[:, ::-1], flip_boxes(boxes, size)
    return np.ascontiguousarray(image), boxes


def crop_window(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, top: int, left: int,
                size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``size x size`` window at (``top``, ``left``) and the boxes whose center lies in it,
    shifted into it and clipped to its edges (a box cut by the edge is still that defect)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 - left, (boxes[:, 1] + boxes[:, 3]) / 2 - top
    keep = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
    shifted = np.clip(boxes[keep] - np.array([left, top, left, top], np.float32), 0, size)
    return image[top:top + size, left:left + size], shifted, np.asarray(labels)[keep]


def _batch(images: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray], idx: np.ndarray,
           model: CenterNet, cfg: DetectConfig, rng: np.random.Generator | None) -> tuple[torch.Tensor, dict]:
    size, stride = images.shape[-1], model.stride
    window = cfg.crop if cfg.crop is not None and cfg.crop < size and rng is not None else size
    out = (-(-window // stride), -(-window // stride))
    pics, targets = [], []
    for i in idx:
        img, bx, lab = images[i], boxes[i], labels[i]
        if rng is not None:
            img, bx = augment(img, bx, int(rng.integers(4)) if cfg.turns else 0, bool(cfg.flips and rng.random() < 0.5))
        if window < size:
            top, left = (int(v) for v in rng.integers(0, size - window + 1, size=2))
            img, bx, lab = crop_window(img, bx, lab, top, left, window)
        pics.append(np.ascontiguousarray(img))
        targets.append(centernet_targets(bx, lab, model.cfg.num_classes, out, stride))
    x = normalize_uint8(torch.from_numpy(np.stack(pics)))
    return x, {k: torch.stack([t[k] for t in targets]) for k in targets[0]}


def train_detector(backbone: ResNet, images: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray],
                   num_classes: int, cfg: DetectConfig, progress: bool = True) -> tuple[CenterNet, dict]:
    """(trained detector, history) from images ``[N, S, S]``, per-image boxes ``[n_i, 4]`` and class
    indices ``[n_i]``; ``backbone``: a registered backbone's ResNet, or a fresh one (scratch)."""
    # data
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be uint8 [N, S, S], got {images.dtype} {images.shape}")
    if not len(images) == len(boxes) == len(labels) or len(images) == 0:
        raise ValueError(f"{len(images)} images, {len(boxes)} box lists and {len(labels)} label lists")
    if sum(len(b) for b in boxes) == 0:
        raise ValueError("no boxes to train a detector on")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)

    # model
    model = CenterNet(backbone, DetectorConfig(num_classes, cfg.fine_stage, cfg.head_width)).to(device)

    # optimizer: the backbone at backbone_lr_scale times the head's rate
    groups = param_groups(model, cfg.weight_decay,
                          lambda name: cfg.backbone_lr_scale if name.startswith("backbone.") else 1.0)
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    weights = LossWeights(size=cfg.size_weight)

    # loop
    history = {"loss": [], "heatmap": [], "size": [], "offset": []}
    started = time.monotonic()
    model.train()
    bar = tqdm(range(cfg.steps), desc="detector", disable=not progress, leave=False)
    for step in bar:
        lr = cosine_lr(step, cfg.steps, min(cfg.warmup, cfg.steps // 5), cfg.lr, cfg.lr * 0.01)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        idx = rng.choice(len(images), size=cfg.batch_size, replace=len(images) < cfg.batch_size)
        x, targets = _batch(images, boxes, labels, idx, model, cfg, rng)
        x, targets = x.to(device), {k: v.to(device) for k, v in targets.items()}
        with autocast_for(device):
            outputs = model(x)
        outputs = {k: v.float() for k, v in outputs.items()}
        loss, parts = detection_loss(outputs, targets, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        history["loss"].append(float(loss.detach()))
        for k, v in parts.items():
            history[k].append(v)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
    history["seconds"] = time.monotonic() - started
    return model.cpu().eval(), history


@torch.no_grad()
def predict_boxes(model: CenterNet, images: np.ndarray, cfg: DetectConfig, batch_size: int = 16,
                  progress: bool = False, with_features: bool = False):
    """Per image: ``boxes`` ``[n, 4]`` (pixels of the ``S x S`` input), ``scores``, ``labels``;
    with ``with_features`` also each image's embedding ``[N, D]`` (see :class:`CenterNet`)."""
    model.eval()
    out: list[dict[str, np.ndarray]] = []
    features: list[np.ndarray] = []
    for start in tqdm(range(0, len(images), batch_size), desc="detect", disable=not progress, leave=False):
        x = normalize_uint8(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])))
        outputs = model(x)
        out += decode(outputs, model.stride, cfg.max_detections, cfg.score_threshold, cfg.nms_iou,
                      image_size=images.shape[-1])
        features.append(outputs["embedding"].numpy())
    if with_features:
        return out, (np.concatenate(features) if features else np.zeros((0, model.cfg.head_width), np.float32))
    return out


@dataclass
class Detector:
    """A registered detector ready to run: the network, its classes, the square size it decodes
    images at, and how its outputs become boxes (recorded in its checkpoint)."""

    model: CenterNet
    classes: list[str]
    img_size: int
    decoding: dict

    @classmethod
    def from_state(cls, state: dict) -> "Detector":
        return cls(detector_from_state(state), list(state["classes"]), int(state["img_size"]),
                   dict(state.get("decoding") or {}))

    @property
    def config(self) -> DetectConfig:
        d = self.decoding
        return DetectConfig(max_detections=int(d.get("max_detections", 100)),
                            score_threshold=float(d.get("score_threshold", 0.01)), nms_iou=d.get("nms_iou", 0.6))

    @property
    def show_threshold(self) -> float:
        """The score from which a box counts as found: the threshold its F-score was reported at."""
        return float(self.decoding.get("report_score_threshold", 0.3))

    def detect(self, images: np.ndarray, with_features: bool = False):
        """:func:`predict_boxes` on images decoded at ``img_size`` (stretched)."""
        if images.ndim != 3 or images.shape[1:] != (self.img_size, self.img_size):
            raise ValueError(f"the detector takes [N, {self.img_size}, {self.img_size}] images, got {images.shape}")
        return predict_boxes(self.model, images, self.config, with_features=with_features)
