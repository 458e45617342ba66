"""Adapting a backbone to labels: four methods, from cheapest to most expensive.

* prototype: few-shot nearest class mean. Frozen features are L2-normalized, each class's
  prototype is the normalized mean of its normalized features, and a sample's logits are its
  cosine similarities to the prototypes divided by a temperature. No optimization and
  nothing to tune, so it is usable with a single label per class, where a probe's
  cross-validation has nothing to split.
* probe: features of the frozen encoder (extract once, cache, reuse for every label
  fraction), standardized, then an L2-regularized multinomial logistic regression solved
  exactly (L-BFGS, full batch); its L2 strength is picked by stratified cross-validation
  on the training labels unless given.
* finetune: the whole network trained with AdamW (or SGD with Nesterov momentum), a cosine
  schedule, layer-wise learning-rate decay on pretrained layers, label smoothing, stochastic
  depth and grayscale augmentations; the head starts from a linear probe (LP-FT), which keeps
  the first steps from wrecking the pretrained features. It trains to convergence: a
  stratified validation split carved from the *training* labels (``adapt`` never sees the
  test split) picks the best epoch by balanced accuracy and stops after ``patience`` epochs
  without progress; class imbalance is met by loss weights or a balanced sampler (or not:
  ``class_balance``); an EMA of the weights is optional; dihedral test-time augmentation
  (the 8 symmetries of the square, averaged) is recorded with the model and used whenever
  it predicts.
* lora: the encoder stays frozen; low-rank adapters on the attention projections of every
  block (:mod:`components.models.lora`) and the head are trained with the fine-tune's loop
  (AdamW, warmup + cosine, augmentations, LP-init head). A few hundred thousand trainable
  parameters instead of millions overfit less on few labels; after training the adapters
  are merged into the weights, so the result is a plain classifier like the others.

* svm: a linear SVM (squared hinge, one-vs-rest, scikit-learn's liblinear) on the frozen,
  unstandardized features of every training image under each test-time view (``tta``), so
  it learns what it will be asked. On a descriptor backbone, whose features are an RBF
  kernel's Nystrom map, it is an RBF-SVM on VLAD-encoded dense descriptors (the kernel's
  landmarks first redrawn from the training images' VLAD vectors, the span an SVM's solution
  lies in): on ELPV the strongest model measured on 2 CPU cores (docs/BENCHMARKS.md). Its logits are the SVM's
  decision values: they rank well, their softmax is not calibrated. With ``novelty_class``
  (a descriptor backbone only) the features gain position-aware novelty statistics against
  a bank of that class's training images (components/models/descriptors.py:
  :class:`PositionNovelty`): VLAD's sums dilute one thin crack among thousands of
  descriptors; the distance to what normal images show at the same place does not.

Every method works on every backbone family (components/models/backbones.py) except LoRA,
which adapts attention projections and so needs a ViT, and fine-tuning, which needs a
network trained by gradient (not a descriptor backbone).

A :class:`Classifier` (encoder + feature standardization + linear head, optionally on
L2-normalized features for prototypes) is what every method produces; ``state()`` /
``from_state()`` turn it into a plain dict for checkpoints, in one format for every method.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from components.models.backbones import (
    BackboneConfig,
    build_backbone,
    checkpoint_config,
    config_to_dict,
    family_of,
    load_backbone_weights,
)
from components.models.descriptors import fit_novelty_projection, fit_position_novelty
from components.models.lora import check_lora_args, inject_lora, merge_lora
from components.models.vit import normalize_uint8
from components.training.augment import TTA_VIEWS, Augment, augment_batch
from components.training.device import autocast_for, pick_device
from components.training.optim import cosine_lr, param_groups

PROBE_L2_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
METHODS = ("probe", "finetune", "lora", "prototype", "svm")
TRAINED_METHODS = ("finetune", "lora")  # train the network: minutes a run on CPU, budgeted as such
OPTIMIZERS = ("adamw", "sgd")
CLASS_BALANCE = ("none", "loss", "sampler", "auto")
TTA = tuple(TTA_VIEWS)  # none, flips, dihedral
CLASS_OFFSETS = ("none", "macro_f1", "balanced_accuracy", "accuracy")  # "none" or the metric they are fitted for
# Validation needs enough examples to rank epochs: below these it is skipped (and recorded so).
MIN_VAL_PER_CLASS, MIN_TRAIN_FOR_VAL = 2, 40


@dataclass
class AdaptConfig:
    """Every knob of adaptation.

    ``weight_decay`` is AdamW's (fine-tune, LoRA); the probe's L2 strength is ``probe_l2``
    (``None``: chosen by ``probe_folds``-fold cross-validation over ``PROBE_L2_GRID``).
    The training knobs (epochs ... augment, max_seconds) are shared by fine-tune and LoRA;
    LoRA uses no layer decay (its adapters are all new parameters), nor does a backbone
    trained from scratch (no pretrained layer to protect).

    Convergence knobs (fine-tune and LoRA): ``val_fraction`` of the training labels
    (stratified) is held out to choose the best epoch (0: train on all, keep the last);
    ``patience`` > 0 stops after that many epochs without a better validation score.
    ``class_balance``: ``loss`` (class weights: square root of the inverse frequency, at most
    10x apart, :func:`class_loss_weights`), ``sampler`` (each class
    drawn equally often), ``none``, or ``auto`` (loss weights when the rarest class is at
    least 3x rarer than the commonest and there are fewer than 10,000 labels; on large sets
    reweighting cost macro-F1, see docs/TRAINING.md). ``ema_decay`` > 0 keeps an exponential
    moving average of the weights and uses it (for validation and as the result).
    ``tta``: ``dihedral`` averages predictions over the 8 flips/quarter turns whenever the
    classifier predicts (only where orientation carries no meaning), ``flips`` over the 4 that
    keep the axes (mirror images, half turn: where horizontal and vertical differ, as a solar
    cell's busbars and fingers do). The svm method also trains on these views.
    ``class_offsets``: a metric (the gate's, usually) for which per-class logit offsets are
    fitted on the validation split after training and folded into the head's bias
    (components/training/class_offsets.py); ``none`` keeps the plain argmax.
    """

    method: str = "probe"  # one of METHODS
    epochs: int = 10
    lr: float = 1e-3  # fine-tune peak lr of the head; block i gets lr * layer_decay ** (depth - i)
    batch_size: int = 64
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    warmup_epochs: float = 1.0
    optimizer: str = "adamw"  # adamw | sgd (Nesterov momentum)
    momentum: float = 0.9  # SGD only
    val_fraction: float = 0.0
    patience: int = 0
    class_balance: str = "none"
    ema_decay: float = 0.0
    tta: str = "none"
    class_offsets: str = "none"
    lp_init: bool = True  # fine-tune starts from a probe head
    augment: Augment = field(default_factory=Augment)
    probe_l2: float | None = None
    probe_folds: int = 5
    lora_rank: int = 8
    lora_alpha: float = 16.0  # the update is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0  # on the adapters' input only
    lora_proj: bool = False  # adapt attn.proj as well as the fused attn.qkv
    prototype_temperature: float = 0.1  # cosine similarities / temperature = logits
    svm_c: float = 10.0  # the svm method's C (ELPV, Nystrom features: 10 beat 1, 3 and 30; docs/BENCHMARKS.md)
    novelty_class: int | None = None  # svm on a descriptor backbone: the normal class, whose images make the bank
    seed: int = 0
    device: str = "auto"
    max_seconds: float | None = None  # hard stop for fine-tuning (the schedule is not shortened)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        check_lora_args(self.lora_rank, self.lora_alpha, self.lora_dropout)
        if not self.svm_c > 0:
            raise ValueError(f"svm_c must be > 0, got {self.svm_c!r}")
        if self.novelty_class is not None and (self.method != "svm" or self.novelty_class < 0):
            raise ValueError(f"novelty_class (the normal class's index, >= 0) goes with the svm method; got "
                             f"{self.novelty_class!r} with {self.method}")
        if not self.prototype_temperature > 0:
            raise ValueError(f"prototype_temperature must be > 0, got {self.prototype_temperature!r}")
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS),
                                     ("class_balance", self.class_balance, CLASS_BALANCE), ("tta", self.tta, TTA),
                                     ("class_offsets", self.class_offsets, CLASS_OFFSETS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {self.val_fraction!r}")
        if self.patience < 0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"patience must be >= 0 and ema_decay in [0, 1), got {self.patience}, {self.ema_decay}")

    def to_dict(self) -> dict:
        return asdict(self)


def novelty_class_index(good_class: str, classes: list[str], methods: list[str] | tuple[str, ...]) -> int:
    """The index of ``good_class`` for ``AdaptConfig.novelty_class``, checked before anything runs:
    a class of the labels, and the svm among ``methods`` (the only method that takes a bank)."""
    if good_class not in classes:
        raise ValueError(f"good class {good_class!r} is not a class of the labels (classes: {', '.join(classes)})")
    if "svm" not in methods:
        raise ValueError(f"a good class gives the svm on a descriptor backbone its novelty bank; the methods here "
                         f"are {', '.join(methods)}")
    return list(classes).index(good_class)


# ------------------------------------------------------------------------------ building blocks


def build_encoder(backbone_cfg: BackboneConfig, state: dict | None, seed: int = 0) -> torch.nn.Module:
    """An encoder of either family with ``state`` loaded (ours, timm, MAE, HF or torchvision
    keys), or randomly initialized from ``seed`` when ``state`` is ``None`` (the "scratch" backbone)."""
    encoder = build_backbone(backbone_cfg, seed=seed)
    if state is not None:
        load_backbone_weights(encoder, state)
    return encoder


def _check_images(images: np.ndarray, img_size: int) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
    if images.shape[1:] != (img_size, img_size):
        raise ValueError(f"images are {images.shape[1:]}, the encoder expects {img_size}px squares")


# a batch's working memory grows with its pixels (a descriptor backbone holds ~20 float maps of each
# image): 256 ELPV cells of 300 px a batch took a process's peak from 6 to 10 GB
# (docs/BENCHMARKS.md); small images keep theirs. Every inference loop below takes its batches from it
MAX_BATCH_PIXELS = 64 * 300 * 300


def batch_for(batch_size: int, image_shape: tuple[int, ...]) -> int:
    """``batch_size``, or fewer images when that many of ``image_shape`` (``[..., H, W]``) would pass
    :data:`MAX_BATCH_PIXELS`; at least one."""
    return max(1, min(batch_size, MAX_BATCH_PIXELS // max(1, image_shape[-2] * image_shape[-1])))


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, images: np.ndarray, batch_size: int = 256, device: str = "auto") -> np.ndarray:
    """Pooled features ``float32 [N, D]`` of uint8 images ``[N, H, W]`` (encoder in eval mode)."""
    _check_images(images, encoder.cfg.img_size)
    dev = pick_device(device)
    was_training = encoder.training
    encoder.to(dev).eval()
    batch_size = batch_for(batch_size, images.shape)
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize_uint8(torch.from_numpy(images[i : i + batch_size]).to(dev))
        with autocast_for(dev):
            out.append(encoder.forward_pool(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, encoder.num_features), np.float32)


@dataclass
class LinearHead:
    """A linear classifier on standardized features: ``logits = z @ weight.T + bias`` with
    ``z = (f - mean) / std``, L2-normalized to unit length when ``normalize`` (prototypes)."""

    weight: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    l2: float = 0.0
    normalize: bool = False

    def logits(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float32) - self.mean) / self.std
        if self.normalize:
            z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return z @ self.weight.T + self.bias

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "LinearHead":
        arr = lambda v: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v, np.float32)  # noqa: E731
        return cls(arr(d["weight"]), arr(d["bias"]), arr(d["mean"]), arr(d["std"]), float(d.get("l2", 0.0)),
                   bool(d.get("normalize", False)))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_proba_from_features(head: LinearHead, features: np.ndarray) -> np.ndarray:
    """Class probabilities ``[N, C]`` of a probe or prototype head on cached features."""
    return _softmax(head.logits(features).astype(np.float64))


def _logreg(z: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, init=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, mean cross-entropy + l2/2 * |W|^2, by L-BFGS in float64.

    ``init`` (W, b) warm-starts it: along a path of decreasing l2 each fit starts close to its
    solution, which keeps the weakly regularized (slow to converge) fits cheap.
    """
    W0, b0 = init if init is not None else (torch.zeros(num_classes, z.shape[1], dtype=torch.float64), torch.zeros(num_classes, dtype=torch.float64))
    W, b = W0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=100, tolerance_grad=1e-5, tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ W.T + b, y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def _stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id per sample: each class shuffled and dealt round-robin over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), np.int64)
    start = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + start) % k
        start += len(idx)  # continue dealing where the last class stopped: balanced fold sizes
    return fold


def fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, cfg: AdaptConfig) -> LinearHead:
    """Fit a linear probe on (frozen) features; deterministic."""
    # Hundreds of tiny matmuls: one thread is as fast, and immune to oversubscribed cores
    # (OpenMP threads spinning against other processes made the same fit 10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_probe(features, labels, num_classes, cfg)
    finally:
        torch.set_num_threads(threads)


def _fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, cfg: AdaptConfig) -> LinearHead:
    X = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise ValueError(f"features {tuple(X.shape)} and labels {tuple(y.shape)} do not match")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
    mean, std = X.mean(0), X.std(0, unbiased=False).clamp_min(1e-6)
    Z = (X - mean) / std

    l2 = cfg.probe_l2
    if l2 is None:
        k = min(cfg.probe_folds, len(y) // 4)
        if k >= 2:
            fold = torch.as_tensor(_stratified_folds(y.numpy(), k, cfg.seed))
            grid = sorted(PROBE_L2_GRID, reverse=True)  # strong -> weak, warm-started
            scores = [0] * len(grid)
            for f in range(k):
                tr, va = fold != f, fold == f
                # standardize with the training folds only, as the final fit will
                m, s = X[tr].mean(0), X[tr].std(0, unbiased=False).clamp_min(1e-6)
                ztr, zva = (X[tr] - m) / s, (X[va] - m) / s
                init = None
                for i, cand in enumerate(grid):
                    init = _logreg(ztr, y[tr], num_classes, cand, init)
                    scores[i] += int(((zva @ init[0].T + init[1]).argmax(1) == y[va]).sum())
            best = max(scores)
            # ties go to the strongest regularization (the simpler model)
            l2 = max(c for c, s in zip(grid, scores) if s == best)
        else:
            l2 = 1e-2
    W, b = _logreg(Z, y, num_classes, l2)
    f32 = lambda t: t.numpy().astype(np.float32)  # noqa: E731
    return LinearHead(f32(W), f32(b), f32(mean), f32(std), float(l2))


def _every_class_labeled(features: np.ndarray, labels: np.ndarray, num_classes: int, method: str,
                         dtype) -> tuple[np.ndarray, np.ndarray]:
    """(features as ``dtype``, labels as int64), checked: one label per row, every label in range
    and every class with at least one example (a head with a class it never saw is wrong silently)."""
    X = np.asarray(features, dtype)
    y = np.asarray(labels, np.int64)
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise ValueError(f"features {X.shape} and labels {y.shape} do not match")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    missing = sorted(set(range(num_classes)) - set(y.tolist()))
    if missing:
        raise ValueError(f"{method} needs at least one example of every class; none of class(es) {missing}")
    return X, y


def fit_prototypes(features: np.ndarray, labels: np.ndarray, num_classes: int, cfg: AdaptConfig) -> LinearHead:
    """Nearest-class-mean head on (frozen) features: cosine similarity to each class's
    prototype over ``cfg.prototype_temperature``. Every class needs at least one example:
    a class without one has no prototype, and a made-up one would be silently never (or
    always) predicted."""
    X, y = _every_class_labeled(features, labels, num_classes, "prototype", np.float64)
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    Z = unit(X)
    protos = unit(np.stack([Z[y == c].mean(0) for c in range(num_classes)]))
    D = X.shape[1]
    return LinearHead((protos / cfg.prototype_temperature).astype(np.float32), np.zeros(num_classes, np.float32),
                      np.zeros(D, np.float32), np.ones(D, np.float32), 0.0, normalize=True)


def fit_svm(features: np.ndarray, labels: np.ndarray, num_classes: int, cfg: AdaptConfig) -> LinearHead:
    """A linear SVM head (one-vs-rest, squared hinge, ``cfg.svm_c``) on unstandardized features;
    deterministic. Every class needs an example (one-vs-rest has nothing to separate otherwise)."""
    from sklearn.svm import LinearSVC

    X, y = _every_class_labeled(features, labels, num_classes, "svm", np.float32)
    svm = LinearSVC(C=cfg.svm_c, dual=True, max_iter=5000, random_state=cfg.seed).fit(X, y)
    weight, bias = svm.coef_.astype(np.float32), np.atleast_1d(svm.intercept_).astype(np.float32)
    if num_classes == 2:  # one decision value d for class 1: logits (-d/2, d/2) rank the same
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    D = X.shape[1]
    return LinearHead(weight, bias, np.zeros(D, np.float32), np.ones(D, np.float32), 1.0 / cfg.svm_c)


# ------------------------------------------------------------------------------ classifier


class Classifier(nn.Module):
    """Encoder -> pooled features -> standardization (-> L2 normalization) -> linear head.

    Carries what prediction must reproduce: ``preprocess`` (how raw images were decoded, a
    plain dict, see components/data/images.py) and ``tta`` (test-time augmentation);
    ``training`` is the fine-tune's record (validation scores per epoch, the chosen epoch).
    """

    def __init__(self, backbone_cfg: BackboneConfig, num_classes: int, method: str = "probe",
                 classes: list[str] | None = None, normalize_features: bool = False, tta: str = "none",
                 preprocess: dict | None = None):
        super().__init__()
        self.backbone_cfg, self.num_classes, self.method = backbone_cfg, num_classes, method
        self.classes = list(classes) if classes is not None else None
        self.normalize_features = bool(normalize_features)  # a plain flag, not a buffer: old state dicts still load
        self.tta = tta
        self.preprocess = dict(preprocess) if preprocess else None
        self.training_log: dict = {}
        self.encoder = build_backbone(backbone_cfg)
        dim = self.encoder.num_features
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))
        self.head = nn.Linear(dim, num_classes)

    @property
    def vit_cfg(self) -> BackboneConfig:  # the name from before the ResNet family
        return self.backbone_cfg

    @property
    def input_spec(self):
        """How images must be decoded for this model: its ``Preprocess`` (bicubic, stretch at the
        backbone's size for models saved before preprocessing was recorded)."""
        from components.data.images import Preprocess

        return Preprocess.from_dict(self.preprocess) if self.preprocess else Preprocess(self.backbone_cfg.img_size)

    def set_head(self, head: LinearHead) -> None:
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(head.weight))
            self.head.bias.copy_(torch.from_numpy(head.bias))
            self.feat_mean.copy_(torch.from_numpy(head.mean))
            self.feat_std.copy_(torch.from_numpy(head.std))
        self.normalize_features = head.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images ``[B, 1, H, W]`` -> logits ``[B, C]``."""
        return self.logits_from_pooled(self.encoder.forward_pool(x))

    def logits_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The encoder's pooled features ``[B, D]`` -> logits ``[B, C]``."""
        z = (pooled - self.feat_mean) / self.feat_std
        if self.normalize_features:
            z = F.normalize(z.float(), dim=-1, eps=1e-12)
        return self.head(z)

    def state(self) -> dict:
        """Plain dict for :func:`components.models.checkpoint.save_checkpoint`."""
        return {
            "kind": "classifier",
            "method": self.method,
            "backbone_config": config_to_dict(self.backbone_cfg),
            "num_classes": self.num_classes,
            "classes": self.classes,
            "normalize_features": self.normalize_features,
            "tta": self.tta,
            "preprocess": self.preprocess,
            "training": self.training_log,
            "state_dict": {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> "Classifier":
        if state.get("kind") != "classifier":
            raise ValueError(f"not a classifier checkpoint (kind={state.get('kind')!r})")
        clf = cls(checkpoint_config(state), int(state["num_classes"]), state.get("method", "probe"),
                  state.get("classes"), bool(state.get("normalize_features", False)), state.get("tta") or "none",
                  state.get("preprocess"))
        clf.training_log = dict(state.get("training") or {})
        clf.load_state_dict(state["state_dict"])
        return clf.eval()


def pooled_views(encoder: nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    """``[V, B, D]``: the pooled features of each of ``tta``'s views of the batch ``x`` (one
    descriptor pass for all of them on a descriptor backbone, which permutes instead of recomputing)."""
    views = TTA_VIEWS[tta]
    if hasattr(encoder, "forward_pool_views") and len(views) > 1:
        return encoder.forward_pool_views(x, views)
    return torch.stack([encoder.forward_pool(v(x)) for v in views])


@torch.no_grad()
def extract_view_features(encoder: nn.Module, images: np.ndarray, tta: str, batch_size: int = 64,
                          device: str = "auto", progress: bool = False, pool=pooled_views) -> torch.Tensor:
    """``float32 [V, N, D]`` (on the CPU): ``pool(encoder, batch, tta)`` of uint8 images ``[N, H, W]``,
    by default the pooled features under each of ``tta``'s views."""
    _check_images(images, encoder.cfg.img_size)
    dev = pick_device(device)
    encoder.to(dev).eval()
    batch_size = batch_for(batch_size, images.shape)
    out = [pool(encoder, normalize_uint8(torch.from_numpy(images[i: i + batch_size]).to(dev)), tta).float().cpu()
           for i in tqdm(range(0, len(images), batch_size), desc=f"features ({tta} views)", disable=not progress,
                         leave=False)]
    return torch.cat(out, 1) if out else torch.zeros((len(TTA_VIEWS[tta]), 0, encoder.num_features))


@torch.no_grad()
def predict_with_features(clf: Classifier, images: np.ndarray, batch_size: int = 256,
                          device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``float32 [N, C]`` and the encoder's pooled features
    ``float32 [N, D]`` (what the head sees, before standardization) for uint8 images ``[N, H, W]``,
    ``batch_size`` images at a time (fewer for large images: :func:`batch_for`).
    With ``clf.tta`` other than ``none`` both are averages over its views of each image."""
    _check_images(images, clf.backbone_cfg.img_size)
    dev = pick_device(device)
    clf.to(dev).eval()
    batch_size = batch_for(batch_size, images.shape)
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        x = normalize_uint8(torch.from_numpy(images[i : i + batch_size]).to(dev))
        with autocast_for(dev):
            pooled = pooled_views(clf.encoder, x, clf.tta)  # [V, B, D]
            logits = clf.logits_from_pooled(pooled.flatten(0, 1)).unflatten(0, pooled.shape[:2])
        probs.append(torch.softmax(logits.float(), dim=-1).mean(0).cpu())
        feats.append(pooled.float().mean(0).cpu())
    if not probs:
        return np.zeros((0, clf.num_classes), np.float32), np.zeros((0, clf.encoder.num_features), np.float32)
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()


def predict_proba(clf: Classifier, images: np.ndarray, batch_size: int = 256, device: str = "auto") -> np.ndarray:
    """Class probabilities ``float32 [N, C]`` for uint8 images ``[N, H, W]``."""
    return predict_with_features(clf, images, batch_size, device)[0]


# ------------------------------------------------------------------------------ adapt


def _layer_id(name: str, depth: int, family: str = "vit") -> int:
    """0 for the stem/embeddings, i + 1 for block (ViT) or stage (ResNet) i, depth + 1 for the
    final norm and the head."""
    name = name.removeprefix("encoder.")
    if family == "resnet":
        if name.startswith(("conv1.", "bn1.")):
            return 0
        if name.startswith("layer"):
            return int(name.split(".")[0].removeprefix("layer"))
        return depth + 1
    if name.startswith(("patch_embed", "cls_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into ``labels``: a stratified ``fraction`` of every class held out
    (at least ``MIN_VAL_PER_CLASS`` of a class that has twice that many). Empty val when
    ``fraction`` is 0 or the set is too small to rank epochs."""
    labels = np.asarray(labels)
    everything = np.arange(len(labels))
    if fraction <= 0 or len(labels) < MIN_TRAIN_FOR_VAL:
        return everything, everything[:0]
    rng = np.random.default_rng(seed + 7919)  # its own stream: the split does not shift the training draws
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(MIN_VAL_PER_CLASS, int(round(fraction * len(idx)))) if len(idx) >= 2 * MIN_VAL_PER_CLASS else 0
        val.append(rng.permutation(idx)[:k])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(everything, val), val


def resolve_class_balance(cfg: AdaptConfig, labels: np.ndarray, num_classes: int) -> str:
    """``auto`` made concrete from the label counts (see :class:`AdaptConfig`)."""
    if cfg.class_balance != "auto":
        return cfg.class_balance
    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    imbalanced = len(present) > 1 and present.max() >= 3 * present.min()
    return "loss" if imbalanced and len(labels) < 10_000 else "none"


MAX_CLASS_WEIGHT_RATIO = 10.0


def class_loss_weights(counts: np.ndarray) -> np.ndarray:
    """Per-class loss weights for ``class_balance=loss``: the square root of the inverse
    frequency, capped at ``MAX_CLASS_WEIGHT_RATIO`` times the commonest class's weight (0 for
    absent classes). Plain inverse frequency collapsed fine-tuning to the rarest class on
    WM-811K's train_1 (one Near-full map weighted ~330x the None class: accuracy 0.012 vs 0.705
    unweighted, docs/BENCHMARKS.md)."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    if (counts > 0).any():
        floor = w[counts > 0].min()
        w = np.minimum(w, floor * MAX_CLASS_WEIGHT_RATIO)
    return w


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    recalls = [float((pred[y == c] == c).mean()) for c in range(num_classes) if (y == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


class WeightAverage:
    """Exponential moving average of a model's parameters and buffers (BatchNorm statistics
    included), with the usual warm-up: the decay at step t is min(decay, (1 + t) / (10 + t))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for k, v in model.state_dict().items():
            avg = self.state[k]
            if avg.is_floating_point():
                avg.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                avg.copy_(v)


@torch.no_grad()
def _score(model: Classifier, data: torch.Tensor, y: np.ndarray, batch_size: int, channels_last: bool) -> float:
    model.eval()
    preds = []
    for i in range(0, len(data), batch_size):
        x = normalize_uint8(data[i : i + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(x.device):
            preds.append(model(x).float().argmax(1).cpu())
    model.train()
    return balanced_accuracy(y, torch.cat(preds).numpy(), model.num_classes)


def adapt(
    backbone_cfg: BackboneConfig,
    backbone_state: dict | None,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cfg: AdaptConfig,
    progress: bool = True,
    preprocess: dict | None = None,
) -> Classifier:
    """Train a classifier for ``labels`` (ints in ``[0, num_classes)``) on uint8 images ``[N, H, W]``.

    ``backbone_state`` None means a randomly initialized encoder (seeded by ``cfg.seed``).
    Only training labels come in: the validation split that picks the best epoch is carved
    from them. ``preprocess`` (how the images were decoded) is stored with the classifier.
    """
    _check_images(images, backbone_cfg.img_size)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    family = family_of(backbone_cfg)
    if cfg.method == "lora" and family != "vit":
        raise ValueError(f"lora adapts a ViT's attention projections; a {family} backbone takes probe, "
                         "finetune, svm or prototype")
    if cfg.method in TRAINED_METHODS and family == "descriptor":
        raise ValueError(f"{cfg.method} trains a network by gradient; a descriptor backbone is fitted, not trained: "
                         "it takes svm, probe or prototype")
    if family == "descriptor" and backbone_cfg.novelty_bank:
        raise ValueError("this descriptor backbone already carries a novelty bank (a classifier's encoder): "
                         "adapt from the fitted backbone")
    normal = None
    if cfg.novelty_class is not None:
        if family != "descriptor" or not 0 <= cfg.novelty_class < num_classes:
            raise ValueError(f"novelty_class {cfg.novelty_class} needs a descriptor backbone and a class index below "
                             f"{num_classes} (got a {family} backbone)")
        normal = labels == cfg.novelty_class
        if normal.sum() < 2:
            raise ValueError(f"the novelty bank needs at least 2 training images of class {cfg.novelty_class}, "
                             f"got {int(normal.sum())}")
    device = pick_device(cfg.device)
    encoder = build_encoder(backbone_cfg, backbone_state, cfg.seed)
    torch.manual_seed(cfg.seed)  # head init, stochastic depth
    clf_cfg = backbone_cfg if normal is None else replace(backbone_cfg, novelty_bank=int(normal.sum()))
    clf = Classifier(clf_cfg, num_classes, cfg.method,
                     tta=cfg.tta if cfg.method in ("finetune", "lora", "svm") else "none", preprocess=preprocess)
    # strict unless a novelty bank is added: the fitted backbone has none, fit_position_novelty fills it
    clf.encoder.load_state_dict(encoder.state_dict(), strict=normal is None)

    if cfg.method == "prototype":
        feats = extract_features(clf.encoder, images, device=cfg.device)
        clf.set_head(fit_prototypes(feats, labels, num_classes, cfg))
        return clf.eval()
    if cfg.method == "svm":  # trained on every view it will average over when predicting
        if family == "descriptor":  # the kernel's landmarks are redrawn from the training images first
            projected = []  # with a bank to fit: each batch's descriptors on the novelty directions
            if normal is not None:
                fit_novelty_projection(clf.encoder, images[normal])

            def vlads_and_projection(enc, x, tta):  # one descriptor pass serves both
                d = enc.describe(x.float())
                if normal is not None:
                    projected.append([p.cpu() for p in enc.novelty.project(d)])
                return enc.vlad_views(x, TTA_VIEWS[tta], d)
            vlads = extract_view_features(clf.encoder, images, cfg.tta, device=cfg.device, progress=progress,
                                          pool=vlads_and_projection)
            clf.encoder.cpu()
            new = clf.encoder.set_landmarks(vlads.flatten(0, 1), cfg.seed)
            clf.training_log = {"landmarks_from_training_images": new, "landmarks": backbone_cfg.landmarks}
            feats = torch.cat([clf.encoder.kernel_features(v) for v in vlads.split(1024, 1)], 1)
            if normal is not None:
                width = float(feats[0].pow(2).sum(1).mean().div(clf_cfg.num_novelty_features).sqrt())
                novelty = fit_position_novelty(clf.encoder, [torch.cat(p) for p in zip(*projected)], normal, width,
                                               progress=progress)
                feats = torch.cat([feats, novelty.expand(len(feats), -1, -1)], 2)
                clf.training_log["novelty_bank"] = int(normal.sum())
        else:
            feats = extract_view_features(clf.encoder, images, cfg.tta, device=cfg.device, progress=progress)
        feats = feats.numpy()
        clf.set_head(fit_svm(feats.reshape(-1, feats.shape[-1]), np.tile(labels, len(feats)), num_classes, cfg))
        return clf.eval()

    # ---- fine-tune / LoRA hold out a validation split first: the probe head must not see it
    train_rows, val_rows = (validation_split(labels, cfg.val_fraction, cfg.seed) if cfg.method != "probe"
                            else (np.arange(len(labels)), np.arange(0)))
    # LP-FT: a probe head first, except when fine-tuning from scratch (random features teach the
    # head nothing the first epoch would not); LoRA keeps the random encoder frozen, so it does need one.
    if cfg.method == "probe" or (cfg.lp_init and (backbone_state is not None or cfg.method == "lora")):
        feats = extract_features(clf.encoder, images[train_rows], device=cfg.device)
        clf.set_head(fit_probe(feats, labels[train_rows], num_classes, cfg))
    if cfg.method == "probe":
        return clf.eval()

    # ---- full fine-tune, or LoRA: the same loop, different trainable parameters
    depth = len(backbone_cfg.layers) if family == "resnet" else backbone_cfg.depth
    if cfg.method == "lora":
        # Freezes the encoder; only the adapters (B = 0: the model starts unchanged) and the head train.
        inject_lora(clf.encoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                    ("qkv", "proj") if cfg.lora_proj else ("qkv",))
        lr_scale = None  # every adapter is a new parameter: no pretrained layer to protect with a smaller lr
    elif backbone_state is None:
        lr_scale = None  # from scratch: no pretrained layer to protect
    else:
        lr_scale = lambda name: cfg.layer_decay ** (depth + 1 - _layer_id(name, depth, family))  # noqa: E731
    gen = torch.Generator().manual_seed(cfg.seed)
    clf.encoder.set_drop_path(cfg.drop_path)
    channels_last = family == "resnet"
    clf.to(device).train()
    if channels_last:
        clf.to(memory_format=torch.channels_last)
    data = torch.from_numpy(np.ascontiguousarray(images[train_rows])).to(device)
    y_train = labels[train_rows]
    targets = torch.from_numpy(y_train).to(device)
    val_data = torch.from_numpy(np.ascontiguousarray(images[val_rows])).to(device)
    y_val = labels[val_rows]
    n = len(y_train)
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    groups = param_groups(clf, cfg.weight_decay, lr_scale)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=device.type == "cuda")

    balance = resolve_class_balance(cfg, y_train, num_classes)
    counts = np.bincount(y_train, minlength=num_classes).astype(np.float64)
    class_weight = None
    if balance == "loss":
        w = class_loss_weights(counts)
        class_weight = torch.tensor(w / (w[y_train].mean()), dtype=torch.float32, device=device)
    sample_p = None
    if balance == "sampler":
        per_sample = 1.0 / counts[y_train]
        sample_p = torch.as_tensor(per_sample / per_sample.sum(), dtype=torch.float64)
    ema = WeightAverage(clf, cfg.ema_decay) if cfg.ema_decay > 0 else None
    scorer = copy.deepcopy(clf) if ema is not None and len(val_rows) else None

    log: dict = {"n_train": int(n), "n_val": int(len(val_rows)), "class_balance": balance,
                 "optimizer": cfg.optimizer, "ema_decay": cfg.ema_decay, "val_scores": []}
    best_score, best_state, best_epoch, since_best = -1.0, None, cfg.epochs, 0
    bar = tqdm(total=total, desc=cfg.method, disable=not progress, leave=False)
    t0 = time.perf_counter()
    step, stopped = 0, "epochs done"
    for epoch in range(cfg.epochs):
        if sample_p is not None:
            order = torch.multinomial(sample_p, n, replacement=True, generator=gen)
        else:
            order = torch.randperm(n, generator=gen)
        for j in range(steps_per_epoch):
            idx = order[j * batch_size : (j + 1) * batch_size].to(device)
            x = augment_batch(data[idx], cfg.augment, gen)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = cosine_lr(step, total, warmup, cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            with autocast_for(device):
                logits = clf(x)
            loss = F.cross_entropy(logits.float(), targets[idx], weight=class_weight,
                                   label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(clf)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{cfg.method} loss is {loss.item()} at step {step}; lower cfg.lr")
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch + 1)
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                stopped = "time budget"
                break
        if len(val_rows):
            model = clf
            if scorer is not None:
                scorer.load_state_dict(ema.state)
                model = scorer
            score = _score(model, val_data, y_val, 256, channels_last)
            log["val_scores"].append(round(score, 4))
            bar.set_postfix(val_bacc=f"{score:.3f}", epoch=epoch + 1)
            if score > best_score:
                best_score, best_epoch, since_best = score, epoch + 1, 0
                source = ema.state if ema is not None else clf.state_dict()
                best_state = {k: v.detach().clone() for k, v in source.items()}
            else:
                since_best += 1
            if cfg.patience and since_best >= cfg.patience:
                stopped = f"no better validation score for {cfg.patience} epochs"
                break
        if stopped == "time budget":
            break
    bar.close()
    if best_state is not None:
        clf.load_state_dict(best_state)
    elif ema is not None:
        clf.load_state_dict(ema.state)
    log.update({"epochs_run": epoch + 1, "best_epoch": best_epoch if best_state is not None else epoch + 1,
                "best_val_balanced_accuracy": round(best_score, 4) if best_state is not None else None,
                "stopped": stopped, "seconds": round(time.perf_counter() - t0, 1)})
    clf.training_log = log
    clf.encoder.set_drop_path(0.0)
    if cfg.method == "lora":
        merge_lora(clf.encoder)  # back to a plain ViT: same checkpoint format, no adapter code at inference
    clf = clf.cpu().eval()
    if channels_last:
        clf.to(memory_format=torch.contiguous_format)
    if cfg.class_offsets != "none":
        log.update(_fold_class_offsets(clf, images[val_rows], y_val, cfg))
    return clf


def _fold_class_offsets(clf: Classifier, val_images: np.ndarray, y_val: np.ndarray, cfg: AdaptConfig) -> dict:
    """Fit per-class logit offsets on the validation split (through the same prediction path,
    TTA included, that the model will use) and add them to the head's bias."""
    from components.training.class_offsets import MIN_VALIDATION, fit_class_offsets

    if len(y_val) < MIN_VALIDATION:
        return {"class_offsets": None, "class_offsets_skipped": f"{len(y_val)} validation labels (< {MIN_VALIDATION})"}
    proba = predict_proba(clf, val_images, device=cfg.device)
    offsets, before, after = fit_class_offsets(np.log(np.clip(proba, 1e-12, None)), y_val, clf.num_classes,
                                               cfg.class_offsets)
    with torch.no_grad():
        clf.head.bias += torch.from_numpy(offsets)
    # With TTA the offsets act on each view before the average, not on the average they were
    # fitted to: record the validation score the folded model really gets.
    from components.evaluation.metrics import METRICS

    folded = METRICS[cfg.class_offsets](y_val, predict_proba(clf, val_images, device=cfg.device).argmax(1),
                                        clf.num_classes)
    return {"class_offsets": [round(float(o), 2) for o in offsets], "class_offsets_metric": cfg.class_offsets,
            "val_before_offsets": round(before, 4), "val_fitted_offsets": round(after, 4),
            "val_with_offsets": round(float(folded), 4)}
