"""How far a dense-descriptor classical pipeline gets on ELPV (4-class, the 75/25 hash-assigned test split).

The kind of model behind the published 0.8244 SVM on ELPV (Deitsch et al. 2019): local
descriptors sampled densely over the cell at full resolution, encoded per image as a VLAD
vector against a codebook, classified by an RBF-SVM. Here the descriptors are DAISY
(scikit-image), Hellinger-normalized like RootSIFT; the codebook is k-means on descriptors of
the training images only; the SVM's C is chosen by stratified cross-validation on the
training labels. Scored on the split every dlvm evaluation uses, beside the product's own
HOG-SVM baseline fitted on the same split (paired), and, given ``--cnn-runs`` from
``benchmarks/elpv_recipe.py``, fused with their seed ensemble at a fixed weight (``--cnn-weight``,
chosen before looking: 0.5), never one read off the test split.

    python -m benchmarks.elpv_dense_features --out benchmarks/results/elpv-dense-features/daisy-3radii-vlad32.json \\
        --cnn-runs benchmarks/results/elpv-recipe/ensemble/128px-34ep-seed*.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import components  # noqa: F401  (OMP_WAIT_POLICY before torch)
from benchmarks.elpv_recipe import paired_summary, split_key
from benchmarks.label_efficiency import load_elpv
from components.evaluation.baselines import SANITY_BASELINES, BaselineConfig, fit_predict
from components.evaluation.metrics import evaluate_predictions, paired_comparison
from components.evaluation.split import test_split

ROOT = Path(__file__).resolve().parents[1]


def dense_descriptors(image: np.ndarray, step: int, radii: tuple[int, ...]) -> np.ndarray:
    """DAISY descriptors on a grid every ``step`` pixels, one set per radius, stacked ``[n, 104]``;
    each Hellinger-normalized (L1 then square root), which makes Euclidean k-means compare
    histograms fairly."""
    from skimage.feature import daisy

    gray = image.astype(np.float32) / 255.0
    d = np.concatenate([daisy(gray, step=step, radius=r, rings=2, histograms=6, orientations=8).reshape(-1, 104)
                        for r in radii])
    return np.sqrt(d / (d.sum(1, keepdims=True) + 1e-7)).astype(np.float32)


def fit_codebook(descriptors: list[np.ndarray], clusters: int, per_image: int, seed: int) -> np.ndarray:
    """k-means centres ``[clusters, dim]`` from ``per_image`` random descriptors of each image."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    sample = np.concatenate([d[rng.choice(len(d), min(per_image, len(d)), replace=False)] for d in descriptors])
    if len(sample) < clusters:
        raise SystemExit(f"{len(sample)} descriptors cannot make {clusters} clusters: lower --clusters")
    km = MiniBatchKMeans(clusters, random_state=seed, batch_size=4096, n_init=3).fit(sample)
    return km.cluster_centers_.astype(np.float32)


