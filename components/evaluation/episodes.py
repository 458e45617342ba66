"""Episodic few-shot evaluation: N-way K-shot accuracy over many episodes from the test split.

The label-efficiency sweep asks "how good is a classifier for *this* task with few
labels"; the episodic protocol of the few-shot literature asks "how fast does a backbone
adapt to *a* task": draw ``n_way`` classes from the test split, ``k_shot`` labeled support
images and ``query`` query images per class, adapt on the support set, score the queries;
repeat over many episodes and report the mean accuracy with its 95 % interval
(mean ± 1.96 standard errors over episodes, as the literature reports it).

Every method sees the same episodes (same seed), so methods are also compared pairwise:
each row carries the mean per-episode difference to prototypes with its interval.

Methods, all from the same backbone:

* ``prototype``: nearest class mean on frozen, L2-normalized features (no training).
* ``probe``: an L2-regularized logistic regression on frozen features (fixed L2 when the
  support set is too small to cross-validate).
* ``finetune``: the meta-learners' inner loop (full-batch SGD on backbone and a zero head)
  from the backbone as it is: the control that shows what meta-training adds.
* ``reptile`` / ``maml``: the same inner loop from the backbone after meta-training on
  episodes of the *training* split (:mod:`components.training.meta`), one meta-training
  per N-way K-shot setting, as the papers do.

All five are inductive: the support labels are the only labels, and each query image is
classified on its own (eval-mode normalization), never with the other queries' statistics.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

METHODS = ("prototype", "probe", "finetune", "reptile", "maml")
FEATURE_METHODS = ("prototype", "probe")
Z95 = 1.959963984540054


@dataclass
class EpisodeConfig:
    """What to run: ``specs`` are (n_way, k_shot) pairs; ``meta`` is the template
    :class:`~components.training.meta.MetaConfig` for ``reptile`` / ``maml`` (its method,
    n_way and k_shot are set per run; None: its defaults) and gives the inner loop's
    steps and learning rate for ``finetune`` too."""

    specs: tuple[tuple[int, int], ...] = ((4, 1), (4, 5))
    episodes: int = 300
    query: int = 10  # query images per class
    methods: tuple[str, ...] = METHODS
    meta: Any = None
    probe_l2: float = 1e-2  # used when the support set is too small for cross-validation
    prototype_temperature: float = 0.1
    seed: int = 0
    encoder_seed: int = 0  # initializes a backbone whose state is None (scratch)
    device: str = "auto"

    def __post_init__(self) -> None:
        self.specs = tuple((int(n), int(k)) for n, k in self.specs)
        self.methods = tuple(self.methods)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"episode methods must be among {', '.join(METHODS)}; got {', '.join(bad) or 'none'}")
        if not self.specs or any(n < 2 or k < 1 for n, k in self.specs):
            raise ValueError(f"episode specs need N >= 2 ways and K >= 1 shots, got {self.specs}")
        if self.episodes < 2 or self.query < 1:
            raise ValueError(f"need >= 2 episodes and >= 1 query per class, got {self.episodes}, {self.query}")


def parse_specs(text: str | Sequence[str]) -> tuple[tuple[int, int], ...]:
    """``'4way1shot,4way5shot'`` (or a list of such names) -> ``((4, 1), (4, 5))``."""
    from components.training.meta import parse_episode_spec

    names = [t for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not names:
        raise ValueError("no episode setting given: name some like '4way1shot,4way5shot'")
    return tuple(parse_episode_spec(t) for t in names)


def spec_name(n_way: int, k_shot: int) -> str:
    return f"{n_way}way{k_shot}shot"


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean with the normal-approximation 95 % interval over episodes."""
    v = np.asarray(values, np.float64)
    half = Z95 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    m = float(v.mean())
    return {"value": m, "ci_low": m - half, "ci_high": m + half}


@dataclass
class EpisodicResult:
    rows: list[dict] = field(default_factory=list)  # one per (backbone, spec, method)
    meta_training: list[dict] = field(default_factory=list)  # one per meta-trained (backbone, spec, method)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "meta_training": self.meta_training}


def _episodes(labels: np.ndarray, test_idx: np.ndarray, n_way: int, k_shot: int, cfg: EpisodeConfig):
    from components.training.meta import check_episodes_possible, sample_episode

    classes = check_episodes_possible(labels[test_idx], n_way, k_shot, cfg.query, "test split")
    rng = np.random.default_rng([cfg.seed, n_way, k_shot])
    return [sample_episode(labels, n_way, k_shot, cfg.query, rng, classes, pool=test_idx)
            for _ in range(cfg.episodes)]


