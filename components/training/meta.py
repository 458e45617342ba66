"""Meta-learning for fast adaptation: first-order MAML and Reptile over N-way K-shot episodes.

An *episode* (a task) is ``n_way`` classes drawn from the labeled training set, relabelled
0..n_way-1 in a random order, with ``k_shot`` support images per class (and, for MAML,
``query`` images per class to score the adapted model). Both methods learn a backbone
initialisation from which a few SGD steps on a support set give a good classifier:

* Reptile (Nichol et al. 2018): adapt a copy of the backbone to each task with
  ``inner_steps`` SGD steps on its support set, then move the backbone a fraction ``ε``
  of the way towards the mean of the adapted copies (``ε`` decays linearly to 0).
* First-order MAML (Finn et al. 2017, the first-order variant): adapt a copy the same
  way, take the gradient of the *query* loss at the adapted weights, and apply the mean
  over tasks to the backbone with Adam (second derivatives dropped).

The per-task head is a linear layer on parameter-free layer-normalized pooled features,
initialised to zero for every task: episode labels are a random permutation, so a
meta-learned head initialisation can only learn to be uniform, and zero is that (Kao et
al. 2022, "MAML is a noisy contrastive learner"). The layer norm makes the head's scale
independent of the backbone family and width, so one inner learning rate fits all.

BatchNorm buffers (ResNets) are estimates, not learned weights: after each outer step
they take the mean of the adapted copies' buffers. Episode predictions are made in eval
mode with the support set's BatchNorm statistics (:func:`support_statistics`): inductive,
no query image sees another's statistics.

:func:`meta_adapt` is the adaptation method ``reptile`` / ``maml`` of ``dlvm adapt``:
meta-train the backbone on episodes from the training labels, then fit the real task's
classifier (a linear probe, or a fine-tune) on all of them with
:func:`components.training.adapt.adapt`, so the result is a plain
:class:`~components.training.adapt.Classifier` like every other method's.
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from components.models.backbones import BackboneConfig, build_backbone, load_backbone_weights
from components.models.vit import normalize_uint8
from components.training.adapt import AdaptConfig, Classifier, adapt
from components.training.device import pick_device

META_METHODS = ("reptile", "maml")
FINAL_HEADS = ("probe", "finetune")
DEFAULT_OUTER_LR = {"reptile": 0.5, "maml": 1e-3}  # Reptile's interpolation ε, MAML's Adam lr


@dataclass
class MetaConfig:
    """Every knob of meta-training and of the adaptation to the real task.

    ``outer_lr`` None: Reptile's ε = 0.5 (decaying linearly to 0), MAML's Adam lr = 1e-3.
    ``eval_inner_steps``: SGD steps on a test episode's support set (more than in training,
    as in both papers). ``final``: how the real task's classifier is fitted on the
    meta-learned backbone, with ``final_adapt`` (None: that method's defaults).
    """

    method: str = "reptile"  # one of META_METHODS
    n_way: int = 4
    k_shot: int = 5
    query: int = 5  # per class, MAML's outer loss (Reptile uses the support set only)
    meta_steps: int = 200  # outer steps
    meta_batch: int = 4  # tasks per outer step
    inner_steps: int = 5
    eval_inner_steps: int = 10
    inner_lr: float = 0.05  # plain SGD on backbone and head
    outer_lr: float | None = None
    final: str = "probe"  # one of FINAL_HEADS
    final_adapt: AdaptConfig | None = None
    seed: int = 0
    device: str = "auto"
    max_seconds: float | None = None  # hard stop for meta-training

    def __post_init__(self) -> None:
        if self.method not in META_METHODS:
            raise ValueError(f"meta-learning method must be one of {', '.join(META_METHODS)}; got {self.method!r}")
        if self.final not in FINAL_HEADS:
            raise ValueError(f"final must be one of {', '.join(FINAL_HEADS)}; got {self.final!r}")
        for name in ("n_way", "k_shot", "meta_steps", "meta_batch", "inner_steps", "eval_inner_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.n_way < 2:
            raise ValueError(f"n_way must be >= 2 (one class is no classification task), got {self.n_way}")
        if self.query < (1 if self.method == "maml" else 0):
            raise ValueError(f"query must be >= 1 for MAML (its outer loss), got {self.query}")
        if not self.inner_lr > 0 or (self.outer_lr is not None and not self.outer_lr > 0):
            raise ValueError(f"inner_lr and outer_lr must be > 0, got {self.inner_lr}, {self.outer_lr}")

    @property
    def outer(self) -> float:
        return self.outer_lr if self.outer_lr is not None else DEFAULT_OUTER_LR[self.method]

    def to_dict(self) -> dict:
        return asdict(self)


def parse_episode_spec(spec: str) -> tuple[int, int]:
    """``'5way1shot'`` (also ``'5-way-1-shot'``, ``'5w1s'``) -> ``(5, 1)``."""
    m = re.fullmatch(r"\s*(\d+)\s*-?\s*w(?:ay)?\s*-?\s*(\d+)\s*-?\s*s(?:hot)?\s*", spec.lower())
    if not m or int(m.group(1)) < 2 or int(m.group(2)) < 1:
        raise ValueError(f"episode spec must look like '4way1shot' (N >= 2 ways, K >= 1 shots), got {spec!r}")
    return int(m.group(1)), int(m.group(2))


# ------------------------------------------------------------------------------ episodes


@dataclass
class Episode:
    """Indices into the image set and episode labels (0..n_way-1) of one N-way K-shot task."""

    classes: np.ndarray  # [n_way] the original class of each episode label
    support: np.ndarray  # [n_way * k_shot]
    support_y: np.ndarray
    query: np.ndarray  # [n_way * query]
    query_y: np.ndarray


def eligible_classes(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Classes with at least ``per_class`` examples (the ones an episode can draw)."""
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    return classes[counts >= per_class]


def check_episodes_possible(labels: np.ndarray, n_way: int, k_shot: int, query: int, where: str) -> np.ndarray:
    """The eligible classes, or a one-line error saying why no episode can be drawn."""
    need = k_shot + query
    ok = eligible_classes(labels, need)
    if len(ok) < n_way:
        classes, counts = np.unique(np.asarray(labels), return_counts=True)
        have = ", ".join(f"{c}: {n}" for c, n in zip(classes.tolist(), counts.tolist()))
        raise ValueError(f"{n_way}-way {k_shot}-shot episodes with {query} queries need {n_way} classes with "
                         f">= {need} images in the {where}; only {len(ok)} have that (per class: {have})")
    return ok


def sample_episode(labels: np.ndarray, n_way: int, k_shot: int, query: int, rng: np.random.Generator,
                   classes: np.ndarray | None = None, pool: np.ndarray | None = None) -> Episode:
    """One episode from ``labels[pool]`` (``pool``: candidate indices, default all); ``classes``:
    the eligible classes (see :func:`check_episodes_possible`)."""
    labels = np.asarray(labels)
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    if classes is None:
        classes = check_episodes_possible(labels[pool], n_way, k_shot, query, "label pool")
    chosen = rng.choice(classes, size=n_way, replace=False)
    support, query_idx = [], []
    for c in chosen:
        members = rng.permutation(pool[labels[pool] == c])[: k_shot + query]
        support.append(members[:k_shot])
        query_idx.append(members[k_shot:])
    ys = np.repeat(np.arange(n_way), k_shot)
    yq = np.repeat(np.arange(n_way), query)
    return Episode(chosen, np.concatenate(support), ys, np.concatenate(query_idx).astype(np.int64), yq)


# ------------------------------------------------------------------------------ the inner loop


class EpisodeHead(nn.Module):
    """A zero-initialised linear head on layer-normalized pooled features (see the module doc)."""

    def __init__(self, dim: int, n_way: int):
        super().__init__()
        self.linear = nn.Linear(dim, n_way)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(F.layer_norm(pooled.float(), pooled.shape[-1:]))


def adapt_to_support(encoder: nn.Module, x: torch.Tensor, y: torch.Tensor, n_way: int, steps: int,
                     lr: float) -> tuple[nn.Module, EpisodeHead]:
    """A copy of ``encoder`` and a fresh head after ``steps`` full-batch SGD steps on the support set
    (normalized images ``x``, episode labels ``y``); ``encoder`` itself is untouched."""
    fast = copy.deepcopy(encoder).train()
    head = EpisodeHead(fast.num_features, n_way).to(x.device)
    opt = torch.optim.SGD([*fast.parameters(), *head.parameters()], lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(head(fast.forward_pool(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return fast, head


@torch.no_grad()
def support_statistics(encoder: nn.Module, support_x: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to the support set's batch statistics.

    The inner loop trains in train mode (batch statistics of the support set); predicting
    with running averages that only partly moved towards them would score a different
    network than the one trained. Using the support set's statistics keeps the two equal
    and stays inductive (a query image never sees another's statistics). No-op without BatchNorm.
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    counts: dict[nn.Module, int] = {}

    def count(module: nn.Module, args: tuple) -> None:  # values per channel the batch statistics average over
        counts[module] = args[0].numel() // args[0].shape[1]

    hooks = [m.register_forward_pre_hook(count) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly its statistics
    was = encoder.training
    encoder.train()
    try:
        encoder.forward_pool(support_x)
    finally:
        encoder.train(was)
        for h in hooks:
            h.remove()
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
    for m in norms:  # BatchNorm stores the unbiased variance but normalizes a batch by the biased one
        n = counts.get(m, 0)
        if n > 1:
            m.running_var.mul_((n - 1) / n)


@torch.no_grad()
def episode_logits(encoder: nn.Module, head: EpisodeHead, x: torch.Tensor, support_x: torch.Tensor | None = None,
                   batch_size: int = 256) -> torch.Tensor:
    """Logits of normalized images ``x`` in eval mode; BatchNorm statistics from ``support_x``
    when given (see :func:`support_statistics`), else the running ones."""
    if support_x is not None:
        support_statistics(encoder, support_x)
    was = encoder.training
    encoder.eval()
    out = torch.cat([head(encoder.forward_pool(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
    encoder.train(was)
    return out


def _float_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: b for k, b in module.named_buffers() if b.is_floating_point()}


# ------------------------------------------------------------------------------ meta-training


@dataclass
class MetaResult:
    """The meta-learned backbone (its state dict) and how training went."""

    state: dict
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # every 10th outer step: step, loss, accuracy

    def summary(self) -> dict:
        last = self.history[-5:] or [{"loss": float("nan"), "accuracy": float("nan")}]
        return {"meta_steps": self.steps, "meta_seconds": round(self.seconds, 2),
                "meta_final_query_loss": float(np.mean([h["loss"] for h in last])),
                "meta_final_query_accuracy": float(np.mean([h["accuracy"] for h in last]))}


def build_meta_encoder(backbone_cfg: BackboneConfig, state: dict | None, seed: int = 0) -> nn.Module:
    """The backbone to meta-train: ``state`` loaded, or randomly initialised from ``seed``."""
    encoder = build_backbone(backbone_cfg, seed=seed)
    if state is not None:
        load_backbone_weights(encoder, state)
    encoder.set_drop_path(0.0)
    return encoder


def meta_train(encoder: nn.Module, images: np.ndarray, labels: np.ndarray, cfg: MetaConfig,
               progress: bool = True) -> MetaResult:
    """Meta-train ``encoder`` in place on episodes from uint8 images ``[N, H, W]`` and their labels."""
    labels = np.asarray(labels, np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    query = cfg.query if cfg.method == "maml" else 0
    classes = check_episodes_possible(labels, cfg.n_way, cfg.k_shot, query, "training labels")
    device = pick_device(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    encoder.to(device).train()
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    params = [p for p in encoder.parameters() if p.requires_grad]
    adam = torch.optim.Adam(params, lr=cfg.outer) if cfg.method == "maml" else None

    history: list[dict] = []
    losses, accs = [], []
    bar = tqdm(total=cfg.meta_steps, desc=cfg.method, disable=not progress, leave=False)
    t0 = time.perf_counter()
    step = 0
    while step < cfg.meta_steps:
        deltas = [torch.zeros_like(p) for p in params]  # Reptile: sum of (adapted - current); MAML: sum of grads
        buffers = {k: torch.zeros_like(b) for k, b in _float_buffers(encoder).items()}
        for _ in range(cfg.meta_batch):
            ep = sample_episode(labels, cfg.n_way, cfg.k_shot, query, rng, classes)
            xs = normalize_uint8(data[torch.from_numpy(ep.support).to(device)])
            ys = torch.from_numpy(ep.support_y).to(device)
            fast, head = adapt_to_support(encoder, xs, ys, cfg.n_way, cfg.inner_steps, cfg.inner_lr)
            fast_params = [p for p in fast.parameters() if p.requires_grad]
            if cfg.method == "maml":
                xq = normalize_uint8(data[torch.from_numpy(ep.query).to(device)])
                yq = torch.from_numpy(ep.query_y).to(device)
                logits = head(fast.forward_pool(xq))
                loss = F.cross_entropy(logits, yq)
                grads = torch.autograd.grad(loss, fast_params, allow_unused=True)  # e.g. an unused cls token
                for d, g in zip(deltas, grads):
                    if g is not None:
                        d.add_(g)
            else:  # Reptile's "loss": the support loss after adaptation (what the inner loop reached)
                with torch.no_grad():
                    logits = head(fast.forward_pool(xs))
                    loss = F.cross_entropy(logits, ys)
                    yq = ys
                    for d, p, q in zip(deltas, params, fast_params):
                        d.add_(q.detach() - p.detach())
            for k, b in _float_buffers(fast).items():
                buffers[k].add_(b)
            losses.append(loss.item())
            accs.append((logits.argmax(1) == yq).float().mean().item())
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"{cfg.method} loss is {losses[-1]} at step {step}; lower inner_lr")
        with torch.no_grad():
            if cfg.method == "maml":
                for p, d in zip(params, deltas):
                    p.grad = d / cfg.meta_batch
                adam.step()
                adam.zero_grad(set_to_none=True)
            else:
                eps = cfg.outer * (1 - step / cfg.meta_steps)
                for p, d in zip(params, deltas):
                    p.add_(d, alpha=eps / cfg.meta_batch)
            for k, b in _float_buffers(encoder).items():
                b.copy_(buffers[k] / cfg.meta_batch)
        step += 1
        bar.update(1)
        if step % 10 == 0 or step == cfg.meta_steps:
            history.append({"step": step, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs))})
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['accuracy']:.2f}")
            losses, accs = [], []
        if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
            break
    bar.close()
    encoder.eval()
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    return MetaResult(state, step, time.perf_counter() - t0, history)


def meta_adapt(backbone_cfg: BackboneConfig, backbone_state: dict | None, images: np.ndarray, labels: np.ndarray,
               num_classes: int, cfg: MetaConfig, progress: bool = True,
               preprocess: dict | None = None) -> tuple[Classifier, MetaResult]:
    """``dlvm adapt --method reptile|maml``: meta-train the backbone on episodes from the
    training labels, then fit the real task's classifier on all of them (``cfg.final``).
    Episodes have at most ``num_classes`` ways (a 2-class task has 2-way episodes)."""
    cfg = replace(cfg, n_way=min(cfg.n_way, num_classes))
    encoder = build_meta_encoder(backbone_cfg, backbone_state, cfg.seed)
    result = meta_train(encoder, images, labels, cfg, progress)
    final = cfg.final_adapt or AdaptConfig(method=cfg.final, seed=cfg.seed, device=cfg.device)
    if final.method != cfg.final:
        raise ValueError(f"final_adapt.method {final.method!r} is not cfg.final {cfg.final!r}")
    clf = adapt(backbone_cfg, result.state, images, labels, num_classes, final, progress=progress,
                preprocess=preprocess)
    clf.method = cfg.method  # what produced it; the head is cfg.final's (recorded in the params)
    return clf, result
