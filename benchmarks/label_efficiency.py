"""The label-efficiency benchmark on ELPV: does a domain-pretrained backbone reach the best
generic backbone's full-label accuracy with a fraction of the labels?

    .venv/bin/python -m benchmarks.label_efficiency --quick          # < 25 min on 2 CPU cores
    .venv/bin/python -m benchmarks.label_efficiency                  # the full grid (GPU hours)
    bash benchmarks/device_check.sh label-efficiency                 # --recipe gpu: one H100, < 9 min
    .venv/bin/python -m benchmarks.label_efficiency --quick --weights vit_tiny.safetensors   # + published weights

Protocol (everything the product's evaluation uses, on identical splits):

* data: ELPV's 2,624 electroluminescence images (``elpv-dataset``), grayscale at the recipe's
  resolution; a 75/25 stratified, hash-assigned split as in Deitsch et al. 2019 (1,968 / 656);
  tasks 4-class (defect probability 0, 1/3, 2/3, 1) and 2-class (probability >= 0.5).
* backbones, one ViT architecture, one compute budget (steps x batch) per SSL method:
  ``domain-mae`` and ``domain-dino`` pretrained on the **training** images only (their labels
  unused; the test images are never seen), ``generic-mae`` / ``generic-dino`` pretrained on the
  generic corpus (``../shared/data/generic-imagenette``, converted to grayscale), ``generic-then-domain``
  (the generic MAE backbone continued with MAE on the domain images: transductive adaptation),
  ``scratch`` (random initialization), and with ``--weights`` published timm/HF ViT weights.
* adaptation: linear probe and nearest-class-mean prototypes on frozen features (every fraction
  and seed), fine-tuning and LoRA on the recipe's sub-grid (each is a training run).
* label fractions 5, 10, 25, 50, 100 % of the training pool (nested subsets per seed), 3 seeds;
  accuracy, macro-F1 and balanced accuracy with 95 % bootstrap intervals over the test set.
* label-efficiency: the smallest fraction at which a domain backbone's seed-mean accuracy reaches
  the best generic backbone's (generic-* and scratch) 100 %-label accuracy, per method and with
  each side's best method.

Outputs go to ``--out`` (default ``benchmarks/results/label-efficiency-<recipe>/``): ``results.json``
(every run), ``report.md`` (tables + verdicts), ``curve-4class.png`` / ``curve-2class.png``.
Pretrained encoders are cached under ``--cache`` (keyed by recipe, data and starting weights), so a
rerun only re-evaluates; a killed pretraining resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.device_bundle import (
    GENERIC_CORPUS,
    generic_train_paths,
    load_elpv_bundle,
)
from components.data.elpv import (
    CLASS_NAMES_4,
    class_name,
    elpv_labels,
    elpv_root,
    stratified_subset,
)
from components.data.images import load_image_array
from components.evaluation.report import (
    label_efficiency_details,
    plot_curves,
    summary_table,
)
from components.evaluation.split import test_split
from components.evaluation.sweep import Backbone, SweepConfig, run_sweep
from components.models.checkpoint import load_checkpoint, save_checkpoint
from components.models.vit import VisionTransformer, ViTConfig
from components.models.weight_mapping import load_pretrained_weights
from components.models.weights_file import read_state_dict
from components.training.adapt import AdaptConfig
from components.training.device import pick_device
from components.training.pretrain import RUNTIME_FIELDS, PretrainConfig, pretrain
from components.training.recipes import demo_dino_pretrain, tiny_adapt, tiny_pretrain

ROOT = Path(__file__).resolve().parents[1]

DEITSCH_2019 = {"fine-tuned ImageNet VGG-19 (Deitsch et al. 2019)": 0.8842,
                "SVM on hand-crafted features (Deitsch et al. 2019)": 0.8244}


# ------------------------------------------------------------------------------ recipes


@dataclasses.dataclass
class Recipe:
    """What one benchmark run does; ``quick`` fits 25 minutes on 2 CPU cores."""

    vit: ViTConfig
    mae: PretrainConfig
    dino: PretrainConfig
    continue_steps: int  # generic-then-domain: extra steps on the domain images
    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("probe", "prototype", "finetune", "lora")
    trained_fractions: tuple[float, ...] | None = None  # fine-tune / LoRA sub-grid (None: all)
    trained_seeds: tuple[int, ...] | None = None
    trained_tasks: tuple[str, ...] = ("4class", "2class")
    trained_backbones: tuple[str, ...] | None = None  # fine-tune / LoRA only these (None: all)
    finetune: AdaptConfig = dataclasses.field(default_factory=lambda: AdaptConfig(method="finetune", epochs=10))
    lora: AdaptConfig = dataclasses.field(default_factory=lambda: AdaptConfig(method="lora", epochs=10))
    probe: AdaptConfig = dataclasses.field(default_factory=lambda: AdaptConfig(method="probe"))
    generic_images: int = 9469  # the generic corpus's train split
    elpv_images: int | None = None  # a stratified subset (smoke runs); None = all 2,624


def quick_recipe() -> Recipe:
    vit = ViTConfig.tiny(64, 8, depth=6, global_pool="avg")
    return Recipe(
        vit=vit,
        mae=PretrainConfig(method="mae", backbone=vit, steps=200, batch_size=128, warmup_steps=20),
        dino=dino_recipe(vit, steps=200),
        continue_steps=50,
        methods=("probe", "prototype", "finetune"),
        trained_fractions=(0.1, 1.0), trained_seeds=(0,), trained_tasks=("4class",),
        trained_backbones=("domain-mae", "generic-mae", "scratch"),
        finetune=AdaptConfig(method="finetune", epochs=3),
        probe=AdaptConfig(method="probe", probe_folds=3),
    )


def full_recipe() -> Recipe:
    vit = ViTConfig.small(128, 16, global_pool="avg")
    return Recipe(
        vit=vit,
        mae=PretrainConfig(method="mae", backbone=vit, steps=20000, batch_size=256, lr=1.5e-3, warmup_steps=1000,
                           decoder_dim=256, decoder_depth=4, decoder_heads=8),
        dino=dino_recipe(vit, steps=20000, batch_size=256),
        continue_steps=5000,
    )


def gpu_recipe() -> Recipe:
    """One lent H100 in under 9 minutes (``benchmarks/device_check.sh``): ViT-S/16 at 128 px,
    MAE ~1,000 epochs of the domain pool, fine-tune 20 epochs at 10 / 25 / 100 % x 3 seeds on
    4-class. The generic corpus is the device bundle's 5,000 images (all that travels)."""
    vit = ViTConfig.small(128, 16, global_pool="avg")
    return Recipe(
        vit=vit,
        mae=PretrainConfig(method="mae", backbone=vit, steps=3000, batch_size=512, lr=1.5e-3, warmup_steps=300,
                           decoder_dim=256, decoder_depth=4, decoder_heads=8),
        dino=dino_recipe(vit, steps=1500, batch_size=256),
        continue_steps=1000,
        methods=("probe", "prototype", "finetune"),  # LoRA: the full recipe (the budget holds one trained method)
        trained_fractions=(0.1, 0.25, 1.0), trained_tasks=("4class",),
        trained_backbones=("domain-mae", "generic-then-domain", "generic-mae", "scratch"),
        finetune=AdaptConfig(method="finetune", epochs=20, batch_size=128),
        probe=AdaptConfig(method="probe", probe_folds=3),  # the probes' L-BFGS runs on the CPU, one thread
        generic_images=5000,
    )


