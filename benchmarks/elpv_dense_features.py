"""How far the descriptor backbone gets on ELPV (4-class, the 75/25 hash-assigned test split).

The kind of model behind the published 0.8244 SVM on ELPV (Deitsch et al. 2019), built from
the product's own parts: a descriptor backbone (components/models/descriptors.py: dense
DAISY-like descriptors at the cell's full 300 px, VLAD against a k-means codebook, an RBF
kernel's Nystrom map) fitted without labels on every image of the set, as the pipeline's
domain pretraining sees them, then the ``svm`` adaptation method (a linear SVM on those
features, i.e. an RBF-SVM) on the training labels, trained on and averaged over the ``--tta``
views. Each seed draws its own codebook and landmarks; the seeds' average probabilities are
the ensemble row. Scored beside the product's HOG-SVM baseline fitted on the same split,
paired.

``--novelty`` adds a second model per seed (not yet a product method): the same kernel
features plus nine statistics of each radius's position-aware novelty map (each descriptor's
distance to the nearest descriptor of a functional training cell at the same grid position or
one step away, leave-one-out on the training cells; ``position_novelty``), standardized on the
training cells and weighted to the kernel features' scale, under the same linear SVM. VLAD's
sums dilute one small crack among a thousand descriptors; the novelty map's worst values do not.

    python -m benchmarks.elpv_dense_features --seeds 0,1,2 \\
        --out benchmarks/results/elpv-dense-features/descriptor-backbone-svm.json
    python -m benchmarks.elpv_dense_features --seeds 0,1,2 --novelty \\
        --out benchmarks/results/elpv-dense-features/descriptor-svm-novelty.json
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
    DenseDescriptor,
    DescriptorConfig,
    fit_descriptor_state,
    novelty_statistics,
    position_novelty,
)
from components.models.vit import normalize_uint8
from components.training.adapt import (
    TTA,
    TTA_VIEWS,
    AdaptConfig,
    adapt,
    extract_view_features,
    fit_svm,
    predict_proba,
    predict_proba_from_features,
)

ROOT = Path(__file__).resolve().parents[1]


def run_seed(images: np.ndarray, y4: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
             cfg: DescriptorConfig, adapt_cfg: AdaptConfig, fit_on: str, seed: int,
             novelty: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(test probabilities, test probabilities of the svm with ``novelty`` statistics added (None
    without them), timings) of one descriptor backbone + svm classifier."""
    t0 = time.perf_counter()
    unlabeled = images if fit_on == "all" else images[train_idx]
    state, _ = fit_descriptor_state(unlabeled, cfg, TTA_VIEWS[adapt_cfg.tta], seed=seed)
    t1 = time.perf_counter()
    clf = adapt(cfg, state, images[train_idx], y4[train_idx], 4, replace(adapt_cfg, seed=seed))
    t2 = time.perf_counter()
    proba = predict_proba(clf, images[test_idx])
    t3 = time.perf_counter()
    seconds = {"fit_backbone": round(t1 - t0, 1), "adapt": round(t2 - t1, 1), "predict": round(t3 - t2, 1)}
    if novelty is None:
        return proba, None, seconds
    nproba = svm_with_novelty(clf.encoder, images, y4, train_idx, test_idx, novelty, adapt_cfg, seed)
    seconds["svm_with_novelty"] = round(time.perf_counter() - t3, 1)
    return proba, nproba, seconds