def vlad(descriptors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The VLAD vector of one image: per centre, the summed residuals of the descriptors nearest it,
    signed-square-rooted and L2-normalized per centre, then as a whole (``[clusters * dim]``)."""
    dist = (descriptors ** 2).sum(1, keepdims=True) - 2 * descriptors @ centres.T + (centres ** 2).sum(1)
    nearest = dist.argmin(1)
    v = np.zeros_like(centres)
    np.add.at(v, nearest, descriptors - centres[nearest])
    v = np.sign(v) * np.sqrt(np.abs(v))
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-7
    v = v.ravel()
    return v / (np.linalg.norm(v) + 1e-7)


def fit_svm(X: np.ndarray, y: np.ndarray, Xt: np.ndarray, Cs: list[float], folds: int, seed: int
            ) -> tuple[np.ndarray, dict]:
    """(test class probabilities, what was chosen): an RBF-SVM, C by stratified CV accuracy,
    refitted on every training image with Platt probabilities (sigmoid, fitted out of fold)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    search = GridSearchCV(SVC(kernel="rbf", gamma="scale"), {"C": Cs}, cv=cv, scoring="accuracy").fit(X, y)
    C = float(search.best_params_["C"])
    svm = CalibratedClassifierCV(SVC(kernel="rbf", gamma="scale", C=C), method="sigmoid", cv=cv,
                                 ensemble=False).fit(X, y)
    proba = np.zeros((len(Xt), 4))
    proba[:, svm.classes_] = svm.predict_proba(Xt)
    return proba, {"C": C, "cv_accuracy": round(float(search.best_score_), 4)}


def cnn_ensemble(paths: list[Path], test_key: str, y_test: np.ndarray) -> np.ndarray:
    """The average test probabilities of ``benchmarks/elpv_recipe.py`` runs scored on this split."""
    runs = [json.loads(p.read_text()) for p in paths]
    for path, run in zip(paths, runs):
        if "test_proba" not in run:
            raise SystemExit(f"no test probabilities in {path} (written by elpv_recipe runs since 2026-11-30)")
        if run["test_key"] != test_key or run["test_labels"] != y_test.tolist():
            raise SystemExit(f"{path} was scored on another test split (test_key differs): run both on one --subset")
    return np.mean([np.array(r["test_proba"]) for r in runs], axis=0)


def main(argv: list[str] | None = None) -> dict:
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=300, help="decode size (ELPV cells are 300 px)")
    ap.add_argument("--step", type=int, default=8, help="grid step of the dense descriptors, pixels")
    ap.add_argument("--radii", default="10,20,30", help="DAISY radii, pixels (comma list: one descriptor set each)")
    ap.add_argument("--clusters", type=int, default=32, help="VLAD codebook size")
    ap.add_argument("--per-image", type=int, default=200, help="descriptors per training image for k-means")
    ap.add_argument("--C", default="1,10,100", help="RBF-SVM C values cross-validated")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--versus", default="svm-hog", help="sanity baselines compared with, paired (comma list)")
    ap.add_argument("--cnn-runs", type=Path, nargs="*", default=[], help="elpv_recipe runs to fuse with")
    ap.add_argument("--cnn-weight", type=float, default=0.5, help="the CNN ensemble's share of the fused probabilities")
    ap.add_argument("--jobs", type=int, default=2, help="processes computing descriptors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=None, help="stratified subset of N images (smoke runs)")
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "results" / ".cache")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    versus = [v for v in args.versus.split(",") if v]
    unknown = [v for v in versus if v not in SANITY_BASELINES]
    if unknown:
        raise SystemExit(f"unknown baseline {', '.join(unknown)} (baselines: {', '.join(SANITY_BASELINES)})")
    if not 0.0 <= args.cnn_weight <= 1.0:
        raise SystemExit(f"--cnn-weight must be in [0, 1], got {args.cnn_weight}")
    radii = tuple(int(r) for r in args.radii.split(","))
    Cs = [float(c) for c in args.C.split(",")]

    t0 = time.perf_counter()
    images, y4, _, shas = load_elpv(args.size, args.cache, subset=args.subset)
    train_idx, test_idx = test_split(shas, y4)
    y_test = y4[test_idx]
    test_key = split_key(shas, test_idx)
    cnn = cnn_ensemble(args.cnn_runs, test_key, y_test) if args.cnn_runs else None

    descriptors = Parallel(n_jobs=args.jobs, batch_size=16)(
        delayed(dense_descriptors)(im, args.step, radii) for im in tqdm(images, desc="DAISY descriptors", leave=False))
    describe_s = time.perf_counter() - t0
    centres = fit_codebook([descriptors[i] for i in train_idx], args.clusters, args.per_image, args.seed)
    X = np.stack([vlad(d, centres) for d in tqdm(descriptors, desc="VLAD", leave=False)])
    proba, fitted = fit_svm(X[train_idx], y4[train_idx], X[test_idx], Cs, args.folds, args.seed)
    total_s = time.perf_counter() - t0

    out = {"args": {k: str(v) for k, v in vars(args).items()}, "test_key": test_key,
           "descriptors_per_image": int(len(descriptors[0])), "vlad_dim": int(X.shape[1]), "svm": fitted,
           "seconds": {"descriptors": round(describe_s, 1), "total": round(total_s, 1)},
           "test": evaluate_predictions(y_test, proba, 4),
           "predicted_counts": np.bincount(proba.argmax(1), minlength=4).tolist(), "versus": {},
           "test_labels": y_test.tolist(), "test_proba": np.round(proba, 6).tolist()}
    rows = {"dense-vlad-svm": proba}
    if cnn is not None:
        fused = args.cnn_weight * cnn + (1 - args.cnn_weight) * proba
        out["cnn_ensemble"] = {"runs": [str(p) for p in args.cnn_runs], "test": evaluate_predictions(y_test, cnn, 4)}
        out["fused"] = {"cnn_weight": args.cnn_weight, "test": evaluate_predictions(y_test, fused, 4),
                        "predicted_counts": np.bincount(fused.argmax(1), minlength=4).tolist()}
        rows["fused"] = fused
    cfg = BaselineConfig(metric="accuracy")
    for name in versus:
        scores, chosen = fit_predict(name, images[train_idx], y4[train_idx], images[test_idx], 4, cfg)
        out["versus"][name] = {"test": evaluate_predictions(y_test, scores, 4), "fitted": chosen,
                               "paired": {row: paired_comparison(y_test, p, scores, 4, "accuracy")
                                          for row, p in rows.items()}}

    fmt = lambda m: {k: round(v["value"], 4) for k, v in m.items()}  # noqa: E731
    print(f"dense VLAD-SVM ({out['vlad_dim']} dims, C {fitted['C']:g}, {total_s:.0f} s):", fmt(out["test"]))
    if cnn is not None:
        print(f"CNN ensemble of {len(args.cnn_runs)}:", fmt(out["cnn_ensemble"]["test"]))
        print(f"fused ({args.cnn_weight:g} CNN):", fmt(out["fused"]["test"]))
    for name, v in out["versus"].items():
        for row, c in v["paired"].items():
            print(f"{row} vs {name}: {paired_summary(c)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
