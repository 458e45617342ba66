"""The label-efficiency benchmark on two domains: does a backbone pretrained on the domain's own
unlabeled images reach, with a fraction of the labels, the score a generic-corpus backbone
needs every label for?

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.label_efficiency --domain elpv --mode quick
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.label_efficiency --domain wm811k --mode quick
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.label_efficiency --domain both --mode standard

``quick`` is sized for 25 minutes a domain on 2 idle cores (it took 48-50 minutes on the shared,
loaded machine: docs/BENCHMARKS.md); ``standard`` for about an hour a domain (not run yet);
``smoke`` for the test.

Protocol (the product's own pieces: the auto recipe, ``pretrain``, the sweep with its sanity
baselines, ``adapt``, the report):

* **ELPV** (``elpv-dataset``, 2,624 cells): the project's stratified hash-assigned 75/25 split
  (components/evaluation/split.py); 4-class (defect probability 0, 1/3, 2/3, 1) and 2-class
  (>= 0.5); label fractions of the training pool, nested per seed.
* **WM-811K** (62,248 wafer maps, 9 classes): the published disjoint label sets ``train_1``
  (623 labels), ``train_10`` (6,225), ``train_10+20`` (18,674) and ``all`` (37,348), scored on the
  published ``test`` split (12,450 maps; a stratified subsample, class mix kept, in quick mode).
* **Recipe**: ``resolve_recipe('auto', profile)`` for the domain's profile on this device (input
  size and resampling, the ResNet, SimCLR, the fine-tune's optimizer / validation split /
  class balance / EMA / dihedral augmentation and TTA); the mode sets the budgets (SimCLR
  steps, fine-tune epochs) and, in smoke mode, a 32 px input. Every override is written into
  the report. (The quick WM-811K tables in docs/BENCHMARKS.md were run at 32 px without a
  max-pool stem, before the auto recipe moved wafer maps to 64 px behind one.)
* **Backbones**, one architecture, one SimCLR recipe and budget: ``domain-simclr`` (the
  domain's unlabeled images: ELPV's training images, WM-811K's train+val pool; never a test
  image), ``generic-simclr`` (``../shared/data/generic-imagenette``, grayscale, same size),
  ``generic-then-domain`` (generic-simclr continued on the domain images), ``scratch``.
* **Methods**: linear probe on frozen features (every label set and seed) and fine-tuning
  (``adapt``: the mode's sub-grid). **Sanity baselines** as rows (majority class, logistic
  regression and RBF-SVM on pixels and HOG). Accuracy, balanced accuracy and macro-F1 with
  95 % bootstrap intervals over the test set.
* **Label efficiency**: the smallest label fraction at which each backbone's seed-mean reaches
  generic-simclr's all-label score (its best method), on macro-F1 (the gate's metric) and on
  accuracy, only when that reference is significantly better than the majority class
  (``report.efficiency_claim``); per method as well.

Outputs (``--out``, default ``benchmarks/results/label-efficiency-<domain>-<mode>/``):
``results.json`` (every row, the recipe, the pretraining record, runtime and load),
``report.md``. Pretrained encoders are cached under ``--cache`` (keyed by recipe, data and
starting weights); a killed pretraining resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import components  # noqa: F401  (OMP_WAIT_POLICY before torch)
from benchmarks.device_bundle import GENERIC_CORPUS, generic_train_paths, load_elpv_bundle
from benchmarks.wafer_maps import TEST_SPLIT, load_wafer_arrays, stratified_sample, wafer_profile
from components.data.elpv import CLASS_NAMES_4, class_name, elpv_labels, elpv_root, stratified_subset
from components.data.images import Preprocess, load_image_array
from components.data.profile import DataProfile, with_labels
from components.evaluation.baselines import SANITY_BASELINES, BaselineConfig
from components.evaluation.report import beats_majority, label_efficiency_details, markdown_report, summary_table
from components.evaluation.split import test_split
from components.evaluation.sweep import Backbone, SweepConfig, run_sweep
from components.models.checkpoint import load_checkpoint, save_checkpoint
from components.training.device import cpu_threads
from components.training.pretrain import PretrainConfig, pretrain
from components.training.recipes import ResolvedRecipe, resolve_recipe, stem_pool
from components.training.resume import RUNTIME_FIELDS

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("elpv", "wm811k")
MODES = ("smoke", "quick", "standard")
BACKBONES = ("domain-simclr", "generic-then-domain", "generic-simclr", "scratch")
DOMAIN_BACKBONES = ("domain-simclr", "generic-then-domain")
REFERENCE = "generic-simclr"
DEITSCH_2019 = {"fine-tuned ImageNet VGG-19 (Deitsch et al. 2019)": 0.8842,
                "SVM on hand-crafted features (Deitsch et al. 2019)": 0.8244}


# ------------------------------------------------------------------------------ plans


@dataclass
class Plan:
    """What one (domain, mode) run does. Label sets: fractions of the training pool (ELPV) or
    the published WM-811K label sets (names of ``LABEL_SETS``)."""

    size: int | None  # input px; None: the auto recipe's
    pretrain_steps: int
    pretrain_batch: int
    continue_steps: int  # generic-then-domain: SimCLR steps on the domain after the generic ones
    label_sets: tuple  # fractions (ELPV) or label-set names (WM-811K)
    seeds: tuple[int, ...]
    finetune_sets: tuple
    finetune_seeds: tuple[int, ...]
    finetune_backbones: tuple[str, ...]
    finetune_epochs: int | None  # None: the auto recipe's
    finetune_image_budget: int | None = None  # epochs capped at budget / labels (same compute a run)
    baseline_sets: tuple = ()
    tasks: tuple[str, ...] = ("4class", "2class")
    finetune_tasks: tuple[str, ...] = ("4class", "2class")
    pool_limit: int | None = None  # domain images for pretraining (stratified subsample)
    generic_limit: int = 9469
    test_limit: int | None = None  # WM-811K test maps (stratified subsample)
    elpv_images: int | None = None  # smoke: a stratified subset of ELPV
    probe_folds: int | None = None  # smoke: CV folds of the probe's l2 choice (None: the recipe's)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)


def plan_for(domain: str, mode: str) -> Plan:
    if domain == "elpv":
        return {
            "smoke": Plan(size=32, pretrain_steps=3, pretrain_batch=16, continue_steps=2, label_sets=(0.5, 1.0),
                          seeds=(0,), finetune_sets=(1.0,), finetune_seeds=(0,), finetune_backbones=("domain-simclr", "scratch"),
                          finetune_epochs=1, baseline_sets=(1.0,), finetune_tasks=("4class",), generic_limit=48,
                          elpv_images=200, probe_folds=2, baseline=BaselineConfig(cv_folds=2, max_kernel_train=200)),
            "quick": Plan(size=128, pretrain_steps=100, pretrain_batch=64, continue_steps=30,
                          label_sets=(0.1, 0.25, 1.0), seeds=(0, 1), finetune_sets=(0.1, 1.0), finetune_seeds=(0,),
                          finetune_backbones=("domain-simclr", "generic-simclr", "scratch"), finetune_epochs=8,
                          baseline_sets=(1.0,), finetune_tasks=("4class",), generic_limit=3000),
            "standard": Plan(size=None, pretrain_steps=500, pretrain_batch=64, continue_steps=150,
                             label_sets=(0.05, 0.1, 0.25, 0.5, 1.0), seeds=(0, 1, 2), finetune_sets=(0.1, 0.25, 1.0),
                             finetune_seeds=(0,), finetune_backbones=BACKBONES, finetune_epochs=25,
                             baseline_sets=(0.1, 0.25, 1.0)),
        }[mode]
    return {
        "smoke": Plan(size=32, pretrain_steps=3, pretrain_batch=16, continue_steps=2, label_sets=("train_1", "all"),
                      seeds=(0,), finetune_sets=("train_1",), finetune_seeds=(0,), finetune_backbones=("domain-simclr",),
                      finetune_epochs=1, baseline_sets=("train_1",), tasks=("9class",), pool_limit=300, generic_limit=48,
                      test_limit=200, probe_folds=2, baseline=BaselineConfig(cv_folds=2, max_kernel_train=200)),
        "quick": Plan(size=None, pretrain_steps=80, pretrain_batch=128, continue_steps=25,
                      label_sets=("train_1", "train_10", "train_10+20", "all"), seeds=(0,),
                      finetune_sets=("train_1", "train_10"), finetune_seeds=(0,),
                      finetune_backbones=("domain-simclr", "generic-simclr", "scratch"), finetune_epochs=15,
                      finetune_image_budget=8000, baseline_sets=("train_1",), tasks=("9class",),
                      pool_limit=15000, generic_limit=5000, test_limit=3000),
        "standard": Plan(size=None, pretrain_steps=500, pretrain_batch=128, continue_steps=150,
                         label_sets=("train_1", "train_10", "train_10+20", "all"), seeds=(0, 1),
                         finetune_sets=("train_1", "train_10", "all"), finetune_seeds=(0,),
                         finetune_backbones=("domain-simclr", "generic-simclr", "scratch"), finetune_epochs=20,
                         finetune_image_budget=70000, baseline_sets=("train_1", "train_10", "all"),
                         tasks=("9class",), generic_limit=9469, test_limit=None),
    }[mode]


# ------------------------------------------------------------------------------ data


def cached_array(cache: Path, key: str, build) -> np.ndarray:
    path = cache / f"{key}.npy"
    if path.exists():
        return np.load(path)
    arr = build()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), arr)
    path.with_suffix(".tmp.npy").rename(path)
    return arr


def load_elpv(size: "int | Preprocess", cache: Path, bundle: Path | None = None,
              subset: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, size, size], 4-class labels, 2-class labels, file sha256s) in labels.csv
    order, from the elpv-dataset package or from a device bundle's ``elpv-<size>/`` folder;
    ``subset``: that many images, stratified by 4-class label (smoke runs)."""
    pre = Preprocess.coerce(size)
    four = lambda p: CLASS_NAMES_4.index(class_name(p))  # noqa: E731
    if bundle is not None:
        images, probabilities, shas = load_elpv_bundle(bundle, pre.size)
        if subset:
            keep = stratified_subset([str(four(p)) for p in probabilities], subset)
            images, probabilities, shas = images[keep], [probabilities[i] for i in keep], [shas[i] for i in keep]
    else:
        from tqdm.auto import tqdm

        rows, root = elpv_labels(), elpv_root()
        if subset:  # only the subset is read and decoded
            rows = [rows[i] for i in stratified_subset([str(four(r.probability)) for r in rows], subset)]
        shas = [hashlib.sha256((root / r.path).read_bytes()).hexdigest() for r in rows]
        probabilities = [r.probability for r in rows]
        tag = "" if pre.is_default else f"-{pre.resample}-{pre.aspect}"
        images = cached_array(cache, f"elpv-{pre.size}{tag}-{hashlib.sha256(''.join(shas).encode()).hexdigest()[:12]}",
                              lambda: np.stack([load_image_array(root / r.path, pre)
                                                for r in tqdm(rows, desc="decode ELPV", leave=False)]))
    y4 = np.array([four(p) for p in probabilities])
    y2 = np.array([int(p >= 0.5) for p in probabilities])
    return images, y4, y2, shas