def _feature_accuracies(method: str, feats: np.ndarray, episodes, n_way: int, cfg: EpisodeConfig) -> list[float]:
    from components.training.adapt import (
        AdaptConfig,
        fit_probe,
        fit_prototypes,
        predict_proba_from_features,
    )

    head_cfg = AdaptConfig(method=method, seed=cfg.seed, prototype_temperature=cfg.prototype_temperature,
                           probe_folds=5, probe_l2=None)
    accs = []
    for ep in episodes:
        if method == "prototype":
            head = fit_prototypes(feats[ep.support], ep.support_y, n_way, head_cfg)
        else:
            # Cross-validating L2 needs >= 2 folds of >= 4 images; a 1-shot support set has neither.
            k = min(head_cfg.probe_folds, len(ep.support_y) // 4, int(np.bincount(ep.support_y).min()))
            head = fit_probe(feats[ep.support], ep.support_y, n_way,
                             head_cfg if k >= 2 else replace(head_cfg, probe_l2=cfg.probe_l2))
        pred = predict_proba_from_features(head, feats[ep.query]).argmax(1)
        accs.append(float((pred == ep.query_y).mean()))
    return accs


def _inner_loop_accuracies(encoder, images: np.ndarray, episodes, n_way: int, steps: int, lr: float,
                           device) -> list[float]:
    import torch

    from components.models.vit import normalize_uint8
    from components.training.meta import adapt_to_support, episode_logits

    accs = []
    for ep in episodes:
        xs = normalize_uint8(torch.from_numpy(images[ep.support]).to(device))
        ys = torch.from_numpy(ep.support_y).to(device)
        fast, head = adapt_to_support(encoder, xs, ys, n_way, steps, lr)
        xq = normalize_uint8(torch.from_numpy(images[ep.query]).to(device))
        pred = episode_logits(fast, head, xq, support_x=xs).argmax(1).cpu().numpy()
        accs.append(float((pred == ep.query_y).mean()))
    return accs


def evaluate_episodes(backbones: Sequence, images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
                      test_idx: np.ndarray, cfg: EpisodeConfig, progress: bool = True) -> EpisodicResult:
    """Episodic accuracy of every backbone (``.name``, ``.vit_config``, ``.state``, as the
    sweep's :class:`~components.evaluation.sweep.Backbone`) x spec x method."""
    import torch
    from tqdm.auto import tqdm

    from components.training.adapt import extract_features
    from components.training.device import pick_device
    from components.training.meta import MetaConfig, build_meta_encoder, meta_train

    labels = np.asarray(labels, np.int64)
    train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
    device = pick_device(cfg.device)
    template = cfg.meta or MetaConfig(device=cfg.device)
    plan = {spec: _episodes(labels, test_idx, *spec, cfg) for spec in cfg.specs}  # errors before any training
    result = EpisodicResult()
    total = len(backbones) * len(cfg.specs) * len(cfg.methods)
    bar = tqdm(total=total, desc="episodes", disable=not progress, leave=False)
    for backbone in backbones:
        base = build_meta_encoder(backbone.vit_config, backbone.state, cfg.encoder_seed).to(device)
        feats = (extract_features(base, images, device=cfg.device)
                 if any(m in FEATURE_METHODS for m in cfg.methods) else None)
        for (n_way, k_shot), episodes in plan.items():
            per_method: dict[str, list[float]] = {}
            for method in cfg.methods:
                if method in FEATURE_METHODS:
                    accs = _feature_accuracies(method, feats, episodes, n_way, cfg)
                elif method == "finetune":
                    accs = _inner_loop_accuracies(base, images, episodes, n_way, template.eval_inner_steps,
                                                  template.inner_lr, device)
                else:
                    meta_cfg = replace(template, method=method, n_way=n_way, k_shot=k_shot)
                    encoder = copy.deepcopy(base)
                    with torch.random.fork_rng(devices=[]):
                        trained = meta_train(encoder, images[train_idx], labels[train_idx], meta_cfg, progress)
                    result.meta_training.append({"backbone": backbone.name, "episode": spec_name(n_way, k_shot),
                                                 "method": method, **trained.summary()})
                    encoder.to(device)
                    accs = _inner_loop_accuracies(encoder, images, episodes, n_way, meta_cfg.eval_inner_steps,
                                                  meta_cfg.inner_lr, device)
                per_method[method] = accs
                bar.update(1)
            for method, accs in per_method.items():
                row = {"backbone": backbone.name, "episode": spec_name(n_way, k_shot), "n_way": n_way,
                       "k_shot": k_shot, "query": cfg.query, "method": method, "n_episodes": len(accs),
                       "accuracy": mean_ci(accs), "setting": "inductive"}
                if "prototype" in per_method and method != "prototype":
                    row["minus_prototype"] = mean_ci(np.subtract(accs, per_method["prototype"]))
                result.rows.append(row)
    bar.close()
    return result


def _pct(m: dict[str, float]) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def episodes_markdown(result: EpisodicResult, cfg: EpisodeConfig) -> str:
    """The report section: accuracy per backbone x spec x method, and the paired difference to prototypes."""
    if not result.rows:
        return ""
    lines = ["## Episodic few-shot accuracy", "",
             f"{cfg.episodes} episodes per setting from the test split, {cfg.query} query images per class; "
             "mean accuracy with its 95 % interval over episodes. Every method sees the same episodes; "
             "'- prototype' is the paired per-episode difference to prototypes. All methods are inductive "
             "(support labels only, each query image classified on its own); Reptile and MAML were "
             "meta-trained on episodes of the training split only.", "",
             "| backbone | episodes | method | accuracy (95% CI) | - prototype (95% CI) |",
             "| --- | --- | --- | --- | --- |"]
    for row in result.rows:
        diff = _pct(row["minus_prototype"]) if "minus_prototype" in row else "-"
        lines.append(f"| {row['backbone']} | {row['episode']} | {row['method']} | {_pct(row['accuracy'])} | {diff} |")
    if result.meta_training:
        lines += ["", "Meta-training (mean over the last 50 outer steps: Reptile's post-adaptation support loss, MAML's query loss):",
                  "", "| backbone | episodes | method | outer steps | seconds | loss | accuracy |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for m in result.meta_training:
            lines.append(f"| {m['backbone']} | {m['episode']} | {m['method']} | {m['meta_steps']} | "
                         f"{m['meta_seconds']:.0f} | {m['meta_final_query_loss']:.3f} | "
                         f"{m['meta_final_query_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"
