"""How far a fine-tuning recipe gets on ELPV (4-class, the 75/25 hash-assigned test split).

The test split is the one every dlvm evaluation uses (components/evaluation/split.py); the
recipe only ever sees the training labels (its validation split, which picks the best epoch,
is carved from them). Prints and writes (``--out``) test accuracy, balanced accuracy and
macro-F1 with 95 % bootstrap intervals, the training record (validation score per epoch, the
epoch kept) and the thread settings.

    python -m benchmarks.elpv_recipe --size 192 --epochs 60 --widths 16,32,64,128 --seed 0

Each run also writes its test probabilities, so runs of different seeds combine into a seed
ensemble (the average of their probabilities), scored on the same split and compared, paired,
with sanity baselines fitted there (``--versus``, cross-validated for ``--ensemble-metric``):

    python -m benchmarks.elpv_recipe --ensemble run-seed0.json run-seed1.json --versus svm-hog
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

import components  # noqa: F401  (OMP_WAIT_POLICY before torch)
from benchmarks.label_efficiency import load_elpv
from components.evaluation.baselines import SANITY_BASELINES, BaselineConfig, fit_predict
from components.evaluation.metrics import evaluate_predictions, paired_comparison
from components.evaluation.split import test_split
from components.models.resnet import ResNetConfig
from components.training.adapt import AdaptConfig, adapt, predict_proba
from components.training.augment import Augment
from components.training.device import cpu_threads

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--widths", default="16,32,64,128")
    ap.add_argument("--layers", default="1,1,1,1")
    ap.add_argument("--stem-pool", type=int, default=1)
    ap.add_argument("--input-norm", default="dataset", help="dataset or image (each image standardized in the model)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--val", type=float, default=0.1)
    ap.add_argument("--patience", type=int, default=0)
    ap.add_argument("--balance", default="auto")
    ap.add_argument("--tta", default="dihedral")
    ap.add_argument("--class-offsets", default="none", help="fit per-class logit offsets on the validation split "
                                                            "for this metric (macro_f1, balanced_accuracy, accuracy)")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--subset", type=int, default=None, help="stratified subset of N images (smoke runs)")
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "results" / ".cache")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--ensemble", type=Path, nargs="+", default=None,
                    help="combine these runs' test probabilities instead of training")
    ap.add_argument("--versus", default="svm-hog", help="sanity baselines the ensemble is compared with (comma list)")
    ap.add_argument("--ensemble-metric", default="accuracy", help="the metric of the paired comparisons")
    args = ap.parse_args(argv)
    if args.ensemble:
        return ensemble(args)

    runtime = cpu_threads(args.threads)
    images, y4, _, shas = load_elpv(args.size, args.cache, subset=args.subset)
    train_idx, test_idx = test_split(shas, y4)
    backbone = ResNetConfig(img_size=args.size, layers=tuple(int(v) for v in args.layers.split(",")),
                            widths=tuple(int(v) for v in args.widths.split(",")), stem_kernel=3,
                            stem_pool=bool(args.stem_pool), input_norm=args.input_norm)
    cfg = AdaptConfig(method="finetune", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      weight_decay=args.weight_decay, optimizer=args.optimizer, label_smoothing=args.label_smoothing,
                      drop_path=0.0, warmup_epochs=1.0, augment=Augment.dihedral(), val_fraction=args.val,
                      patience=args.patience, class_balance=args.balance, ema_decay=args.ema, tta=args.tta,
                      class_offsets=args.class_offsets, seed=args.seed, device="cpu",
                      max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    t0 = time.perf_counter()
    clf = adapt(backbone, None, images[train_idx], y4[train_idx], 4, cfg, progress=True)
    train_s = time.perf_counter() - t0
    proba = predict_proba(clf, images[test_idx], device="cpu")
    metrics = evaluate_predictions(y4[test_idx], proba, 4)
    without = None
    if clf.training_log.get("class_offsets"):  # the same model without its offsets: what they changed
        with torch.no_grad():
            clf.head.bias -= torch.tensor(clf.training_log["class_offsets"])
        plain = predict_proba(clf, images[test_idx], device="cpu")
        without = {"test": evaluate_predictions(y4[test_idx], plain, 4),
                   "predicted_counts": np.bincount(plain.argmax(1), minlength=4).tolist()}
        with torch.no_grad():
            clf.head.bias += torch.tensor(clf.training_log["class_offsets"])
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "runtime": runtime, "train_seconds": round(train_s, 1),
           "n_params": sum(p.numel() for p in clf.encoder.parameters()), "training": clf.training_log,
           "test": metrics, "predicted_counts": np.bincount(proba.argmax(1), minlength=4).tolist(),
           "without_class_offsets": without, "test_key": split_key(shas, test_idx),
           "test_labels": y4[test_idx].tolist(), "test_proba": np.round(proba, 6).tolist()}
    print(json.dumps({k: out[k] for k in ("train_seconds", "n_params", "predicted_counts")}),
          {k: round(v["value"], 4) for k, v in metrics.items() if isinstance(v, dict) and "value" in v})
    if without:
        print("without the class offsets:", without["predicted_counts"],
              {k: round(v["value"], 4) for k, v in without["test"].items() if isinstance(v, dict) and "value" in v})
    print("training:", json.dumps({k: v for k, v in clf.training_log.items() if k != "val_scores"}),
          "val:", clf.training_log.get("val_scores"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=str))
    return out


def split_key(shas: list[str], idx: np.ndarray) -> str:
    """Names the test images (in order) a run was scored on, so only runs on the same split combine."""
    return hashlib.sha256("".join(shas[i] for i in idx).encode()).hexdigest()[:16]


def paired_summary(c: dict) -> str:
    """One line for a ``paired_comparison`` result: both scores, the bound, p and the verdict."""
    return (f"{c['metric']} {c['candidate']:.4f} vs {c['other']:.4f}, one-sided 95 % bound of the difference "
            f"{c['ci_low']:+.4f}, p {c['p_value']:.4f}: {c['verdict']}")


def ensemble(args: argparse.Namespace) -> dict:
    """Average the runs' test probabilities; score the average and each member; compare the average,
    paired on the same test images, with each ``--versus`` baseline fitted on the same training split."""
    runs = [json.loads(p.read_text()) for p in args.ensemble]
    missing = [str(p) for p, r in zip(args.ensemble, runs) if "test_proba" not in r]
    if missing:
        raise SystemExit(f"no test probabilities in {', '.join(missing)} (written by runs since 2026-11-30)")
    if len({r["test_key"] for r in runs}) > 1:
        raise SystemExit("the runs were scored on different test splits (test_key differs); only runs of one "
                         "--subset/--size setting combine")
    versus = [v for v in args.versus.split(",") if v]
    unknown = [v for v in versus if v not in SANITY_BASELINES]
    if unknown:
        raise SystemExit(f"unknown baseline {', '.join(unknown)} (baselines: {', '.join(SANITY_BASELINES)})")
    y = np.array(runs[0]["test_labels"])
    proba = np.mean([np.array(r["test_proba"]) for r in runs], axis=0)
    members = [{"run": str(p), "seed": r["args"]["seed"], **{k: v["value"] for k, v in r["test"].items()}}
               for p, r in zip(args.ensemble, runs)]
    out = {"ensemble_of": [str(p) for p in args.ensemble], "test": evaluate_predictions(y, proba, 4),
           "members": members, "predicted_counts": np.bincount(proba.argmax(1), minlength=4).tolist(), "versus": {}}
    if versus:
        first = runs[0]["args"]
        subset = None if first.get("subset") in (None, "None") else int(first["subset"])
        images, y4, _, shas = load_elpv(int(first["size"]), args.cache, subset=subset)
        train_idx, test_idx = test_split(shas, y4)
        if split_key(shas, test_idx) != runs[0]["test_key"]:
            raise SystemExit("the ELPV images here differ from the runs' (test_key differs)")
        cfg = BaselineConfig(metric=args.ensemble_metric)
        for name in versus:
            scores, fitted = fit_predict(name, images[train_idx], y4[train_idx], images[test_idx], 4, cfg)
            out["versus"][name] = {"test": evaluate_predictions(y, scores, 4), "fitted": fitted,
                                   "paired": paired_comparison(y, proba, scores, 4, args.ensemble_metric)}
    print("members:", [{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()} for m in members])
    print("ensemble:", {k: round(v["value"], 4) for k, v in out["test"].items()}, out["predicted_counts"])
    for name, v in out["versus"].items():
        print(f"vs {name}: {paired_summary(v['paired'])}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