def load_generic(corpus: Path, pre: "int | Preprocess", limit: int, cache: Path) -> np.ndarray:
    """The generic corpus's first ``limit`` training images, grayscale, decoded as photographs
    (bicubic, stretched) at the domain's input size: the backbones share one architecture."""
    from tqdm.auto import tqdm

    photo = Preprocess(Preprocess.coerce(pre).size)
    paths = generic_train_paths(corpus)[:limit]
    return cached_array(cache, f"generic-{corpus.name}-{photo.size}-{len(paths)}",
                        lambda: np.stack([load_image_array(p, photo) for p in tqdm(paths, desc="decode generic", leave=False)]))


@dataclass
class Task:
    """One classification task of a domain: images, labels, the test split and the label sets."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    test_idx: np.ndarray
    label_sets: dict  # key (fraction or name) -> (train_idx, fraction passed to the sweep, fraction reported)


# ------------------------------------------------------------------------------ pretraining (cached)


def pretrained_encoder(name: str, images: np.ndarray, cfg: PretrainConfig, cache: Path,
                       init: dict | None = None) -> tuple[dict, dict]:
    """Encoder state of ``cfg`` on ``images`` (from ``init``), cached; resumes a killed run."""
    recipe = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    init_fp = hashlib.sha256(save_checkpoint(init)).hexdigest() if init else None
    key = hashlib.sha256(json.dumps({"recipe": recipe, "data": hashlib.sha256(images.data).hexdigest(),
                                     "init": init_fp}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache / f"{name}-{key}.pt"
    if path.exists():
        saved = load_checkpoint(path.read_bytes())
        return saved["state_dict"], saved["info"]
    print(f"pretraining {name}: {cfg.method}, {cfg.steps} steps x {cfg.batch_size} images of {len(images)}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    result = pretrain(images, cfg, progress=True, init_encoder_state=init, checkpoint_path=cache / f"{name}-{key}.resume.pt")
    info = {"method": cfg.method, "steps": len(result.losses), "batch_size": cfg.batch_size, "images": len(images),
            "seconds": round(result.seconds, 1), "first_loss": round(result.losses[0], 4),
            "final_loss": round(result.losses[-1], 4), "resumed_from_step": result.resumed_from_step}
    path.write_bytes(save_checkpoint({"state_dict": result.encoder_state, "info": info}))
    (cache / f"{name}-{key}.resume.pt").unlink(missing_ok=True)
    return result.encoder_state, info


# ------------------------------------------------------------------------------ one domain


def domain_data(domain: str, plan: Plan, cache: Path, args) -> tuple[list[Task], np.ndarray, DataProfile, dict]:
    """The tasks, the unlabeled domain pool for pretraining, the profile the auto recipe is chosen
    from, and a description of the data for the report."""
    if domain == "elpv":
        rows = elpv_labels()
        # What profile_manifest records for the ELPV images (300x300 photographs).
        profile = with_labels(DataProfile(n_images=len(rows), median_width=300, median_height=300, median_aspect=1.0),
                              [CLASS_NAMES_4.index(class_name(r.probability)) for r in rows])
        return [], np.zeros((0, 1, 1), np.uint8), profile, {}
    data = load_wafer_arrays(plan.size or 32, cache, args.npz)
    profile = wafer_profile(data, data.label_set("all"))
    return [], np.zeros((0, 1, 1), np.uint8), profile, {"wafer": data}


def build_tasks(domain: str, plan: Plan, pre: Preprocess, cache: Path, args, extra: dict) -> tuple[list[Task], np.ndarray, dict]:
    if domain == "elpv":
        images, y4, y2, shas = load_elpv(pre, cache, args.elpv_bundle, plan.elpv_images)
        train_idx, test_idx = test_split(shas, y4, test_fraction=0.25)
        tasks = []
        for name, y, c in (("4class", y4, 4), ("2class", y2, 2)):
            if name in plan.tasks:
                tasks.append(Task(name, images, y, c, test_idx, {f: (train_idx, f, f) for f in plan.label_sets}))
        source = f"ELPV from {args.elpv_bundle}" if args.elpv_bundle else "ELPV from the elpv-dataset package"
        about = {"source": source, "images": len(images), "train": len(train_idx), "test": len(test_idx),
                 "split": "stratified hash-assigned 75/25 (components/evaluation/split.py)"}
        return tasks, images[train_idx], about
    data = extra["wafer"]
    if data.preprocess.size != pre.size:
        data = load_wafer_arrays(pre.size, cache, args.npz)
    test_idx = stratified_sample(data.indices(TEST_SPLIT), data.labels, plan.test_limit, seed=0)
    n_all = len(data.label_set("all"))
    sets = {name: (data.label_set(name), 1.0, round(len(data.label_set(name)) / n_all, 4)) for name in plan.label_sets}
    pool = data.indices("train_1", "train_10", "train_20", "train_29", "val")
    pool = stratified_sample(pool, data.labels, plan.pool_limit, seed=0)
    about = {"maps": len(data.labels), "labels_all": n_all, "test": len(test_idx),
             "test_of": len(data.indices(TEST_SPLIT)), "pretraining_pool": len(pool),
             "label_sets": {k: len(v[0]) for k, v in sets.items()}}
    return [Task("9class", data.images, data.labels, len(data.classes), test_idx, sets)], data.images[pool], about


def planned_recipe(domain: str, plan: Plan, profile: DataProfile, threads: int, device: str) -> tuple[ResolvedRecipe, dict]:
    """The auto recipe for this data, with the plan's budgets; (recipe, overrides with reasons)."""
    recipe = resolve_recipe("auto", profile, device=device, threads=threads, pretrain=True)
    overrides = {}
    pre, backbone = recipe.preprocess, recipe.backbone
    if plan.size and plan.size != pre.size:
        overrides["input size"] = f"{plan.size} px instead of the auto recipe's {pre.size} (mode budget)"
        pre = dataclasses.replace(pre, size=plan.size)
        if hasattr(backbone, "stem_pool"):
            backbone = dataclasses.replace(backbone, stem_pool=stem_pool(plan.size, profile.categorical, device))
        backbone = dataclasses.replace(backbone, img_size=plan.size)
    sim = dataclasses.replace(recipe.pretrain, backbone=backbone, steps=plan.pretrain_steps, batch_size=plan.pretrain_batch,
                              warmup_steps=max(1, plan.pretrain_steps // 10), max_seconds=None, device=device)
    overrides["simclr"] = f"{plan.pretrain_steps} steps x {plan.pretrain_batch} (mode budget; auto: {recipe.pretrain.steps} x {recipe.pretrain.batch_size})"
    adapt = dict(recipe.adapt)
    if plan.probe_folds and plan.probe_folds != adapt["probe"].probe_folds:
        # Every probe fit chooses its l2 by cross-validation: with the recipe's folds the probes
        # were half of a smoke run's time.
        overrides["probe folds"] = f"{plan.probe_folds} (mode budget; auto: {adapt['probe'].probe_folds})"
        adapt["probe"] = dataclasses.replace(adapt["probe"], probe_folds=plan.probe_folds)
    if plan.finetune_epochs:
        overrides["fine-tune epochs"] = (f"{plan.finetune_epochs} (mode budget; auto: {adapt['finetune'].epochs})"
                                         + (f", capped at {plan.finetune_image_budget} images a run" if plan.finetune_image_budget else ""))
        adapt["finetune"] = dataclasses.replace(adapt["finetune"], epochs=plan.finetune_epochs,
                                                patience=max(5, plan.finetune_epochs // 4))
    adapt = {m: dataclasses.replace(c, max_seconds=None, device=device) for m, c in adapt.items()}
    return dataclasses.replace(recipe, preprocess=pre, pretrain=sim, adapt=adapt), overrides


def finetune_for(plan: Plan, base, n_labels: int):
    """The fine-tune config for a label set of ``n_labels``: the plan's epochs, capped so that a
    run sees at most ``finetune_image_budget`` images (the validation split is carved first)."""
    if not plan.finetune_image_budget:
        return base
    epochs = max(1, min(base.epochs, round(plan.finetune_image_budget / max(1, 0.9 * n_labels))))
    return dataclasses.replace(base, epochs=epochs, patience=max(5, epochs // 4),
                               warmup_epochs=base.warmup_epochs if epochs >= 10 else 0.5)


def run_task(task: Task, backbones: list[Backbone], plan: Plan, recipe: ResolvedRecipe, args, trained: bool) -> tuple[list[dict], dict]:
    """Every label set of a task through the sweep; rows carry the reported fraction and label set.
    Returns (rows, the 100 %-label sweep as ``to_dict`` for the reference's majority check)."""
    rows, full = [], None
    for key, (train_idx, sweep_fraction, fraction) in task.label_sets.items():
        fractions = (sweep_fraction,)
        ft_here = trained and key in plan.finetune_sets
        n_labels = len(train_idx) if sweep_fraction == 1.0 else int(round(sweep_fraction * len(train_idx)))
        cfg = SweepConfig(
            fractions=fractions, seeds=plan.seeds, methods=("probe",), probe=recipe.adapt["probe"],
            finetune=finetune_for(plan, recipe.adapt["finetune"], n_labels), finetune_seeds=plan.finetune_seeds,
            # The majority class everywhere (the label-efficiency reference must beat it); the
            # fitted baselines where the mode's budget allows.
            baselines=SANITY_BASELINES if key in plan.baseline_sets else ("majority",), baseline=plan.baseline,
            device=args.device)
        t0 = time.perf_counter()
        result = run_sweep(backbones, task.images, task.labels, train_idx, task.test_idx, task.num_classes, cfg)
        part = list(result.rows)
        full_dict = result.to_dict(include_proba=False) if fraction == 1.0 else None
        if ft_here:
            ft = run_sweep([b for b in backbones if b.name in plan.finetune_backbones], task.images, task.labels,
                           train_idx, task.test_idx, task.num_classes, dataclasses.replace(cfg, methods=("finetune",), baselines=()))
            part += ft.rows
            if full_dict is not None:
                extra = ft.to_dict(include_proba=False)
                full_dict["rows"] += extra["rows"]
                full_dict["predictions"] += extra["predictions"]
        for r in part:
            r["label_set"] = key if isinstance(key, str) else f"{100 * key:g} %"
            r["fraction"] = fraction
        if full_dict is not None:
            for r in full_dict["rows"]:
                r["fraction"] = 1.0
            full = full_dict
        rows += part
        print(f"{task.name} {rows[-1]['label_set']}: {len(part)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows, full


def efficiency_records(rows: list[dict], full: dict | None, metric: str) -> dict:
    """Label efficiency against generic-simclr on ``metric``: withheld (with the reason) unless the
    reference is significantly better than the majority class; best method and per method."""
    targets = [b for b in BACKBONES if b != REFERENCE]
    table = summary_table(rows)
    ref_full = [s for s in table if s["backbone"] == REFERENCE and s["fraction"] == 1.0]
    if not ref_full or full is None:
        return {"metric": metric, "withheld": "no all-label run of the reference"}
    best = max(ref_full, key=lambda s: s["metrics"][metric]["value"])["method"]
    check = beats_majority(full, REFERENCE, best, metric) if any(
        r["backbone"] == "baseline" and r["method"] == "majority" for r in full["rows"]) else None
    if check is not None and not check["passed"]:
        return {"metric": metric, "reference_check": check, "withheld": "the reference is not significantly better "
                "than the majority class"}
    out = {"metric": metric, "reference": REFERENCE, "reference_check": check, "by_method": {}}
    for method in (None, "probe", "finetune"):
        if method and not any(s["method"] == method for s in ref_full):
            out["by_method"][method] = f"no all-label {method} run of {REFERENCE} in this mode"
            continue
        present = [t for t in targets if any(r["backbone"] == t and (method is None or r["method"] == method) for r in rows)]
        out["by_method"][method or "best"] = label_efficiency_details(rows, REFERENCE, present, metric, method)
    return out


def efficiency_lines(eff: dict, label_of: dict) -> list[str]:
    metric = eff["metric"].replace("_", " ")
    if "withheld" in eff:
        return [f"- on {metric}: no ratio: {eff['withheld']}."]
    lines = []
    for method, details in eff["by_method"].items():
        if isinstance(details, str):
            lines.append(f"- {metric}, {method}: {details}.")
            continue
        for d in details:
            bar = f"{REFERENCE} / {d['reference_method']} with every label ({d['reference_value']:.3f})"
            if d["fraction"] is None:
                lines.append(f"- {metric}, {method}: **{d['target']} does not reach** {bar} with any label set tried.")
            else:
                lines.append(f"- {metric}, {method}: **{d['target']}** reaches {bar} with **{label_of.get(d['fraction'], d['fraction'])}** "
                             f"of the labels ({d['value']:.3f}, {d['target_method']}): ratio {1 / d['fraction']:.3g}x.")
    return lines


def run_domain(domain: str, mode: str, args, runtime: dict) -> dict:
    plan = plan_for(domain, mode)
    if args.size:
        plan.size = args.size
    if args.generic_images:
        plan.generic_limit = args.generic_images
    if args.seeds:
        plan.seeds = tuple(int(s) for s in args.seeds.split(","))
        plan.finetune_seeds = tuple(s for s in plan.finetune_seeds if s in plan.seeds) or plan.seeds[:1]
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    _, _, profile, extra = domain_data(domain, plan, args.cache, args)
    device = "cuda" if args.device != "cpu" and __import__("torch").cuda.is_available() else "cpu"
    recipe, overrides = planned_recipe(domain, plan, profile, runtime["threads"], device)
    tasks, pool, about = build_tasks(domain, plan, recipe.preprocess, args.cache, args, extra)
    generic = load_generic(args.generic_corpus, recipe.preprocess, plan.generic_limit, args.cache)
    print(recipe.describe(), f"\noverrides: {overrides}\ndata: {about}; generic {len(generic)} images", flush=True)

    info, states = {}, {}
    states["domain-simclr"], info["domain-simclr"] = pretrained_encoder(f"{domain}-domain-simclr", pool, recipe.pretrain, args.cache)
    states["generic-simclr"], info["generic-simclr"] = pretrained_encoder(f"{domain}-generic-simclr", generic, recipe.pretrain, args.cache)
    cont = dataclasses.replace(recipe.pretrain, steps=plan.continue_steps, warmup_steps=max(1, plan.continue_steps // 10))
    states["generic-then-domain"], info["generic-then-domain"] = pretrained_encoder(
        f"{domain}-generic-then-domain", pool, cont, args.cache, init=states["generic-simclr"])
    backbones = [Backbone(n, recipe.backbone, states.get(n)) for n in BACKBONES]
    pretrain_s = time.perf_counter() - t_start

    report = [f"# Label efficiency on {domain.upper()} ({mode} mode)", ""]
    results: dict = {"domain": domain, "mode": mode, "recipe": recipe.to_dict(), "overrides": overrides,
                     "plan": json.loads(json.dumps(dataclasses.asdict(plan), default=str)), "data": about,
                     "pretraining": info, "tasks": {}}
    for task in tasks:
        t0 = time.perf_counter()
        trained = task.name in plan.finetune_tasks or domain == "wm811k"
        rows, full = run_task(task, backbones, plan, recipe, args, trained=trained)
        label_of = {v[2]: (k if isinstance(k, str) else f"{100 * k:g} %") for k, v in task.label_sets.items()}
        effs = [efficiency_records(rows, full, m) for m in ("macro_f1", "accuracy")]
        context = {
            "data": f"{domain} {task.name}: {about}",
            "label sets": ", ".join(f"{label_of[v[2]]} = {100 * v[2]:.3g} % ({len(v[0]) if v[1] == 1.0 else round(v[1] * len(v[0]))} labels)"
                                    for v in task.label_sets.values()),
            "recipe": recipe.describe().replace("\n", "; "),
            "overrides": "; ".join(f"{k}: {v}" for k, v in overrides.items()),
            "pretraining": "; ".join(f"{n}: {i['steps']} steps x {i['batch_size']} of {i['images']} images, "
                                     f"{i['seconds']} s, loss {i['first_loss']} -> {i['final_loss']}" for n, i in info.items()),
            "fine-tuning": (f"{', '.join(plan.finetune_backbones)} at {', '.join(label_of[task.label_sets[k][2]] for k in plan.finetune_sets if k in task.label_sets)}, "
                            f"seeds {list(plan.finetune_seeds)}" if trained else "none for this task in this mode (probes only)"),
            "sweep": f"{len(rows)} runs in {time.perf_counter() - t0:.0f} s",
        }
        md = markdown_report(rows, f"{domain.upper()} {task.name}", context, efficiency_metric="macro_f1")
        md = md.replace(f"# {domain.upper()} {task.name}", f"## {domain.upper()} {task.name}", 1).replace("\n## ", "\n### ")
        report += [md, "### Label efficiency against generic-simclr's all-label score", ""]
        report += efficiency_lines(effs[0], label_of) + efficiency_lines(effs[1], label_of) + [""]
        if domain == "elpv" and task.name == "4class":
            report += [f"- Deitsch et al. 2019 on the same kind of split: {', '.join(f'{k} {v}' for k, v in DEITSCH_2019.items())}.", ""]
        results["tasks"][task.name] = {"rows": rows, "label_efficiency": effs}
    total = time.perf_counter() - t_start
    load_end = os.getloadavg()
    command = "python -m benchmarks.label_efficiency " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    where = f"{device}, {runtime['threads']} torch thread(s), OMP_WAIT_POLICY={runtime['omp_wait_policy'] or 'unset'}"
    results.update(command=command, device=where, runtime=runtime, seconds=round(total, 1),
                   pretrain_seconds=round(pretrain_s, 1),
                   load_avg={"start_1_5_15": [round(v, 2) for v in load_start], "end_1_5_15": [round(v, 2) for v in load_end]})
    report += [f"Wall time {total / 60:.1f} min (pretraining {pretrain_s / 60:.1f}) on {where}; load average "
               f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end (1 min). Command: `{command}`.", ""]
    out = args.out / f"label-efficiency-{domain}-{mode}" if args.out else ROOT / "benchmarks" / "results" / f"label-efficiency-{domain}-{mode}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report), flush=True)
    print(f"wrote {out}/report.md and results.json in {total / 60:.1f} min", flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=(*DOMAINS, "both"), default="both")
    ap.add_argument("--mode", choices=MODES, default="quick")
    ap.add_argument("--out", type=Path, default=None, help="parent folder of label-efficiency-<domain>-<mode>/")
    ap.add_argument("--cache", type=Path, default=ROOT / ".dlvm" / "bench-cache")
    ap.add_argument("--generic-corpus", type=Path, default=GENERIC_CORPUS)
    ap.add_argument("--elpv-bundle", type=Path, default=None,
                    help="ELPV from a device bundle's elpv-<size>/ folder instead of the elpv-dataset package")
    ap.add_argument("--npz", type=Path, default=None, help="wm811k.npz (default: $DLVM_WM811K_NPZ or the data shelf)")
    ap.add_argument("--size", type=int, default=None, help="input px (default: the mode's; a device bundle's own size)")
    ap.add_argument("--generic-images", type=int, default=None, help="generic-corpus images to pretrain on (default: the mode's)")
    ap.add_argument("--seeds", default=None, help="override the mode's seeds, e.g. 0,1,2")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: DLVM_THREADS or by load)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    args.argv = argv
    runtime = cpu_threads(args.threads)
    domains = DOMAINS if args.domain == "both" else (args.domain,)
    try:
        return {d: run_domain(d, args.mode, args, runtime) for d in domains}
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"label_efficiency: {exc}") from None


if __name__ == "__main__":
    main()
