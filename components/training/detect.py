"""Train a box detector (components/models/detection.py) on labeled images, and turn its
outputs into boxes. One function from top to bottom, every knob in :class:`DetectConfig`.

A run with a ``checkpoint_path`` writes its whole training state there every
``checkpoint_every`` steps (and on SIGTERM / Ctrl-C, between steps); a rerun resumes from it
and ends with the weights of an uninterrupted run: each step's batch and augmentation come
from a generator seeded by ``(seed, step)``, so nothing but the step number has to be restored.

Images larger than the windows the detector was trained on can be detected window by window
(``tile``): overlapping ``tile x tile`` windows, each answering only for the boxes whose center
lies in its core (so a defect seen by two windows is kept once), boxes shifted back into the
image, then non-maximum suppression for boxes larger than the overlap.

Images are square ``uint8 [N, S, S]`` (decoded at the model's input size); boxes are pixel
corners ``(x1, y1, x2, y2)`` in that ``S x S`` frame. Augmentation is the dihedral group
(flips and 90-degree turns), applied to image and boxes together: inspection images have no
"up", and a defect turned is still the same defect.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from components.data.files import write_atomically
from components.models.checkpoint import save_checkpoint
from components.models.detection import (
    CenterNet,
    DetectorConfig,
    LossWeights,
    centernet_targets,
    decode,
    detection_loss,
    detector_from_state,
    nms,
)
from components.models.resnet import ResNet
from components.models.vit import VisionTransformer, normalize_uint8
from components.training.device import autocast_for, pick_device
from components.training.interrupts import checkpoint_then_stop, deferred_signals
from components.training.optim import cosine_lr, param_groups
from components.training.resume import checkpoint_due, read_resume_state

log = logging.getLogger(__name__)


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
    tile: int | None = None  # detect images larger than this in overlapping tile x tile windows
    tile_overlap: float = 0.25  # share of a window its neighbour sees too (a defect cut by one edge is whole in the next)
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 100  # steps between resume checkpoints (when a checkpoint path is given)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.max_detections < 1:
            raise ValueError(f"steps, batch_size, max_detections must be >= 1 and lr > 0, got {self}")
        if self.crop is not None and self.crop < 8:
            raise ValueError(f"crop must be >= 8 px, got {self.crop}")
        if self.tile is not None and self.tile < 8:
            raise ValueError(f"tile must be >= 8 px, got {self.tile}")
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
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


def boxes_fingerprint(images: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray]) -> str:
    """What a resume checkpoint was trained on: the images and every box and label."""
    h = hashlib.sha256(np.ascontiguousarray(images).data)
    for b, lab in zip(boxes, labels):
        h.update(np.ascontiguousarray(np.asarray(b, np.float32).reshape(-1, 4)).data)
        h.update(np.ascontiguousarray(np.asarray(lab, np.int64).reshape(-1)).data)
    return h.hexdigest()


def check_sides(model: CenterNet, size: int, cfg: DetectConfig) -> None:
    """Refuse, in one line, an image, crop or tile side the backbone cannot cut into patches."""
    m = model.input_multiple
    for what, side in (("image size", size), ("crop", cfg.crop), ("tile", cfg.tile)):
        if side is not None and side % m:
            raise ValueError(f"the {what} {side} px is not a multiple of the ViT backbone's {m} px patches")


def train_detector(backbone: ResNet | VisionTransformer, images: np.ndarray, boxes: list[np.ndarray],
                   labels: list[np.ndarray], num_classes: int, cfg: DetectConfig, progress: bool = True,
                   checkpoint_path: Path | str | None = None) -> tuple[CenterNet, dict]:
    """(trained detector, history) from images ``[N, S, S]``, per-image boxes ``[n_i, 4]`` and class
    indices ``[n_i]``; ``backbone``: a registered backbone's ResNet or ViT, or a fresh ResNet (scratch).
    ``checkpoint_path``: resume from it if it exists, write the training state to it as the run goes."""
    # data
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be uint8 [N, S, S], got {images.dtype} {images.shape}")
    if not len(images) == len(boxes) == len(labels) or len(images) == 0:
        raise ValueError(f"{len(images)} images, {len(boxes)} box lists and {len(labels)} label lists")
    if sum(len(b) for b in boxes) == 0:
        raise ValueError("no boxes to train a detector on")
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)

    # model
    model = CenterNet(backbone, DetectorConfig(num_classes, cfg.fine_stage, cfg.head_width)).to(device)
    check_sides(model, images.shape[-1], cfg)

    # optimizer: the backbone at backbone_lr_scale times the head's rate
    groups = param_groups(model, cfg.weight_decay,
                          lambda name: cfg.backbone_lr_scale if name.startswith("backbone.") else 1.0)
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    weights = LossWeights(size=cfg.size_weight)

    # resume: weights, optimizer and history; the batches need only the step number
    history: dict = {"loss": [], "heatmap": [], "size": [], "offset": []}
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    fingerprint = boxes_fingerprint(images, boxes, labels) if checkpoint_path else ""
    start = 0
    if checkpoint_path and checkpoint_path.exists():
        state = read_resume_state(checkpoint_path, cfg, fingerprint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), {k: list(v) for k, v in state["history"].items()}
        log.info("resuming detector training from step %d (%s)", start, checkpoint_path)

    def save_resume_state(step: int) -> None:
        write_atomically(checkpoint_path, save_checkpoint({
            "config": cfg.to_dict(), "images_sha256": fingerprint, "step": step, "history": history,
            "model": model.state_dict(), "optimizer": opt.state_dict()}), durable=True)

    # loop
    started = time.monotonic()
    model.train()
    bar = tqdm(total=cfg.steps, initial=start, desc="detector", disable=not progress, leave=False)
    with deferred_signals() as stop:
        for step in range(start, cfg.steps):
            if stop.pending:
                checkpoint_then_stop(stop, save_resume_state, len(history["loss"]), start, checkpoint_path)
            rng = np.random.default_rng([cfg.seed, step])
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
            bar.update(1)
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
            if checkpoint_due(checkpoint_path, cfg.checkpoint_every, step + 1, cfg.steps):
                save_resume_state(step + 1)
        if stop.pending:  # arrived during the last step
            checkpoint_then_stop(stop, save_resume_state, len(history["loss"]), start, checkpoint_path)
    bar.close()
    history["seconds"] = time.monotonic() - started
    history["resumed_from_step"] = start
    return model.cpu().eval(), history


def tile_origins(size: int, tile: int, overlap: float) -> list[int]:
    """Offsets along one side of windows of ``tile`` px that cover ``size`` px, neighbours sharing
    at least ``overlap`` of a window; the last window ends at the edge."""
    if tile >= size:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    return [*range(0, size - tile, stride), size - tile]


def tile_cores(origins: list[int], tile: int, size: int) -> list[tuple[float, float]]:
    """The part of the side each window answers for: from the middle of its overlap with the
    previous window to the middle of its overlap with the next. The parts tile the side, so a
    box is kept by the one window its center falls in, where (if it is no larger than the
    overlap) it is seen whole: no duplicates and no half boxes from a window's cut edge."""
    cuts = [(nxt + cur + tile) / 2 for cur, nxt in zip(origins, origins[1:])]
    return list(zip([0.0, *cuts], [*cuts, float(size)]))


