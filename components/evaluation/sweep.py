"""The label-efficiency sweep: label fractions x backbones x adaptation methods x seeds.

Every run trains on a stratified subset of the fixed train pool and is scored on the same
fixed test split, so any two runs can be compared pairwise (``paired_bootstrap``,
``promotion_gate``). The subset for a (fraction, seed) is the same for every backbone and
method, so differences between curves come from the backbones, not from which labels
they happened to get.

Probes and prototypes reuse frozen features: each backbone's encoder embeds the
train+test images once, and every (fraction, seed) probe or prototype head is fitted on
those cached features. Fine-tuning and LoRA call ``adapt`` per (fraction, seed).

The work is split into independent units (``plan_units``: a backbone's feature-based runs,
or one fine-tune/LoRA run) so that a task runner can spread them over processes or machines;
``assemble_sweep`` puts the units' results back in plan order, so the result does not depend
on where or in which order the units ran.

Sanity baselines (``SweepConfig.baselines``: the majority class, logistic regression and RBF-SVMs
on pixels and HOG, components/evaluation/baselines.py) run beside the backbones on the same label
subsets and test split, one unit per baseline, as rows of the pseudo-backbone ``baseline``
whose ``method`` is the baseline's name; each row carries what was fitted (``fit``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from components.evaluation.baselines import (
    BASELINE_BACKBONE,
    SANITY_BASELINES,
    BaselineConfig,
    feature_kind,
    features,
    fit_predict_features,
)
from components.evaluation.metrics import as_pred, evaluate_predictions
from components.evaluation.split import label_subset

if TYPE_CHECKING:  # the learning stack (torch) is imported only when a sweep runs
    from components.models.backbones import BackboneConfig

METHODS = ("probe", "finetune", "lora", "prototype", "svm")
FEATURE_METHODS = ("probe", "prototype")  # heads on frozen features: extracted once per backbone
# A run of their own each, minutes on CPU, so they may be restricted to part of the grid: the networks
# trained by gradient (components.training.adapt.TRAINED_METHODS; not imported: this module stays
# free of torch) and the svm, which views every image and, on a descriptor backbone, redraws its
# kernel's landmarks from each label subset.
TRAINED_METHODS = ("finetune", "lora", "svm")
RunKey = tuple[str, str, float, int]  # (backbone, method, fraction, seed)


@dataclass
class Backbone:
    """An encoder to evaluate, of either family (ViT or ResNet): ``state`` None means random
    initialization (the from-scratch baseline)."""

    name: str
    config: "BackboneConfig"
    state: dict | None = None
    model_version_id: int | None = None

    @property
    def vit_config(self) -> "BackboneConfig":  # the name from before the ResNet family
        return self.config


def _subset(name: str, values, among: tuple, kind) -> tuple | None:
    """``values`` (None: all of ``among``) as a tuple of ``kind``, refused unless all are among ``among``
    (fractions sorted and deduplicated, seeds in the given order)."""
    if values is None:
        return None
    out = tuple(sorted({kind(v) for v in values})) if kind is float else tuple(kind(v) for v in values)
    if not set(out) <= set(among):
        kind_name = "fractions" if kind is float else "seeds"
        raise ValueError(f"{name} {out} must be among {kind_name} {among}")
    return out


@dataclass
class SweepConfig:
    """What to sweep. ``probe``/``finetune``/``lora``/``prototype``/``svm`` are ``AdaptConfig``s (defaults:
    ``AdaptConfig(method=...)``); their ``seed`` is replaced by each run's seed.

    ``encoder_seed`` initializes encoders whose ``state`` is None; it is fixed (not the run
    seed) so a from-scratch probe's features are extracted once, like any other backbone's.
    ``bootstrap_seed`` is shared by all runs so their intervals use the same resamples.
    """

    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("probe",)
    # Fine-tuning (and LoRA, which back-propagates through the whole encoder too) costs minutes
    # a run on CPU where a probe costs a second: it may run on a subset of the fractions and
    # seeds (None: all of them).
    finetune_fractions: tuple[float, ...] | None = None
    finetune_seeds: tuple[int, ...] | None = None
    probe: Any = None
    finetune: Any = None
    lora: Any = None
    prototype: Any = None
    svm: Any = None
    n_boot: int = 1000
    bootstrap_seed: int = 0
    encoder_seed: int = 0
    feature_batch_size: int = 256  # inference batch (feature extraction, test predictions)
    device: str = "auto"  # inference device; training uses the AdaptConfig's own device
    # Sanity baselines fitted beside the backbones (names from SANITY_BASELINES; () = none), with
    # their BaselineConfig (None: the defaults). Deterministic given their labels, and a
    # kernel SVM costs minutes at 2,000 images on CPU: by default they run on every fraction
    # with the first seed only (None: as the probes); the evaluate flow narrows them further.
    baselines: tuple[str, ...] = ()
    baseline: Any = None
    baseline_fractions: tuple[float, ...] | None = None
    baseline_seeds: tuple[int, ...] | None = None
    # A folder where the full-label (fraction 1.0) runs of the trained methods (fine-tune, LoRA,
    # svm) keep their classifiers for the pipeline's candidate step (components/training/kept_runs.py);
    # None: nothing kept.
    keep_dir: str | None = None

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; known: {list(METHODS)}")
        bad_f = [f for f in self.fractions if not 0.0 < f <= 1.0]
        if bad_f:
            raise ValueError(f"fractions must be in (0, 1], got {bad_f}")
        self.fractions = tuple(sorted({float(f) for f in self.fractions}))
        self.seeds = tuple(int(s) for s in self.seeds)
        self.methods = tuple(dict.fromkeys(self.methods))
        self.finetune_fractions = _subset("finetune_fractions", self.finetune_fractions, self.fractions, float)
        self.finetune_seeds = _subset("finetune_seeds", self.finetune_seeds, self.seeds, int)
        bad_b = [b for b in self.baselines if b not in SANITY_BASELINES]
        if bad_b:
            raise ValueError(f"unknown sanity baselines {bad_b}; known: {list(SANITY_BASELINES)}")
        self.baselines = tuple(dict.fromkeys(self.baselines))
        self.baseline_fractions = _subset("baseline_fractions", self.baseline_fractions, self.fractions, float)
        self.baseline_seeds = _subset("baseline_seeds", self.baseline_seeds, self.seeds, int)

    def grid(self, method: str) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """The (fractions, seeds) a method runs on."""
        if method in TRAINED_METHODS:
            return self.finetune_fractions or self.fractions, self.finetune_seeds or self.seeds
        if method in SANITY_BASELINES:
            return self.baseline_fractions or self.fractions, self.baseline_seeds or self.seeds[:1]
        return self.fractions, self.seeds


def _clean(v: Any) -> Any:
    """JSON-able, strict: numpy scalars to Python, NaN/inf to None."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