def novelty_features(images: np.ndarray, train_idx: np.ndarray, good: np.ndarray, cfg: DescriptorConfig,
                     reach: int = 1) -> np.ndarray:
    """``[N, 9 x radii]`` novelty statistics of every image (``novelty_statistics`` of each
    radius's ``position_novelty`` map against the descriptors of ``good``, training images of the
    normal class; a training image is left out of its own bank), standardized on ``train_idx``."""
    from tqdm.auto import tqdm

    def grids(desc: DenseDescriptor, idx: np.ndarray) -> torch.Tensor:
        g = len(range(desc.radii[0], cfg.img_size - desc.radii[0], desc.step))
        with torch.no_grad():
            return torch.cat([desc(normalize_uint8(torch.from_numpy(images[idx[i: i + 32]])))
                              for i in range(0, len(idx), 32)]).reshape(-1, g, g, desc.dim)

    columns = []
    ids = torch.from_numpy(np.arange(len(images)))
    for radius in tqdm(cfg.radii, desc="novelty maps", unit="radius", leave=False):
        desc = DenseDescriptor(cfg.step, (radius,), cfg.rings, cfg.histograms, cfg.orientations)
        every = grids(desc, np.arange(len(images)))
        good_t = torch.from_numpy(good)
        with torch.no_grad():
            maps = position_novelty(every, every[good_t], reach, 1, ids, ids[good_t])
        thresholds = torch.quantile(maps[good_t].flatten()[::7], torch.tensor([0.99, 0.999]))
        columns.append(novelty_statistics(maps, thresholds))
    feats = torch.cat(columns, 1).numpy()
    return (feats - feats[train_idx].mean(0)) / (feats[train_idx].std(0) + 1e-6)


def svm_with_novelty(encoder, images: np.ndarray, y4: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                     novelty: np.ndarray, adapt_cfg: AdaptConfig, seed: int, weight: float = 1.0) -> np.ndarray:
    """Test probabilities ``[n_test, 4]`` of the product's svm head (``fit_svm``) on the encoder's
    kernel features of every view with the (view-independent) ``novelty`` statistics appended,
    each scaled to the kernel features' root-mean-square width times ``weight`` (1: a novelty
    statistic weighs what an average kernel feature does; 0.5 and 2 measured the same on seed 0),
    from the logits averaged over the views (the head is linear: the logits of the mean view)."""
    train = extract_view_features(encoder, images[train_idx], adapt_cfg.tta).numpy()
    test = extract_view_features(encoder, images[test_idx], adapt_cfg.tta).numpy()
    scale = weight * np.sqrt((train[0] ** 2).sum(1).mean() / novelty.shape[1])

    def joined(views: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([views, np.broadcast_to(scale * novelty[rows], (len(views),) + novelty[rows].shape)], 2)
    X = joined(train, train_idx)
    head = fit_svm(X.reshape(-1, X.shape[-1]), np.tile(y4[train_idx], len(X)), 4, replace(adapt_cfg, seed=seed))
    return predict_proba_from_features(head, joined(test, test_idx).mean(0))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = DescriptorConfig()
    ap.add_argument("--size", type=int, default=d.img_size, help="decode size (ELPV cells are 300 px)")
    ap.add_argument("--step", type=int, default=d.step, help="grid step of the dense descriptors, pixels")
    ap.add_argument("--radii", default=",".join(map(str, d.radii)), help="descriptor radii, pixels (comma list)")
    ap.add_argument("--clusters", type=int, default=d.clusters, help="VLAD codebook size")
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
                               clusters=args.clusters, landmarks=args.landmarks)
        adapt_cfg = AdaptConfig(method="svm", svm_c=args.C, tta=args.tta)
    except ValueError as exc:
        raise SystemExit(f"bad arguments: {exc}") from None
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    images, y4, _, shas = load_elpv(args.size, args.cache, subset=args.subset)
    train_idx, test_idx = test_split(shas, y4)
    y_test = y4[test_idx]
    novelty = None
    if args.novelty:
        t = time.perf_counter()
        novelty = novelty_features(images, train_idx, train_idx[y4[train_idx] == 0], cfg)
        print(f"novelty statistics: {round(time.perf_counter() - t, 1)} s", flush=True)
    runs, rows = [], {}
    for seed in seeds:
        try:
            proba, nproba, seconds = run_seed(images, y4, train_idx, test_idx, cfg, adapt_cfg, args.fit_on, seed,
                                              novelty)
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
