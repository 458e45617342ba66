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
* finetune: the whole network trained with AdamW, layer-wise learning-rate decay, label
  smoothing, stochastic depth and grayscale augmentations; the head starts from a linear
  probe (LP-FT), which keeps the first steps from wrecking the pretrained features.
* lora: the encoder stays frozen; low-rank adapters on the attention projections of every
  block (:mod:`components.models.lora`) and the head are trained with the fine-tune's loop
  (AdamW, warmup + cosine, augmentations, LP-init head). A few hundred thousand trainable
  parameters instead of millions overfit less on few labels; after training the adapters
  are merged into the weights, so the result is a plain classifier like the others.

A :class:`Classifier` (encoder + feature standardization + linear head, optionally on
L2-normalized features for prototypes) is what all four produce; ``state()`` /
``from_state()`` turn it into a plain dict for checkpoints, in one format for every method.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from components.models.lora import check_lora_args, inject_lora, merge_lora
from components.models.vit import VisionTransformer, ViTConfig, normalize_uint8
from components.models.weight_mapping import load_pretrained_weights
from components.training.augment import Augment, augment_batch
from components.training.device import autocast_for, pick_device
from components.training.optim import cosine_lr, param_groups

PROBE_L2_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
METHODS = ("probe", "finetune", "lora", "prototype")