def smoke_recipe() -> Recipe:
    """Seconds-long: checks the script end to end (tests), measures nothing."""
    vit = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool="avg")
    tiny = dict(backbone=vit, steps=4, batch_size=16, warmup_steps=1, device="cpu")
    return Recipe(
        vit=vit,
        mae=tiny_pretrain(**tiny),
        dino=dataclasses.replace(dino_recipe(vit, steps=4, batch_size=16), dino_out_dim=64, dino_hidden_dim=64,
                                 dino_bottleneck_dim=32, device="cpu"),
        continue_steps=2, fractions=(0.5, 1.0), seeds=(0,), methods=("probe", "prototype", "finetune"),
        trained_fractions=(1.0,), trained_tasks=("4class",),
        finetune=tiny_adapt("finetune", epochs=1, max_seconds=5), probe=tiny_adapt("probe", probe_l2=1e-2),
        generic_images=64, elpv_images=240,
    )


RECIPES = {"quick": quick_recipe, "gpu": gpu_recipe, "full": full_recipe, "smoke": smoke_recipe}


def dino_recipe(vit: ViTConfig, steps: int, batch_size: int = 32) -> PretrainConfig:
    """The DINO preset (``recipes.demo_dino_pretrain``: masked student, constant teacher temperature
    0.04, momentum 0.99 -> 1, crops of 40-100 %) on ``vit``."""
    return demo_dino_pretrain(backbone=vit, steps=steps, batch_size=batch_size, warmup_steps=max(1, steps // 10))


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


def load_elpv(size: int, cache: Path, bundle: Path | None = None,
              subset: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, size, size], 4-class labels, 2-class labels, file sha256s) in labels.csv
    order, from the elpv-dataset package or from a device bundle's ``elpv-<size>/`` folder;
    ``subset``: that many images, stratified by 4-class label (smoke runs)."""
    if bundle is not None:
        images, probabilities, shas = load_elpv_bundle(bundle, size)
    else:
        rows, root = elpv_labels(), elpv_root()
        shas = [hashlib.sha256((root / r.path).read_bytes()).hexdigest() for r in rows]
        probabilities = [r.probability for r in rows]
        images = cached_array(cache, f"elpv-{size}-{hashlib.sha256(''.join(shas).encode()).hexdigest()[:12]}",
                              lambda: np.stack([load_image_array(root / r.path, size)
                                                for r in tqdm(rows, desc="decode ELPV", leave=False)]))
    y4 = np.array([CLASS_NAMES_4.index(class_name(p)) for p in probabilities])
    y2 = np.array([int(p >= 0.5) for p in probabilities])
    if subset:
        keep = stratified_subset([str(v) for v in y4], subset)
        return images[keep], y4[keep], y2[keep], [shas[i] for i in keep]
    return images, y4, y2, shas


def load_generic(corpus: Path, size: int, limit: int, cache: Path) -> np.ndarray:
    """The generic corpus's training images, grayscale at ``size`` (the backbone is grayscale)."""
    paths = generic_train_paths(corpus)[:limit]
    return cached_array(cache, f"generic-{corpus.name}-{size}-{len(paths)}",
                        lambda: np.stack([load_image_array(p, size) for p in tqdm(paths, desc="decode generic", leave=False)]))


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
    result = pretrain(images, cfg, progress=True, init_encoder_state=init, checkpoint_path=cache / f"{name}-{key}.resume.pt")
    info = {"method": cfg.method, "steps": len(result.losses), "batch_size": cfg.batch_size, "images": len(images),
            "seconds": round(result.seconds, 1), "final_loss": round(result.losses[-1], 4),
            "resumed_from_step": result.resumed_from_step}
    path.write_bytes(save_checkpoint({"state_dict": result.encoder_state, "info": info}))
    (cache / f"{name}-{key}.resume.pt").unlink(missing_ok=True)
    return result.encoder_state, info


def published_backbone(path: Path, vit: ViTConfig) -> dict:
    """Published generic weights, loaded into our architecture (clear error on a mismatch)."""
    encoder = VisionTransformer(vit)
    load_pretrained_weights(encoder, read_state_dict(path)[0])
    return encoder.state_dict()


# ------------------------------------------------------------------------------ report


def efficiency_lines(rows: list[dict], domain: list[str], generic: list[str], methods: tuple[str, ...],
                     bar_name: str = "best generic") -> tuple[list[str], list[dict]]:
    """Markdown lines + records: for each method (and 'best method'), the fraction at which each
    domain backbone reaches the best generic backbone's 100 %-label accuracy."""
    table = summary_table(rows)
    lines, records = [], []
    for method in [*methods, None]:
        full = [(s["metrics"]["accuracy"]["value"], s["backbone"], s["method"]) for s in table
                if s["fraction"] == 1.0 and s["backbone"] in generic and (method is None or s["method"] == method)]
        if not full:
            continue
        ref_value, ref, _ = max(full)
        present = {s["backbone"] for s in table if method is None or s["method"] == method}
        for d in label_efficiency_details(rows, ref, [b for b in domain if b in present], "accuracy", method):
            d = {**d, "method": method or "best"}
            records.append(d)
            bar = f"{ref} {d['reference_method']} at 100 % ({ref_value:.3f})"
            verdict = (f"reaches it with **{100 * d['fraction']:g} %** of the labels ({d['value']:.3f}, {d['target_method']})"
                       if d["fraction"] is not None else "**does not reach it** at any fraction tried")
            lines.append(f"| {method or 'best of each'} | {d['target']} | {bar} | {verdict} |")
    header = [f"| method | domain backbone | bar: {bar_name} at 100 % labels | result |", "|---|---|---|---|"]
    return header + lines, records


def accuracy_table(rows: list[dict], metric: str = "accuracy") -> list[str]:
    """Backbone / method down, label fraction across; seed-mean [mean 95 % CI] per cell."""
    table = summary_table(rows)
    fractions = sorted({s["fraction"] for s in table})
    curves = list(dict.fromkeys((s["backbone"], s["method"]) for s in table))
    cell = {(s["backbone"], s["method"], s["fraction"]): s["metrics"][metric] for s in table}
    n_train = {s["fraction"]: s["n_train"] for s in table}
    out = ["| backbone / method | " + " | ".join(f"{100 * f:g} % ({n_train[f]:.0f})" for f in fractions) + " |",
           "|---|" + "---|" * len(fractions)]
    for b, m in curves:
        cells = [f"{c['value']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]" if (c := cell.get((b, m, f))) else "–"
                 for f in fractions]
        out.append(f"| {b} / {m} | " + " | ".join(cells) + " |")
    return out


def deitsch_lines(rows: list[dict]) -> list[str]:
    out = ["| model (4-class, 75/25 stratified split, 100 % labels) | accuracy [95 % CI] |", "|---|---|"]
    for s in summary_table(rows):
        if s["fraction"] == 1.0:
            m = s["metrics"]["accuracy"]
            out.append(f"| {s['backbone']} / {s['method']} | {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] |")
    out += [f"| {name} | {value:.4f} (published) |" for name, value in DEITSCH_2019.items()]
    return out


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the CPU recipe: < 25 min on 2 cores (= --recipe quick)")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="full")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=ROOT / ".dlvm" / "bench-cache")
    ap.add_argument("--generic-corpus", type=Path, default=GENERIC_CORPUS)
    ap.add_argument("--elpv-bundle", type=Path, default=None,
                    help="ELPV from a device bundle's elpv-<size>/ folder instead of the elpv-dataset package")
    ap.add_argument("--weights", type=Path, default=None, help="published generic ViT weights (timm/HF) as another baseline")
    ap.add_argument("--tasks", default="4class,2class")
    ap.add_argument("--seeds", default=None, help="override the recipe's seeds, e.g. 0,1,2")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    name = "quick" if args.quick else args.recipe
    recipe = RECIPES[name]()
    if args.seeds:
        recipe.seeds = tuple(int(s) for s in args.seeds.split(","))
        recipe.trained_seeds = tuple(s for s in (recipe.trained_seeds or recipe.seeds) if s in recipe.seeds) or recipe.seeds[:1]
    for cfg in (recipe.mae, recipe.dino):
        cfg.device = args.device
    out = args.out or ROOT / "benchmarks" / "results" / f"label-efficiency-{name}"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    size = recipe.vit.img_size

    # data + the Deitsch-style split
    try:
        images, y4, y2, shas = load_elpv(size, args.cache, args.elpv_bundle, recipe.elpv_images)
        generic_images = load_generic(args.generic_corpus, size, recipe.generic_images, args.cache)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"label_efficiency: {exc}") from None
    train_idx, test_idx = test_split(shas, y4, test_fraction=0.25)
    print(f"ELPV {len(images)} images ({len(train_idx)} train / {len(test_idx)} test) at {size}px; "
          f"generic corpus {len(generic_images)} images", flush=True)

    # backbones: same architecture, same budget per method
    domain_pool = images[train_idx]
    pretrain_info, states = {}, {}
    for method, cfg in (("mae", recipe.mae), ("dino", recipe.dino)):
        states[f"domain-{method}"], pretrain_info[f"domain-{method}"] = pretrained_encoder(f"domain-{method}", domain_pool, cfg, args.cache)
        states[f"generic-{method}"], pretrain_info[f"generic-{method}"] = pretrained_encoder(f"generic-{method}", generic_images, cfg, args.cache)
    # generic-then-domain: the generic MAE backbone continued on the domain images with the MAE
    # recipe (fixed in advance: choosing by test score would peek at the labels).
    cont = dataclasses.replace(recipe.mae, steps=recipe.continue_steps, warmup_steps=max(1, recipe.continue_steps // 10))
    states["generic-then-domain"], pretrain_info["generic-then-domain"] = pretrained_encoder(
        "generic-then-domain", domain_pool, cont, args.cache, init=states["generic-mae"])
    backbones = [Backbone(n, recipe.vit, states[n]) for n in
                 ("domain-mae", "domain-dino", "generic-then-domain", "generic-mae", "generic-dino")]
    if args.weights:
        backbones.append(Backbone("published", recipe.vit, published_backbone(args.weights, recipe.vit)))
    backbones.append(Backbone("scratch", recipe.vit, None))
    domain = ["domain-mae", "domain-dino", "generic-then-domain"]
    generic = [b.name for b in backbones if b.name not in domain and b.name != "scratch"]

    # sweeps
    report, results = [f"# Label efficiency on ELPV ({name} recipe)", ""], {"recipe": name, "tasks": {}}
    report += [f"- data: ELPV from {args.elpv_bundle or 'the elpv-dataset package'}; generic corpus {args.generic_corpus} "
               f"({len(generic_images)} training images)"]
    report += [f"- encoder: ViT depth {recipe.vit.depth}, width {recipe.vit.embed_dim}, patch {recipe.vit.patch_size}, "
               f"{size} px grayscale; split 75/25 stratified ({len(train_idx)} / {len(test_idx)} images)",
               f"- pretraining (domain backbones on the {len(train_idx)} training images only, labels unused):"]
    report += [f"  - {n}: {i['method']}, {i['steps']} steps x {i['batch_size']} of {i['images']} images, "
               f"{i['seconds']} s, final loss {i['final_loss']}" for n, i in pretrain_info.items()]
    report.append("")
    for task in args.tasks.split(","):
        labels, num_classes = (y4, 4) if task == "4class" else (y2, 2)
        methods = recipe.methods if task in recipe.trained_tasks else tuple(m for m in recipe.methods if m in ("probe", "prototype"))
        cfg = SweepConfig(fractions=recipe.fractions, seeds=recipe.seeds, methods=methods,
                          finetune_fractions=recipe.trained_fractions, finetune_seeds=recipe.trained_seeds,
                          probe=recipe.probe, finetune=dataclasses.replace(recipe.finetune, device=args.device),
                          lora=dataclasses.replace(recipe.lora, device=args.device), device=args.device)
        t0 = time.perf_counter()
        trained = [m for m in methods if m in ("finetune", "lora")]
        if trained and recipe.trained_backbones is not None:
            # Frozen-feature methods on every backbone; the costly trained ones on a subset.
            frozen = tuple(m for m in methods if m not in trained)
            rows = run_sweep(backbones, images, labels, train_idx, test_idx, num_classes,
                             dataclasses.replace(cfg, methods=frozen)).rows
            rows += run_sweep([b for b in backbones if b.name in recipe.trained_backbones], images, labels,
                              train_idx, test_idx, num_classes, dataclasses.replace(cfg, methods=tuple(trained))).rows
        else:
            rows = run_sweep(backbones, images, labels, train_idx, test_idx, num_classes, cfg).rows
        eff_lines, eff = efficiency_lines(rows, domain, generic, methods)
        scratch_lines, scratch_eff = efficiency_lines(rows, domain, ["scratch"], methods, "scratch")
        (out / f"curve-{task}.png").write_bytes(plot_curves(rows, title=f"ELPV {task}: accuracy vs labels ({name})"))
        report += [f"## ELPV {task}", "", f"Sweep: {len(rows)} runs in {time.perf_counter() - t0:.0f} s. "
                   f"Curve: `curve-{task}.png`.", "", "### Label efficiency", "",
                   "Against the generic-corpus baselines (the issue's bar):", ""] + eff_lines + [
                   "", "Against training from scratch (random-initialized ViT, same adaptation):", ""] + scratch_lines + [""]
        if task == "4class":
            report += ["### Against Deitsch et al. 2019", ""] + deitsch_lines(rows) + [""]
        seeds = sorted({r["seed"] for r in rows})
        report += ["### Accuracy", "", f"Seed-mean over seeds {seeds} (fine-tune/LoRA: {list(recipe.trained_seeds or seeds)}) "
                   "and, in brackets, the mean of the per-seed 95 % bootstrap intervals over the test set; column "
                   "headers give the label fraction and the number of labelled images.", ""]
        report += accuracy_table(rows) + ["", "### Macro-F1", ""] + accuracy_table(rows, "macro_f1") + [""]
        results["tasks"][task] = {"rows": rows, "label_efficiency": eff, "label_efficiency_vs_scratch": scratch_eff}
    total = time.perf_counter() - t_start
    command = " ".join(["python -m benchmarks.label_efficiency", *(sys.argv[1:] if argv is None else argv)])
    device = pick_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    report += ["", f"Total wall time: {total / 60:.1f} min on {where} (command: `{command}`)."]
    results.update(command=command, device=where, pretraining=pretrain_info, seconds=round(total, 1), train=len(train_idx), test=len(test_idx))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"\nwrote {out}/report.md, results.json and curves in {total / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