@dataclass
class SweepResult:
    """Rows (one per run, see ``run_sweep``) plus the test split and every run's test probabilities."""

    rows: list[dict[str, Any]]
    train_idx: np.ndarray
    test_idx: np.ndarray
    y_test: np.ndarray
    num_classes: int
    test_proba: dict[RunKey, np.ndarray] = field(default_factory=dict)
    backbones: list[dict[str, Any]] = field(default_factory=list)  # name, model_version_id, backbone_config

    def pred(self, backbone: str, method: str, fraction: float, seed: int) -> np.ndarray:
        """Test-set class predictions of one run."""
        return as_pred(self.test_proba[(backbone, method, float(fraction), int(seed))])

    def to_dict(self, include_proba: bool = True, proba_decimals: int = 6) -> dict[str, Any]:
        predictions = []
        for key in sorted(self.test_proba):
            b, m, f, s = key
            p = np.asarray(self.test_proba[key])
            entry: dict[str, Any] = {"backbone": b, "method": m, "fraction": f, "seed": s, "pred": as_pred(p)}
            if include_proba and p.ndim == 2:
                # Rounded: 6 decimals is far below any metric's resolution and keeps files small.
                entry["proba"] = np.round(p.astype(np.float64), proba_decimals)
            predictions.append(entry)
        return _clean({
            "num_classes": self.num_classes,
            "backbones": self.backbones,
            "train_idx": self.train_idx,
            "test_idx": self.test_idx,
            "y_test": self.y_test,
            "rows": self.rows,
            "predictions": predictions,
        })

    def to_json(self, include_proba: bool = True) -> str:
        """Deterministic JSON (sorted keys, runs in sorted order, rounded probabilities)."""
        return json.dumps(self.to_dict(include_proba), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "SweepResult":
        d = json.loads(text)

        def nan(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: nan(x) for k, x in v.items()}
            return float("nan") if v is None else v

        rows = [{**r, "metrics": nan(r["metrics"])} for r in d["rows"]]
        proba = {
            (p["backbone"], p["method"], float(p["fraction"]), int(p["seed"])):
                np.asarray(p["proba"], dtype=np.float64) if "proba" in p else np.asarray(p["pred"], dtype=np.int64)
            for p in d["predictions"]
        }
        return cls(
            rows=rows,
            train_idx=np.asarray(d["train_idx"], dtype=np.int64),
            test_idx=np.asarray(d["test_idx"], dtype=np.int64),
            y_test=np.asarray(d["y_test"], dtype=np.int64),
            num_classes=int(d["num_classes"]),
            test_proba=proba,
            backbones=d.get("backbones", []),
        )


def with_seed(cfg: Any, seed: int) -> Any:
    """A copy of an adaptation config with its ``seed`` set (dataclass or pydantic); unchanged if it has none."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        if any(f.name == "seed" for f in dataclasses.fields(cfg)):
            return dataclasses.replace(cfg, seed=int(seed))
        return cfg
    if hasattr(cfg, "model_copy") and "seed" in getattr(type(cfg), "model_fields", {}):
        return cfg.model_copy(update={"seed": int(seed)})
    return cfg


def plan_runs(backbones: list[Backbone], cfg: SweepConfig) -> list[RunKey]:
    """Every (backbone, method, fraction, seed) of the sweep, in execution order."""
    names = [b.name for b in backbones]
    if len(set(names)) != len(names):
        raise ValueError(f"backbone names must be unique, got {names}")
    if BASELINE_BACKBONE in names:
        raise ValueError(f"{BASELINE_BACKBONE!r} names the sanity baselines' rows, not a backbone")
    # LoRA adapts attention projections: it has nothing to adapt in a convolutional backbone.
    return [(b.name, m, f, s) for b in backbones for m in cfg.methods
            if not (m == "lora" and getattr(b.config, "family", "vit") != "vit")
            for f in cfg.grid(m)[0] for s in cfg.grid(m)[1]] + \
        [(BASELINE_BACKBONE, name, f, s) for name in cfg.baselines for f in cfg.grid(name)[0] for s in cfg.grid(name)[1]]


def make_subsets(train_idx: np.ndarray, labels: np.ndarray, cfg: SweepConfig) -> dict[tuple[float, int], np.ndarray]:
    """The labelled training subset of every (fraction, seed), shared by all backbones and methods."""
    return {(f, s): label_subset(train_idx, labels, f, s) for f in cfg.fractions for s in cfg.seeds}


def score_run(key: RunKey, n_train: int, y_test: np.ndarray, proba: np.ndarray, num_classes: int,
              cfg: SweepConfig) -> dict[str, Any]:
    """One sweep row: run identity, training-set size and test metrics with bootstrap CIs."""
    b, m, f, s = key
    return {
        "backbone": b,
        "method": m,
        "fraction": f,
        "seed": s,
        "n_train": int(n_train),
        "metrics": evaluate_predictions(y_test, proba, num_classes, n_boot=cfg.n_boot, seed=cfg.bootstrap_seed),
    }


@dataclass(frozen=True)
class SweepUnit:
    """The share of a sweep that runs as one task. A backbone's probes and prototypes are one
    unit: they reuse that backbone's features, extracted once. Every fine-tune or LoRA run is
    a unit of its own: minutes each on CPU, the part worth spreading over workers."""

    backbone: str
    runs: tuple[RunKey, ...]

    @property
    def label(self) -> str:
        b, m, f, s = self.runs[0]
        if len(self.runs) == 1:
            return f"{b}/{m} {100 * f:g}% seed {s}"
        return f"{b}/{'+'.join(dict.fromkeys(r[1] for r in self.runs))} ({len(self.runs)} runs)"


@dataclass
class UnitResult:
    """What one unit returns: its rows (see ``run_sweep``) and each run's test probabilities."""

    rows: list[dict[str, Any]]
    test_proba: dict[RunKey, np.ndarray]


def plan_units(backbones: list[Backbone], cfg: SweepConfig) -> list[SweepUnit]:
    """The sweep's runs (``plan_runs``) grouped into independent units, in execution order."""
    runs = plan_runs(backbones, cfg)
    units = []
    for b in backbones:
        features = tuple(r for r in runs if r[0] == b.name and r[1] in FEATURE_METHODS)
        if features:
            units.append(SweepUnit(b.name, features))
        units += [SweepUnit(b.name, (r,)) for r in runs if r[0] == b.name and r[1] in TRAINED_METHODS]
    for name in cfg.baselines:  # one unit per baseline: a kernel SVM is worth its own worker
        units.append(SweepUnit(BASELINE_BACKBONE, tuple(r for r in runs if r[0] == BASELINE_BACKBONE and r[1] == name)))
    return units


def _checked_split(images, labels, train_idx, test_idx) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    train_idx = np.sort(np.asarray(train_idx, dtype=np.int64))
    test_idx = np.sort(np.asarray(test_idx, dtype=np.int64))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError("train and test indices overlap")
    if len(test_idx) == 0 or len(train_idx) == 0:
        raise ValueError("empty train or test split")
    return images, labels, train_idx, test_idx


def run_baseline_unit(
    unit: SweepUnit,
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    num_classes: int,
    cfg: SweepConfig,
) -> UnitResult:
    """The sanity baselines' runs: the images featurized once (pixels, HOG), each baseline fitted
    once per distinct label subset (the 100 % subset is the same for every seed) on the same
    subsets as the backbones, scored on the same test split with the same bootstrap."""
    images, labels, train_idx, test_idx = _checked_split(images, labels, train_idx, test_idx)
    bcfg = cfg.baseline or BaselineConfig()
    pool = np.union1d(train_idx, test_idx)
    row_of = np.full(len(images), -1, dtype=np.int64)
    row_of[pool] = np.arange(len(pool))
    kinds = {feature_kind(key[1]) for key in unit.runs}
    feats = {kind: features(kind, images[pool], bcfg) for kind in sorted(kinds)}
    fitted: dict[tuple[str, bytes], tuple[np.ndarray, dict]] = {}
    out = UnitResult(rows=[], test_proba={})
    for key in unit.runs:
        _, name, f, s = key
        sub = label_subset(train_idx, labels, f, s)
        if (name, sub.tobytes()) not in fitted:
            x = feats[feature_kind(name)]
            fitted[(name, sub.tobytes())] = fit_predict_features(
                name, None if x is None else x[row_of[sub]], labels[sub], None if x is None else x[row_of[test_idx]],
                len(test_idx), num_classes, bcfg)
        proba, info = fitted[(name, sub.tobytes())]
        out.test_proba[key] = np.asarray(proba, dtype=np.float32)
        out.rows.append({**score_run(key, len(sub), labels[test_idx], proba, num_classes, cfg), "fit": info})
    return out


def run_unit(
    unit: SweepUnit,
    backbone: Backbone | None,
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    num_classes: int,
    cfg: SweepConfig,
) -> UnitResult:
    """Run one unit's runs. Depends only on its arguments (every run seeds its own training),
    so a unit gives the same numbers in any process, in any order. The sanity baselines' units
    take no backbone (None)."""
    if unit.backbone == BASELINE_BACKBONE:
        return run_baseline_unit(unit, images, labels, train_idx, test_idx, num_classes, cfg)
    from components.training import adapt as learn

    if backbone.name != unit.backbone:
        raise ValueError(f"unit of backbone {unit.backbone!r} given backbone {backbone.name!r}")
    images, labels, train_idx, test_idx = _checked_split(images, labels, train_idx, test_idx)
    method_cfg = {m: getattr(cfg, m) if getattr(cfg, m) is not None else learn.AdaptConfig(method=m) for m in METHODS}
    y_test = labels[test_idx]
    out = UnitResult(rows=[], test_proba={})
    feats = None
    for key in unit.runs:
        _, method, f, s = key
        if method in FEATURE_METHODS and feats is None:
            # Embed train+test once; probes and prototypes for every (fraction, seed) reuse the features.
            encoder = learn.build_encoder(backbone.config, backbone.state, cfg.encoder_seed)
            pool = np.union1d(train_idx, test_idx)
            feats = learn.extract_features(encoder, images[pool], cfg.feature_batch_size, cfg.device)
            del encoder
            row_of = np.full(len(images), -1, dtype=np.int64)
            row_of[pool] = np.arange(len(pool))
            test_feats = feats[row_of[test_idx]]
        sub = label_subset(train_idx, labels, f, s)
        if method in FEATURE_METHODS:
            fit = learn.fit_probe if method == "probe" else learn.fit_prototypes
            head = fit(feats[row_of[sub]], labels[sub], num_classes, with_seed(method_cfg[method], s))
            proba = learn.predict_proba_from_features(head, test_feats)
        else:
            run_cfg = with_seed(method_cfg[method], s)
            clf = learn.adapt(backbone.config, backbone.state, images[sub], labels[sub], num_classes, run_cfg,
                              progress=False)
            proba = learn.predict_proba(clf, images[test_idx], cfg.feature_batch_size, cfg.device)
            if cfg.keep_dir and f == 1.0:
                from components.training.kept_runs import keep_run, training_key
                keep_run(cfg.keep_dir, training_key(backbone.config, backbone.state, images[sub], labels[sub],
                                                    num_classes, run_cfg), clf)
            del clf
        proba = np.asarray(proba, dtype=np.float32)
        if proba.shape != (len(test_idx), num_classes):
            raise ValueError(f"run {key}: probabilities {proba.shape}, expected {(len(test_idx), num_classes)}")
        out.test_proba[key] = proba
        out.rows.append(score_run(key, len(sub), y_test, proba, num_classes, cfg))
    return out


def assemble_sweep(
    parts: list[UnitResult],
    backbones: list[Backbone],
    labels: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    num_classes: int,
    cfg: SweepConfig,
) -> SweepResult:
    """One ``SweepResult`` from the units' results, rows in ``plan_runs`` order whatever order
    the units finished in; every planned run must be there exactly once."""
    from components.models.backbones import config_to_dict

    labels = np.asarray(labels).astype(np.int64)
    train_idx = np.sort(np.asarray(train_idx, dtype=np.int64))
    test_idx = np.sort(np.asarray(test_idx, dtype=np.int64))
    rows: dict[RunKey, dict[str, Any]] = {}
    proba: dict[RunKey, np.ndarray] = {}
    for part in parts:
        for row in part.rows:
            key = (row["backbone"], row["method"], row["fraction"], row["seed"])
            if key in rows:
                raise ValueError(f"run {key} came back from two units")
            rows[key], proba[key] = row, part.test_proba[key]
    planned = plan_runs(backbones, cfg)
    missing, extra = [k for k in planned if k not in rows], set(rows) - set(planned)
    if missing or extra:
        raise ValueError(f"sweep results do not match the plan: missing {missing[:5]}, unplanned {sorted(extra)[:5]}")
    return SweepResult(
        rows=[rows[k] for k in planned], train_idx=train_idx, test_idx=test_idx, y_test=labels[test_idx],
        num_classes=num_classes, test_proba={k: proba[k] for k in planned},
        backbones=[{"name": b.name, "model_version_id": b.model_version_id,
                    "backbone_config": config_to_dict(b.config)} for b in backbones],
    )


def run_sweep(
    backbones: list[Backbone],
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    num_classes: int,
    cfg: SweepConfig | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run the sweep (see module doc) in this process, one unit after another. ``images``
    uint8 [N, H, W], ``labels`` int [N]; indices into them. (The ``evaluate`` flow submits the
    same units to a Prefect task runner instead: flows/evaluate.py.)

    Rows: ``{backbone, method, fraction, seed, n_train, metrics: {accuracy|macro_f1|balanced_accuracy:
    {value, ci_low, ci_high}}}``; ``test_proba[(backbone, method, fraction, seed)]`` = [n_test, C].
    """
    from tqdm.auto import tqdm

    cfg = cfg or SweepConfig()
    images, labels, train_idx, test_idx = _checked_split(images, labels, train_idx, test_idx)
    by_name = {b.name: b for b in backbones}
    units = plan_units(backbones, cfg)
    parts = []
    bar = tqdm(total=sum(len(u.runs) for u in units), desc="label-efficiency sweep", unit="run", disable=not progress)
    try:
        for unit in units:
            bar.set_postfix_str(unit.label)
            parts.append(run_unit(unit, by_name.get(unit.backbone), images, labels, train_idx, test_idx, num_classes, cfg))
            bar.update(len(unit.runs))
    finally:
        bar.close()
    return assemble_sweep(parts, backbones, labels, train_idx, test_idx, num_classes, cfg)


def same_input_size(backbones: Sequence[Backbone], optional: Sequence[str]) -> tuple[list[Backbone], list[str]]:
    """(kept, notes): the backbones comparable like with like. Those that joined by alias,
    not by request (``optional``), and take another input size than the first (the domain
    backbone) are left out with a note; requested ones of another size are an error."""
    size = backbones[0].config.img_size
    kept = [b for b in backbones if b.name not in optional or b.config.img_size == size]
    notes = [f"leaving out baseline {b.name}: {b.config.img_size}px input, the domain backbone's {size}px"
             for b in backbones if b not in kept]
    sizes = sorted({b.config.img_size for b in kept})
    if len(sizes) != 1:
        raise ValueError(f"backbones disagree on input size {sizes}: compare like with like")
    return kept, notes


def checked_axes(backbones: Sequence[str], reference: str | None, fractions: Sequence[float],
                 seeds: Sequence[int]) -> tuple[list[str], list[float], list[int]]:
    """The (backbones, fractions, seeds) of a sweep of backbones over training fractions, checked
    before anything runs: each backbone once (``reference``, e.g. scratch, appended unless None),
    fractions in (0, 1] and seeds >= 0, both sorted and deduplicated."""
    refs = list(backbones) + ([reference] if reference is not None else [])
    if not refs:
        raise ValueError("nothing to compare: name a --backbone or keep the from-scratch reference")
    if len(set(refs)) != len(refs):
        raise ValueError(f"backbones named twice: {refs}")
    fractions = sorted({float(f) for f in fractions})
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {fractions}")
    seeds = sorted({int(s) for s in seeds})
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must be >= 0, got {seeds}")
    return refs, fractions, seeds