@dataclass
class AdaptConfig:
    """Every knob of adaptation.

    ``weight_decay`` is AdamW's (fine-tune, LoRA); the probe's L2 strength is ``probe_l2``
    (``None``: chosen by ``probe_folds``-fold cross-validation over ``PROBE_L2_GRID``).
    The training knobs (epochs ... augment, max_seconds) are shared by fine-tune and LoRA;
    LoRA uses no layer decay (its adapters are all new parameters).
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
    lp_init: bool = True  # fine-tune starts from a probe head
    augment: Augment = field(default_factory=Augment)
    probe_l2: float | None = None
    probe_folds: int = 5
    lora_rank: int = 8
    lora_alpha: float = 16.0  # the update is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0  # on the adapters' input only
    lora_proj: bool = False  # adapt attn.proj as well as the fused attn.qkv
    prototype_temperature: float = 0.1  # cosine similarities / temperature = logits
    seed: int = 0
    device: str = "auto"
    max_seconds: float | None = None  # hard stop for fine-tuning (the schedule is not shortened)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        check_lora_args(self.lora_rank, self.lora_alpha, self.lora_dropout)
        if not self.prototype_temperature > 0:
            raise ValueError(f"prototype_temperature must be > 0, got {self.prototype_temperature!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ building blocks


def build_encoder(vit_cfg: ViTConfig, state: dict | None, seed: int = 0) -> VisionTransformer:
    """An encoder with ``state`` loaded (ours, timm, MAE or HF keys), or randomly initialized
    from ``seed`` when ``state`` is ``None`` (the "scratch" backbone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = VisionTransformer(vit_cfg)
    if state is not None:
        load_pretrained_weights(encoder, state)
    return encoder


def _check_images(images: np.ndarray, img_size: int) -> None:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
    if images.shape[1:] != (img_size, img_size):
        raise ValueError(f"images are {images.shape[1:]}, the encoder expects {img_size}px squares")


@torch.no_grad()
def extract_features(encoder: VisionTransformer, images: np.ndarray, batch_size: int = 256, device: str = "auto") -> np.ndarray:
    """Pooled features ``float32 [N, D]`` of uint8 images ``[N, H, W]`` (encoder in eval mode)."""
    _check_images(images, encoder.cfg.img_size)
    dev = pick_device(device)
    was_training = encoder.training
    encoder.to(dev).eval()
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


def fit_prototypes(features: np.ndarray, labels: np.ndarray, num_classes: int, cfg: AdaptConfig) -> LinearHead:
    """Nearest-class-mean head on (frozen) features: cosine similarity to each class's
    prototype over ``cfg.prototype_temperature``. Every class needs at least one example:
    a class without one has no prototype, and a made-up one would be silently never (or
    always) predicted."""
    X = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise ValueError(f"features {X.shape} and labels {y.shape} do not match")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    missing = sorted(set(range(num_classes)) - set(y.tolist()))
    if missing:
        raise ValueError(f"prototype needs at least one example of every class; none of class(es) {missing}")
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    Z = unit(X)
    protos = unit(np.stack([Z[y == c].mean(0) for c in range(num_classes)]))
    D = X.shape[1]
    return LinearHead((protos / cfg.prototype_temperature).astype(np.float32), np.zeros(num_classes, np.float32),
                      np.zeros(D, np.float32), np.ones(D, np.float32), 0.0, normalize=True)


# ------------------------------------------------------------------------------ classifier


class Classifier(nn.Module):
    """Encoder -> pooled features -> standardization (-> L2 normalization) -> linear head."""

    def __init__(self, vit_cfg: ViTConfig, num_classes: int, method: str = "probe", classes: list[str] | None = None,
                 normalize_features: bool = False):
        super().__init__()
        self.vit_cfg, self.num_classes, self.method = vit_cfg, num_classes, method
        self.classes = list(classes) if classes is not None else None
        self.normalize_features = bool(normalize_features)  # a plain flag, not a buffer: old state dicts still load
        self.encoder = VisionTransformer(vit_cfg)
        self.register_buffer("feat_mean", torch.zeros(vit_cfg.embed_dim))
        self.register_buffer("feat_std", torch.ones(vit_cfg.embed_dim))
        self.head = nn.Linear(vit_cfg.embed_dim, num_classes)

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
            "vit_config": self.vit_cfg.to_dict(),
            "num_classes": self.num_classes,
            "classes": self.classes,
            "normalize_features": self.normalize_features,
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> "Classifier":
        if state.get("kind") != "classifier":
            raise ValueError(f"not a classifier checkpoint (kind={state.get('kind')!r})")
        clf = cls(ViTConfig.from_dict(dict(state["vit_config"])), int(state["num_classes"]), state.get("method", "probe"),
                  state.get("classes"), bool(state.get("normalize_features", False)))
        clf.load_state_dict(state["state_dict"])
        return clf.eval()


@torch.no_grad()
def predict_with_features(clf: Classifier, images: np.ndarray, batch_size: int = 256,
                          device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``float32 [N, C]`` and the encoder's pooled features
    ``float32 [N, D]`` (what the head sees, before standardization) for uint8 images ``[N, H, W]``."""
    _check_images(images, clf.vit_cfg.img_size)
    dev = pick_device(device)
    clf.to(dev).eval()
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        x = normalize_uint8(torch.from_numpy(images[i : i + batch_size]).to(dev))
        with autocast_for(dev):
            pooled = clf.encoder.forward_pool(x)
            logits = clf.logits_from_pooled(pooled)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        feats.append(pooled.float().cpu())
    if not probs:
        return np.zeros((0, clf.num_classes), np.float32), np.zeros((0, clf.vit_cfg.embed_dim), np.float32)
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()


def predict_proba(clf: Classifier, images: np.ndarray, batch_size: int = 256, device: str = "auto") -> np.ndarray:
    """Class probabilities ``float32 [N, C]`` for uint8 images ``[N, H, W]``."""
    return predict_with_features(clf, images, batch_size, device)[0]


# ------------------------------------------------------------------------------ adapt


def _layer_id(name: str, depth: int) -> int:
    """0 for embeddings, i + 1 for block i, depth + 1 for the final norm and the head."""
    name = name.removeprefix("encoder.")
    if name.startswith(("patch_embed", "cls_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def adapt(
    vit_cfg: ViTConfig,
    backbone_state: dict | None,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    cfg: AdaptConfig,
    progress: bool = True,
) -> Classifier:
    """Train a classifier for ``labels`` (ints in ``[0, num_classes)``) on uint8 images ``[N, H, W]``.

    ``backbone_state`` None means a randomly initialized encoder (seeded by ``cfg.seed``).
    """
    _check_images(images, vit_cfg.img_size)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    device = pick_device(cfg.device)
    encoder = build_encoder(vit_cfg, backbone_state, cfg.seed)
    torch.manual_seed(cfg.seed)  # head init, stochastic depth
    clf = Classifier(vit_cfg, num_classes, cfg.method)
    clf.encoder.load_state_dict(encoder.state_dict())

    if cfg.method == "prototype":
        feats = extract_features(clf.encoder, images, device=cfg.device)
        clf.set_head(fit_prototypes(feats, labels, num_classes, cfg))
        return clf.eval()
    if cfg.method == "probe" or cfg.lp_init:
        feats = extract_features(clf.encoder, images, device=cfg.device)
        clf.set_head(fit_probe(feats, labels, num_classes, cfg))
    if cfg.method == "probe":
        return clf.eval()

    # ---- full fine-tune, or LoRA: the same loop, different trainable parameters
    depth = vit_cfg.depth
    if cfg.method == "lora":
        # Freezes the encoder; only the adapters (B = 0: the model starts unchanged) and the head train.
        inject_lora(clf.encoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                    ("qkv", "proj") if cfg.lora_proj else ("qkv",))
        lr_scale = None  # every adapter is a new parameter: no pretrained layer to protect with a smaller lr
    else:
        lr_scale = lambda name: cfg.layer_decay ** (depth + 1 - _layer_id(name, depth))  # noqa: E731
    gen = torch.Generator().manual_seed(cfg.seed)
    clf.encoder.set_drop_path(cfg.drop_path)
    clf.to(device).train()
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    targets = torch.from_numpy(labels).to(device)
    n = len(labels)
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    groups = param_groups(clf, cfg.weight_decay, lr_scale)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=device.type == "cuda")

    bar = tqdm(total=total, desc=cfg.method, disable=not progress, leave=False)
    t0 = time.perf_counter()
    step = 0
    for _epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for j in range(steps_per_epoch):
            idx = order[j * batch_size : (j + 1) * batch_size].to(device)
            x = augment_batch(data[idx], cfg.augment, gen)
            lr = cosine_lr(step, total, warmup, cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            with autocast_for(device):
                logits = clf(x)
            loss = F.cross_entropy(logits.float(), targets[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{cfg.method} loss is {loss.item()} at step {step}; lower cfg.lr")
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                break
        else:
            continue
        break
    bar.close()
    clf.encoder.set_drop_path(0.0)
    if cfg.method == "lora":
        merge_lora(clf.encoder)  # back to a plain ViT: same checkpoint format, no adapter code at inference
    return clf.cpu().eval()
