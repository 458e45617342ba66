"""Sequential modeling vs MAE vs SimCLR at the same pretraining budget, on one domain: which
self-supervised method gives the best backbone for *this* data (issue 18, item 6)?

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.ssl_methods --domain elpv --mode quick
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.ssl_methods --domain wm811k --mode quick \\
        --grid-to docs/img/wm811k-sequential-samples.png

``quick`` is sized for about 15-40 minutes a domain on one thread of a loaded 2-core machine
(12,288 pretraining images a method); ``standard`` for eight times that budget, fine-tunes on
WM-811K's ``all`` label set and longer fine-tunes (not run yet); ``smoke`` for the test.

Protocol (the product's own pieces: ``train_tokenizer``, ``pretrain``, the sweep, ``adapt``,
``evaluate_predictions``, ``sample_quality``):

* **Data**: the loaders of benchmarks/label_efficiency.py. ELPV: the 2,624 cells, 4-class,
  the project's stratified hash-assigned 75/25 split; the pretraining pool is the training
  images (never a test image). WM-811K: the published ``test`` split (a stratified subsample,
  class mix kept, in quick mode) and the published label sets ``train_1`` / ``train_10`` /
  ``all`` (37,348 labels; probed in quick mode, fine-tuned on only in standard mode: see
  ``plan_for``); the pretraining pool is a stratified subsample of the train+val maps (labels
  hidden). Both at 32 px (ELPV bicubic, wafer maps nearest-neighbour).
* **Same budget**: every method sees the same number of pretraining images
  (steps x batch). For ``sequential`` that budget includes the visual tokenizer: a share of
  the images trains the tokenizer (FSQ autoencoder, 8x8 tokens of 1,000 codes), the rest the
  causal transformer over its tokens. Wall-clock of each is recorded beside it.
* **Backbones**: ``sequential`` (tokenizer + causal transformer, width 128, 4 blocks),
  ``mae`` (ViT width 128, 4 blocks, patch 4: 64 patches, the sequential model's 64 tokens),
  ``simclr`` (the auto recipe's ResNet and SimCLR recipe for this data), and ``random-init``
  (the auto recipe's ResNet, untrained: the floor); the majority class as a sanity row.
* **Adaptation**: a linear probe on frozen features at each label set; one fine-tune with
  the mode's fine-tune label set (the largest, but ``train_10`` for WM-811K in quick mode) (the auto recipe's fine-tune for this data, with AdamW at lr 1e-3 for every
  backbone family, no TTA, the mode's epochs). One seed. Accuracy, balanced accuracy and
  macro-F1 with 95 % bootstrap intervals over the test set.
* **Generation**: 64 samples of the sequential model (temperature 1), a grid PNG, and the
  Fréchet distance on its pooled features between the samples and held-out real images,
  beside the shuffled-token baseline and the tokenizer floor
  (components/evaluation/sample_quality.py).

Outputs (``--out``, default ``benchmarks/results/ssl-methods-<domain>/``): ``results.json``,
``report.md``, ``samples.png``. Trained tokenizers and encoders are cached under ``--cache``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import components  # noqa: F401  (OMP_WAIT_POLICY before torch)
from benchmarks.label_efficiency import load_elpv, pretrained_encoder
from benchmarks.wafer_maps import (
    TEST_SPLIT,
    load_wafer_arrays,
    stratified_sample,
    wafer_profile,
)
from components.data.elpv import CLASS_NAMES_4, class_name, elpv_labels
from components.data.images import Preprocess
from components.data.profile import DataProfile, with_labels
from components.evaluation.split import test_split
from components.evaluation.sweep import Backbone, SweepConfig, run_sweep
from components.models.checkpoint import load_checkpoint, save_checkpoint
from components.models.vit import ViTConfig
from components.training.device import cpu_threads
from components.training.pretrain import PretrainConfig
from components.training.recipes import resolve_recipe, sequential_recipe
from components.training.resume import RUNTIME_FIELDS
from components.training.tokenizer import (
    evaluate_tokenizer,
    holdout_split,
    tokenizer_recipe,
    train_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("elpv", "wm811k")
MODES = ("smoke", "quick", "standard")
METHODS = ("sequential", "mae", "simclr")
FLOOR = "random-init"
BACKBONES = (*METHODS, FLOOR)


@dataclass
class Plan:
    """What one (domain, mode) run does. ``images_seen``: the pretraining budget of every method
    (steps x ``batch``); ``tokenizer_share`` of it trains the sequential method's tokenizer."""

    images_seen: int
    batch: int
    label_sets: tuple  # fractions of the training pool (ELPV) or published label-set names (WM-811K)
    finetune_epochs: int
    tokenizer_share: float = 0.5
    size: int = 32
    pool_limit: int | None = None  # WM-811K: maps to pretrain on (stratified)
    test_limit: int | None = None  # WM-811K: test maps (stratified)
    elpv_images: int | None = None  # smoke: a stratified ELPV subset
    n_samples: int = 64
    n_boot: int = 1000
    probe_folds: int = 5
    finetune_set: str | float | None = None  # the label set fine-tuned on (None: the largest)

    @property
    def finetune_on(self) -> str | float:
        return self.label_sets[-1] if self.finetune_set is None else self.finetune_set

    @property
    def steps(self) -> int:
        return max(1, self.images_seen // self.batch)

    def split_steps(self) -> tuple[int, int]:
        """(tokenizer steps, transformer steps) of the sequential method: the same total."""
        tok = max(1, round(self.steps * self.tokenizer_share))
        return tok, max(1, self.steps - tok)


def plan_for(domain: str, mode: str) -> Plan:
    """ELPV: 1 / 10 / 100 % stratified fractions of the training pool, fine-tuned with every label.
    WM-811K: the published label sets; ``quick`` probes on ``all`` (37,348 labels: features are
    cheap) but fine-tunes on ``train_10`` (6,225 labels), because one epoch over ``all`` for four
    backbones does not fit its budget on one shared CPU thread; ``standard`` fine-tunes on ``all``."""
    if mode == "smoke":
        sets = ("train_1", "train_10", "all") if domain == "wm811k" else (0.01, 0.1, 1.0)
        return Plan(images_seen=64, batch=16, label_sets=sets, finetune_epochs=1, pool_limit=200, test_limit=80,
                    elpv_images=160, n_samples=4, n_boot=50, probe_folds=2)
    if mode == "quick":
        # 12,288 images a method: 2-5 min each on one thread of a loaded 2-core machine at 32 px.
        sets = ("train_1", "train_10", "all") if domain == "wm811k" else (0.01, 0.1, 1.0)
        return Plan(images_seen=12288, batch=128, label_sets=sets, finetune_epochs=2 if domain == "wm811k" else 5,
                    pool_limit=5000, test_limit=2000, finetune_set="train_10" if domain == "wm811k" else None)
    sets = ("train_1", "train_10", "all") if domain == "wm811k" else (0.01, 0.1, 1.0)
    return Plan(images_seen=98304, batch=128, label_sets=sets, finetune_epochs=3 if domain == "wm811k" else 30,
                pool_limit=20000, test_limit=None)


# ------------------------------------------------------------------------------ data


@dataclass
class DomainData:
    images: np.ndarray  # uint8 [N, S, S]
    labels: np.ndarray
    num_classes: int
    test_idx: np.ndarray
    label_sets: dict  # name -> (train_idx, sweep fraction); the sweep draws ``fraction`` of ``train_idx``
    pool: np.ndarray  # uint8 images to pretrain on
    profile: DataProfile
    about: dict


def load_domain(domain: str, plan: Plan, cache: Path, npz: Path | None) -> DomainData:
    if domain == "elpv":
        images, y4, _, shas = load_elpv(Preprocess(plan.size), cache, subset=plan.elpv_images)
        train_idx, test_idx = test_split(shas, y4, test_fraction=0.25)
        rows = elpv_labels()
        profile = with_labels(DataProfile(n_images=len(rows), median_width=300, median_height=300, median_aspect=1.0),
                              [CLASS_NAMES_4.index(class_name(r.probability)) for r in rows])
        sets = {f"{100 * f:g} %": (train_idx, float(f)) for f in plan.label_sets}
        about = {"images": len(images), "train": len(train_idx), "test": len(test_idx), "task": "4-class",
                 "split": "stratified hash-assigned 75/25 (components/evaluation/split.py)",
                 "pretraining_pool": f"the {len(train_idx)} training images"}
        return DomainData(images, y4, 4, test_idx, sets, images[train_idx], profile, about)
    data = load_wafer_arrays(plan.size, cache, npz)
    test_idx = stratified_sample(data.indices(TEST_SPLIT), data.labels, plan.test_limit, seed=0)
    sets = {name: (data.label_set(name), 1.0) for name in plan.label_sets}
    pool = stratified_sample(data.indices("train_1", "train_10", "train_20", "train_29", "val"), data.labels,
                             plan.pool_limit, seed=0)
    about = {"maps": len(data.labels), "test": len(test_idx), "test_of": len(data.indices(TEST_SPLIT)),
             "task": f"{len(data.classes)}-class", "label_sets": {k: len(v[0]) for k, v in sets.items()},
             "pretraining_pool": f"{len(pool)} maps, a stratified draw from the train+val maps (labels hidden)"}
    return DomainData(data.images, data.labels, len(data.classes), test_idx, sets, data.images[pool],
                      wafer_profile(data, data.label_set("all")), about)


# ------------------------------------------------------------------------------ pretraining (cached)


def trained_tokenizer(name: str, images: np.ndarray, cfg, cache: Path) -> tuple[dict, dict]:
    """Tokenizer weights of ``cfg`` trained on ``images`` less a seeded held-out share (on which
    PSNR and codebook usage are measured), cached by recipe and data."""
    from components.models.tokenizer import VisualTokenizer

    recipe = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    key = hashlib.sha256(json.dumps({"recipe": recipe, "data": hashlib.sha256(images.data).hexdigest()},
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache / f"{name}-{key}.pt"
    if path.exists():
        saved = load_checkpoint(path.read_bytes())
        return saved["state_dict"], saved["info"]
    train, held = holdout_split(len(images), cfg.holdout_fraction, cfg.seed)
    print(f"training {name}: {cfg.steps} steps x {cfg.batch_size} images of {len(train)}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    result = train_tokenizer(images[train], cfg, progress=True, checkpoint_path=cache / f"{name}-{key}.resume.pt")
    model = VisualTokenizer(cfg.tokenizer)
    model.load_state_dict(result.state)
    info = {"steps": len(result.losses), "batch_size": cfg.batch_size, "images": int(len(train)),
            "seconds": round(result.seconds, 1), "first_loss": round(result.losses[0], 4),
            "final_loss": round(result.losses[-1], 4), "held_out": evaluate_tokenizer(model, images[held])}
    path.write_bytes(save_checkpoint({"state_dict": result.state, "info": info}))
    (cache / f"{name}-{key}.resume.pt").unlink(missing_ok=True)
    return result.state, info


def method_configs(domain: str, plan: Plan, profile: DataProfile) -> dict:
    """The pretraining configs of the three methods at the plan's budget, the tokenizer's, the
    probe and fine-tune configs and the floor's backbone; with what each is."""
    recipe = resolve_recipe("auto", profile, device="cpu", threads=1, pretrain=True)
    backbone = dataclasses.replace(recipe.backbone, img_size=plan.size,
                                   **({"stem_pool": False} if hasattr(recipe.backbone, "stem_pool") else {}))
    steps, batch = plan.steps, plan.batch
    warm = dict(warmup_steps=max(1, steps // 10), max_seconds=None, device="cpu")
    simclr = dataclasses.replace(recipe.pretrain, backbone=backbone, steps=steps, batch_size=batch, **warm)
    vit = ViTConfig(img_size=plan.size, patch_size=4, embed_dim=128, depth=4, num_heads=4, global_pool="avg")
    mae = PretrainConfig(method="mae", backbone=vit, steps=steps, batch_size=batch, lr=1.5e-3, decoder_dim=64,
                         decoder_depth=2, decoder_heads=4, **warm)
    tok_steps, seq_steps = plan.split_steps()
    tok_cfg, tok_pre, _ = tokenizer_recipe("auto", categorical=domain == "wm811k", img_size=plan.size,
                                           steps=tok_steps, device="cpu")
    tok_cfg = dataclasses.replace(tok_cfg, batch_size=batch, warmup_steps=max(1, tok_steps // 10))
    seq = sequential_recipe("auto", tok_cfg.tokenizer, tok_pre, steps=seq_steps, device="cpu").pretrain
    seq = dataclasses.replace(seq, batch_size=batch, warmup_steps=max(1, seq_steps // 10))
    ft = dataclasses.replace(recipe.adapt["finetune"], epochs=plan.finetune_epochs, optimizer="adamw", lr=1e-3,
                             weight_decay=0.05, tta="none", patience=0, max_seconds=None, device="cpu",
                             warmup_epochs=1.0 if plan.finetune_epochs >= 5 else 0.2)
    probe = dataclasses.replace(recipe.adapt["probe"], device="cpu", probe_folds=plan.probe_folds)
    what = {
        "budget": f"{steps * batch} pretraining images a method ({steps} steps x {batch}); sequential: "
                  f"tokenizer {tok_steps} x {batch} + transformer {seq_steps} x {batch}",
        "simclr": f"auto recipe: ResNet {'-'.join(map(str, backbone.widths))} x {list(backbone.layers)} blocks, "
                  f"lr {simclr.lr}, temperature {simclr.temperature}",
        "mae": "ViT width 128, 4 blocks, 4 heads, patch 4 (64 patches), mask 0.75, decoder 64 x 2 blocks, lr 1.5e-3",
        "sequential": f"tokenizer: FSQ {'x'.join(map(str, tok_cfg.tokenizer.levels))} = {tok_cfg.tokenizer.codebook_size} "
                      f"codes, {tok_cfg.tokenizer.num_tokens} tokens ({tok_pre.describe()}); transformer width "
                      f"{seq.backbone.embed_dim}, {seq.backbone.depth} blocks, lr {seq.lr}",
        "random-init": "the auto recipe's ResNet, untrained",
        "probe": f"linear probe on frozen features, L2 by {plan.probe_folds}-fold cross-validation",
        "finetune": f"with the {'largest ' if plan.finetune_set is None else ''}label set "
                    f"({plan.finetune_on if isinstance(plan.finetune_on, str) else f'{100 * plan.finetune_on:g} %'}), "
                    f"{ft.epochs} epoch(s), AdamW lr 1e-3 (every backbone family), {ft.val_fraction:g} of the labels "
                    f"held out for the best epoch, class balance {ft.class_balance}, EMA {ft.ema_decay:g}, no TTA",
    }
    return {"simclr": simclr, "mae": mae, "tokenizer": tok_cfg, "sequential": seq, "floor": backbone,
            "probe": probe, "finetune": ft, "what": what}


def pretrain_all(domain: str, pool: np.ndarray, cfgs: dict, cache: Path) -> tuple[list[Backbone], dict]:
    """The four backbones (three pretrained at the same budget, one untrained) and what each cost."""
    info, backbones = {}, []
    tok_state, tok_info = trained_tokenizer(f"ssl-{domain}-tokenizer", pool, cfgs["tokenizer"], cache)
    seq_state, seq_info = pretrained_encoder(f"ssl-{domain}-sequential", pool, cfgs["sequential"], cache,
                                             init={f"tokenizer.{k}": v for k, v in tok_state.items()})
    info["sequential"] = {**seq_info, "tokenizer": tok_info,
                          "images_seen": tok_info["steps"] * tok_info["batch_size"] + seq_info["steps"] * seq_info["batch_size"],
                          "seconds_total": round(tok_info["seconds"] + seq_info["seconds"], 1)}
    backbones.append(Backbone("sequential", cfgs["sequential"].backbone, seq_state))
    for method in ("mae", "simclr"):
        state, i = pretrained_encoder(f"ssl-{domain}-{method}", pool, cfgs[method], cache)
        info[method] = {**i, "images_seen": i["steps"] * i["batch_size"], "seconds_total": i["seconds"]}
        backbones.append(Backbone(method, cfgs[method].backbone, state))
    backbones.append(Backbone(FLOOR, cfgs["floor"], None))
    return backbones, info


# ------------------------------------------------------------------------------ evaluation


def evaluate(data: DomainData, backbones: list[Backbone], cfgs: dict, plan: Plan) -> list[dict]:
    """Probe rows at every label set (majority class beside them); fine-tune rows with the plan's
    fine-tune set (the largest unless the plan names one).
    Label sets drawn from the same pool (ELPV's fractions) share one sweep, so each backbone's
    features are extracted once; the published WM-811K sets are different pools, a sweep each."""
    rows = []
    full = list(data.label_sets)[plan.label_sets.index(plan.finetune_on)]  # keys follow the plan's order
    groups: dict[bytes, list[str]] = {}
    for name, (train_idx, _) in data.label_sets.items():
        groups.setdefault(np.asarray(train_idx).tobytes(), []).append(name)
    for names in groups.values():
        train_idx = data.label_sets[names[0]][0]
        name_of = {data.label_sets[n][1]: n for n in names}
        cfg = SweepConfig(fractions=tuple(name_of), seeds=(0,), methods=("probe",), probe=cfgs["probe"],
                          finetune=cfgs["finetune"], baselines=("majority",), n_boot=plan.n_boot, device="cpu")
        t0 = time.perf_counter()
        part = list(run_sweep(backbones, data.images, data.labels, train_idx, data.test_idx, data.num_classes, cfg).rows)
        if full in names:
            ft = run_sweep(backbones, data.images, data.labels, train_idx, data.test_idx, data.num_classes,
                           dataclasses.replace(cfg, fractions=(data.label_sets[full][1],), methods=("finetune",),
                                               baselines=()))
            part += ft.rows
        for r in part:
            r["label_set"] = name_of[r["fraction"]]
        rows += part
        print(f"{', '.join(names)}: {len(part)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def generation(backbone: Backbone, data: DomainData, plan: Plan) -> tuple[bytes, dict]:
    """Samples of the sequential backbone as a grid PNG, and their Fréchet distances to held-out
    real images (test split) beside the shuffled-token baseline and the tokenizer floor."""
    import torch

    from components.evaluation.sample_quality import sample_quality
    from components.inference.generate import GenerateConfig, grid_png, sample
    from components.models.backbones import build_backbone, load_backbone_weights

    model = build_backbone(backbone.config, seed=0)
    load_backbone_weights(model, backbone.state)
    model.eval()
    cfg = GenerateConfig(n=plan.n_samples, temperature=1.0, seed=0)
    t0 = time.perf_counter()
    with torch.no_grad():
        samples = sample(model, cfg)
        seconds = time.perf_counter() - t0
        quality = sample_quality(model, samples, data.images[data.test_idx], seed=0)
    return grid_png(samples, cols=8), {**quality, "generate": cfg.to_dict(), "sample_seconds": round(seconds, 1)}


# ------------------------------------------------------------------------------ report


def cell(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def results_table(rows: list[dict], label_sets: list[str], about: dict) -> list[str]:
    n_of = {}
    for r in rows:
        n_of.setdefault(r["label_set"], r["n_train"])
    out = ["| pretraining | adaptation | labels | accuracy | balanced accuracy | macro-F1 |", "| --- | --- | --- | --- | --- | --- |"]
    order = {b: i for i, b in enumerate((*BACKBONES, "baseline"))}
    for ls in label_sets:
        for r in sorted((r for r in rows if r["label_set"] == ls), key=lambda r: (r["method"] == "finetune", order[r["backbone"]])):
            who = "majority class" if r["backbone"] == "baseline" else r["backbone"]
            how = "-" if r["backbone"] == "baseline" else r["method"]
            m = r["metrics"]
            out.append(f"| {who} | {how} | {ls} ({r['n_train']}) | {cell(m['accuracy'])} | {cell(m['balanced_accuracy'])} | {cell(m['macro_f1'])} |")
    return out


def pretraining_table(info: dict) -> list[str]:
    out = ["| method | images seen | steps x batch | seconds (1 thread) | loss first -> last | notes |",
           "| --- | --- | --- | --- | --- | --- |"]
    for m in METHODS:
        i = info[m]
        if m == "sequential":
            t = i["tokenizer"]
            h = t["held_out"]
            steps = f"tokenizer {t['steps']} x {t['batch_size']} + transformer {i['steps']} x {i['batch_size']}"
            secs = f"{i['seconds_total']} ({t['seconds']} + {i['seconds']})"
            notes = (f"tokenizer held-out PSNR {h['psnr']} dB, codebook usage {h['codebook_usage']:.1%}, "
                     f"loss {t['first_loss']} -> {t['final_loss']}")
        else:
            steps, secs, notes = f"{i['steps']} x {i['batch_size']}", f"{i['seconds_total']}", ""
        out.append(f"| {m} | {i['images_seen']} | {steps} | {secs} | {i['first_loss']} -> {i['final_loss']} | {notes} |")
    return out


def generation_lines(gen: dict) -> list[str]:
    fd = gen["frechet_distance"]
    return ["| images | Fréchet distance to real test images (lower is better) |", "| --- | --- |",
            f"| sequential model's samples (temperature {gen['generate']['temperature']}) | {fd['samples']:.4f} |",
            f"| shuffled-token baseline (real tokens, random order) | {fd['shuffled_tokens']:.4f} |",
            f"| tokenizer floor (real images encoded and decoded) | {fd['reconstructions']:.4f} |",
            "", f"{gen['n_samples']} samples vs {gen['n_real']} real test images, on {gen['features']}; "
                f"sampling took {gen['sample_seconds']} s."]


def run_domain(domain: str, mode: str, args, runtime: dict) -> dict:
    plan = plan_for(domain, mode)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    data = load_domain(domain, plan, args.cache, args.npz)
    cfgs = method_configs(domain, plan, data.profile)
    print(f"{domain}: {data.about}\n" + "\n".join(f"{k}: {v}" for k, v in cfgs["what"].items()), flush=True)
    backbones, info = pretrain_all(domain, data.pool, cfgs, args.cache)
    pretrain_s = time.perf_counter() - t_start
    t_eval = time.perf_counter()
    rows = evaluate(data, backbones, cfgs, plan)
    eval_s = time.perf_counter() - t_eval
    png, gen = generation(backbones[0], data, plan)
    total, load_end = time.perf_counter() - t_start, os.getloadavg()

    command = "python -m benchmarks.ssl_methods " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    where = f"cpu, {runtime['threads']} torch thread(s), OMP_WAIT_POLICY={runtime['omp_wait_policy'] or 'unset'}"
    load = {"start_1_5_15": [round(v, 2) for v in load_start], "end_1_5_15": [round(v, 2) for v in load_end]}
    sets = list(data.label_sets)
    report = [f"# Sequential vs MAE vs SimCLR on {domain.upper()} ({mode} mode)", "",
              f"- data: {json.dumps(data.about)}", *(f"- {k}: {v}" for k, v in cfgs["what"].items()),
              "- one seed (0): label subsets, fine-tune, bootstrap (1 run per cell; intervals are over test images only)",
              "", "## Pretraining at the same budget", "", *pretraining_table(info), "",
              "## Linear probe and fine-tune (95 % bootstrap intervals over the test set)", "",
              *results_table(rows, sets, data.about), "",
              "## Generation (sequential model)", "", "![samples](samples.png)", "", *generation_lines(gen), "",
              f"Wall time {total / 60:.1f} min (pretraining {pretrain_s / 60:.1f}, probes and fine-tunes "
              f"{eval_s / 60:.1f}) on {where}; load average {load_start[0]:.2f} / {load_start[1]:.2f} at the start, "
              f"{load_end[0]:.2f} / {load_end[1]:.2f} at the end (1 / 5 min). Command: `{command}`.", ""]
    results = {"domain": domain, "mode": mode, "plan": dataclasses.asdict(plan), "data": data.about,
               "configs": {k: (v.to_dict() if hasattr(v, "to_dict") else str(v)) for k, v in cfgs.items() if k != "what"},
               "what": cfgs["what"], "pretraining": info, "rows": rows, "generation": gen, "command": command,
               "device": where, "runtime": runtime, "seconds": round(total, 1), "pretrain_seconds": round(pretrain_s, 1),
               "eval_seconds": round(eval_s, 1), "load_avg": load}
    out = (args.out or ROOT / "benchmarks" / "results") / (f"ssl-methods-{domain}" + ("" if mode == "quick" else f"-{mode}"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "report.md").write_text("\n".join(report) + "\n")
    (out / "samples.png").write_bytes(png)
    if args.grid_to:
        args.grid_to.parent.mkdir(parents=True, exist_ok=True)
        args.grid_to.write_bytes(png)
    print("\n".join(report), flush=True)
    print(f"wrote {out}/report.md, results.json, samples.png in {total / 60:.1f} min", flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=DOMAINS, required=True)
    ap.add_argument("--mode", choices=MODES, default="quick")
    ap.add_argument("--out", type=Path, default=None, help="parent folder of ssl-methods-<domain>[-<mode>]/")
    ap.add_argument("--cache", type=Path, default=ROOT / ".dlvm" / "bench-cache")
    ap.add_argument("--npz", type=Path, default=None, help="wm811k.npz (default: $DLVM_WM811K_NPZ or the data shelf)")
    ap.add_argument("--grid-to", type=Path, default=None, help="also write the sample grid PNG here")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    args.argv = argv
    runtime = cpu_threads(args.threads)
    try:
        return run_domain(args.domain, args.mode, args, runtime)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"ssl_methods: {exc}") from None


if __name__ == "__main__":
    main()