def _windows(size: int, cfg: DetectConfig) -> list[tuple[int, int, tuple[float, float], tuple[float, float]]]:
    origins = tile_origins(size, cfg.tile, cfg.tile_overlap)
    cores = tile_cores(origins, cfg.tile, size)
    return [(top, left, rows, cols) for top, rows in zip(origins, cores) for left, cols in zip(origins, cores)]


def _merge_windows(found: list[dict[str, np.ndarray]], windows: list, cfg: DetectConfig) -> dict[str, np.ndarray]:
    """One image's boxes from its windows': shifted into the image, each kept by the window whose
    core holds its center, the best ``max_detections`` by score."""
    keep_boxes, keep_scores, keep_labels = [], [], []
    for det, (top, left, (r0, r1), (c0, c1)) in zip(found, windows):
        b = det["boxes"] + np.array([left, top, left, top], np.float32)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        inside = (cx >= c0) & (cx < c1) & (cy >= r0) & (cy < r1)
        keep_boxes.append(b[inside])
        keep_scores.append(det["scores"][inside])
        keep_labels.append(det["labels"][inside])
    boxes, scores, labels = np.concatenate(keep_boxes), np.concatenate(keep_scores), np.concatenate(keep_labels)
    if cfg.nms_iou is not None and len(boxes):  # a box larger than the overlap can still be found twice
        kept = nms(boxes, scores, labels, cfg.nms_iou)
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
    best = np.argsort(-scores, kind="stable")[:cfg.max_detections]
    return {"boxes": boxes[best], "scores": scores[best], "labels": labels[best]}


