"""How far the descriptor backbone gets on ELPV (4-class, the 75/25 hash-assigned test split).

The kind of model behind the published 0.8244 SVM on ELPV (Deitsch et al. 2019), built from
the product's own parts: a descriptor backbone (components/models/descriptors.py: dense
DAISY-like descriptors and intensity patches at the cell's full 300 px, VLAD against k-means
codebooks (``--patch-blocks ""``: the histograms alone, as before 2026-12-01), an RBF
kernel's Nystrom map) fitted without labels on every image of the set, as the pipeline's
domain pretraining sees them, then the ``svm`` adaptation method (a linear SVM on those
features, i.e. an RBF-SVM) on the training labels, trained on and averaged over the ``--tta``
views. Each seed draws its own codebook and landmarks; the seeds' average probabilities are
the ensemble row. Scored beside the product's HOG-SVM baseline fitted on the same split,
paired.

``--novelty`` adds a second classifier per seed: the same svm with the functional training
cells as its position-aware novelty bank (``AdaptConfig.novelty_class``, ``dlvm adapt
--good-class``; components/models/descriptors.py ``PositionNovelty``): each descriptor's distance
to the nearest bank descriptor at the same grid position (or ``--novelty-reach`` steps away),
nine statistics of each radius's map beside the kernel features. VLAD's sums dilute one small crack among a
thousand descriptors; the novelty map's worst values do not.

    python -m benchmarks.elpv_dense_features --seeds 0,1,2 --patch-blocks "" \\
        --out benchmarks/results/elpv-dense-features/descriptor-backbone-svm.json
    python -m benchmarks.elpv_dense_features --seeds 0,1,2 --novelty --patch-blocks "" \\
        --out benchmarks/results/elpv-dense-features/descriptor-svm-novelty-bank.json
    python -m benchmarks.elpv_dense_features --seeds 0,1,2 --novelty \\
        --out benchmarks/results/elpv-dense-features/descriptor-svm-patches-novelty.json
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import components  # noqa: F401  (OMP_WAIT_POLICY before torch)
from benchmarks.elpv_recipe import paired_summary, split_key
from benchmarks.label_efficiency import load_elpv
from components.evaluation.baselines import SANITY_BASELINES, BaselineConfig, fit_predict
from components.evaluation.metrics import evaluate_predictions, paired_comparison
from components.evaluation.split import test_split
from components.models.descriptors import (
    DescriptorConfig,
    fit_descriptor_state,
)
from components.training.adapt import (
    TTA,
    TTA_VIEWS,
    AdaptConfig,
    adapt,
    predict_proba,
)

ROOT = Path(__file__).resolve().parents[1]


def run_seed(images: np.ndarray, y4: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
             cfg: DescriptorConfig, adapt_cfg: AdaptConfig, fit_on: str, seed: int,
             novelty_class: int | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(test probabilities, test probabilities of the svm with a novelty bank of ``novelty_class``'s
    training images (None without one), timings) of one descriptor backbone + svm classifier."""
    t0 = time.perf_counter()
    unlabeled = images if fit_on == "all" else images[train_idx]
    state, _ = fit_descriptor_state(unlabeled, cfg, TTA_VIEWS[adapt_cfg.tta], seed=seed)
    t1 = time.perf_counter()
    clf = adapt(cfg, state, images[train_idx], y4[train_idx], 4, replace(adapt_cfg, seed=seed))
    t2 = time.perf_counter()
    proba = predict_proba(clf, images[test_idx])
    t3 = time.perf_counter()
    seconds = {"fit_backbone": round(t1 - t0, 1), "adapt": round(t2 - t1, 1), "predict": round(t3 - t2, 1)}
    if novelty_class is None:
        return proba, None, seconds
    del clf  # the second classifier's bank and maps need the memory
    clf = adapt(cfg, state, images[train_idx], y4[train_idx], 4,
                replace(adapt_cfg, seed=seed, novelty_class=novelty_class))
    t4 = time.perf_counter()
    nproba = predict_proba(clf, images[test_idx])
    seconds.update(adapt_with_novelty=round(t4 - t3, 1), predict_with_novelty=round(time.perf_counter() - t4, 1))
    return proba, nproba, seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = DescriptorConfig()
    ap.add_argument("--size", type=int, default=d.img_size, help="decode size (ELPV cells are 300 px)")
    ap.add_argument("--step", type=int, default=d.step, help="grid step of the dense descriptors, pixels")
    ap.add_argument("--radii", default=",".join(map(str, d.radii)), help="descriptor radii, pixels (comma list)")
    ap.add_argument("--clusters", type=int, default=d.clusters, help="VLAD codebook size")
    ap.add_argument("--patch-blocks", default=",".join(map(str, d.patch_blocks)),
                    help="intensity patches' block sizes, px, each its own VLAD (comma list; empty: none)")
    ap.add_argument("--landmarks", type=int, default=d.landmarks, help="Nystrom landmarks (the feature width)")
    ap.add_argument("--C", type=float, default=AdaptConfig.svm_c, help="the linear SVM's C")
    ap.add_argument("--tta", default="flips", choices=TTA, help="views trained on and averaged over")
    ap.add_argument("--fit-on", default="all", choices=("all", "train"),
                    help="images the backbone is fitted on without labels: all (as the pipeline's pretraining) "
                         "or the training split only")
    ap.add_argument("--seeds", default="0,1,2", help="one backbone and classifier per seed (comma list)")
    ap.add_argument("--versus", default="svm-hog", help="sanity baselines compared with, paired (comma list)")
    ap.add_argument("--novelty", action="store_true",
                    help="also the svm with position-aware novelty statistics (functional training cells as the bank)")
    ap.add_argument("--novelty-dim", type=int, default=d.novelty_dim,
                    help="the novelty bank's dimensions (principal directions of the functional cells' descriptors)")
    ap.add_argument("--novelty-reach", type=int, default=d.novelty_reach,
                    help="grid steps away a bank neighbour may lie (0: the same position; 1: 3x3, 9x the time)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--subset", type=int, default=None, help="stratified subset of N images (smoke runs)")
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "results" / ".cache")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    versus = [v for v in args.versus.split(",") if v]
    unknown = [v for v in versus if v not in SANITY_BASELINES]
    if unknown:
        raise SystemExit(f"unknown baseline {', '.join(unknown)} (baselines: {', '.join(SANITY_BASELINES)})")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        cfg = DescriptorConfig(img_size=args.size, step=args.step, radii=tuple(int(r) for r in args.radii.split(",")),
                               clusters=args.clusters, landmarks=args.landmarks, novelty_dim=args.novelty_dim,
                               patch_blocks=tuple(int(b) for b in args.patch_blocks.split(",") if b),
                               novelty_reach=args.novelty_reach)
        adapt_cfg = AdaptConfig(method="svm", svm_c=args.C, tta=args.tta)
    except ValueError as exc:
        raise SystemExit(f"bad arguments: {exc}") from None
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    images, y4, _, shas = load_elpv(args.size, args.cache, subset=args.subset)
    train_idx, test_idx = test_split(shas, y4)
    y_test = y4[test_idx]
    runs, rows = [], {}
    for seed in seeds:
        try:  # class 0 is CLASS_NAMES_4[0], "functional" (benchmarks.label_efficiency.load_elpv)
            proba, nproba, seconds = run_seed(images, y4, train_idx, test_idx, cfg, adapt_cfg, args.fit_on, seed,
                                              0 if args.novelty else None)
        except ValueError as exc:  # e.g. fewer images than landmarks on a small --subset
            raise SystemExit(f"seed {seed}: {exc}") from None
        runs.append({"seed": seed, "seconds": seconds, "test": evaluate_predictions(y_test, proba, 4),
                     "test_proba": np.round(proba, 6).tolist()})
        rows[f"seed {seed}"] = proba
        print(f"seed {seed}: accuracy {runs[-1]['test']['accuracy']['value']:.4f} ({seconds})", flush=True)
        if nproba is not None:
            runs[-1]["novelty"] = {"test": evaluate_predictions(y_test, nproba, 4),
                                   "test_proba": np.round(nproba, 6).tolist()}
            rows[f"seed {seed} + novelty"] = nproba
            print(f"seed {seed} + novelty: accuracy {runs[-1]['novelty']['test']['accuracy']['value']:.4f}", flush=True)
    if len(seeds) > 1:
        rows["seed ensemble"] = np.mean([np.array(r["test_proba"]) for r in runs], axis=0)
        if args.novelty:
            rows["seed ensemble + novelty"] = np.mean([rows[f"seed {s} + novelty"] for s in seeds], axis=0)

    out = {"args": {k: str(v) for k, v in vars(args).items()}, "backbone": cfg.to_dict(), "adapt": adapt_cfg.to_dict(),
           "test_key": split_key(shas, test_idx), "runs": runs, "versus": {}, "test_labels": y_test.tolist()}
    for row in ("seed ensemble", "seed ensemble + novelty"):
        if row in rows:
            key = "ensemble" if row == "seed ensemble" else "ensemble_novelty"
            out[key] = {"test": evaluate_predictions(y_test, rows[row], 4),
                        "predicted_counts": np.bincount(rows[row].argmax(1), minlength=4).tolist()}
    if args.novelty:  # each seed's svm with novelty statistics against the same seed's svm without
        out["novelty_vs_without"] = {f"seed {s}": paired_comparison(y_test, rows[f"seed {s} + novelty"],
                                                                    rows[f"seed {s}"], 4, "accuracy") for s in seeds}
    base_cfg = BaselineConfig(metric="accuracy")
    for name in versus:
        scores, chosen = fit_predict(name, images[train_idx], y4[train_idx], images[test_idx], 4, base_cfg)
        out["versus"][name] = {"test": evaluate_predictions(y_test, scores, 4), "fitted": chosen,
                               "paired": {row: paired_comparison(y_test, p, scores, 4, "accuracy")
                                          for row, p in rows.items()}}
    out["seconds"] = round(time.perf_counter() - t0, 1)

    fmt = lambda m: {k: round(v["value"], 4) for k, v in m.items()}  # noqa: E731
    for r in runs:
        print(f"descriptor backbone + svm, seed {r['seed']}:", fmt(r["test"]))
        if "novelty" in r:
            print(f"descriptor backbone + svm + novelty, seed {r['seed']}:", fmt(r["novelty"]["test"]))
    if "ensemble" in out:
        print(f"ensemble of {len(seeds)} seeds:", fmt(out["ensemble"]["test"]))
    if "ensemble_novelty" in out:
        print(f"ensemble of {len(seeds)} seeds + novelty:", fmt(out["ensemble_novelty"]["test"]))
    for row, c in out.get("novelty_vs_without", {}).items():
        print(f"{row} + novelty vs {row}: {paired_summary(c)}")
    for name, v in out["versus"].items():
        print(f"{name}:", fmt(v["test"]))
        for row, c in v["paired"].items():
            print(f"{row} vs {name}: {paired_summary(c)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