@torch.no_grad()
def predict_boxes(model: CenterNet, images: np.ndarray, cfg: DetectConfig, batch_size: int = 16,
                  progress: bool = False, with_features: bool = False):
    """Per image: ``boxes`` ``[n, 4]`` (pixels of the ``S x S`` input), ``scores``, ``labels``;
    with ``with_features`` also each image's embedding ``[N, D]`` (see :class:`CenterNet`; tiled:
    the mean over the windows). With ``cfg.tile`` below ``S``, each image is detected window by
    window (see the module doc)."""
    model.eval()
    size = images.shape[-1]
    check_sides(model, size, cfg)
    windows = _windows(size, cfg) if cfg.tile is not None and cfg.tile < size else None
    out: list[dict[str, np.ndarray]] = []
    features: list[np.ndarray] = []
    if windows is None:
        for start in tqdm(range(0, len(images), batch_size), desc="detect", disable=not progress, leave=False):
            x = normalize_uint8(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])))
            outputs = model(x)
            out += decode(outputs, model.stride, cfg.max_detections, cfg.score_threshold, cfg.nms_iou, image_size=size)
            features.append(outputs["embedding"].numpy())
    else:
        for image in tqdm(images, desc="detect (tiled)", disable=not progress, leave=False):
            crops = np.stack([image[top:top + cfg.tile, left:left + cfg.tile] for top, left, _, _ in windows])
            found, embeddings = [], []
            for start in range(0, len(crops), batch_size):
                outputs = model(normalize_uint8(torch.from_numpy(np.ascontiguousarray(crops[start:start + batch_size]))))
                found += decode(outputs, model.stride, cfg.max_detections, cfg.score_threshold, cfg.nms_iou,
                                image_size=cfg.tile)
                embeddings.append(outputs["embedding"].numpy())
            out.append(_merge_windows(found, windows, cfg))
            features.append(np.concatenate(embeddings).mean(0, keepdims=True))
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
                            score_threshold=float(d.get("score_threshold", 0.01)), nms_iou=d.get("nms_iou", 0.6),
                            tile=d.get("tile"), tile_overlap=float(d.get("tile_overlap", 0.25)))

    @property
    def show_threshold(self) -> float:
        """The score from which a box counts as found: the threshold its F-score was reported at."""
        return float(self.decoding.get("report_score_threshold", 0.3))

    def detect(self, images: np.ndarray, with_features: bool = False):
        """:func:`predict_boxes` on images decoded at ``img_size`` (stretched)."""
        if images.ndim != 3 or images.shape[1:] != (self.img_size, self.img_size):
            raise ValueError(f"the detector takes [N, {self.img_size}, {self.img_size}] images, got {images.shape}")
        return predict_boxes(self.model, images, self.config, with_features=with_features)
