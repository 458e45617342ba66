"""How far a fine-tuning recipe gets on ELPV (4-class, the 75/25 hash-assigned test split).

The test split is the one every dlvm evaluation uses (components/evaluation/split.py); the
recipe only ever sees the training labels (its validation split, which picks the best epoch,
is carved from them). Prints and writes (``--out``) test accuracy, balanced accuracy and
macro-F1 with 95 % bootstrap intervals, the training record (validation score per epoch, the
epoch kept) and the thread settings.

    python -m benchmarks.elpv_recipe --size 192 --epochs 60 --widths 16,32,64,128 --seed 0
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import components  # noqa: F401  (OMP_WAIT_POLICY before torch)
from benchmarks.label_efficiency import load_elpv
from components.evaluation.metrics import evaluate_predictions
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
    args = ap.parse_args(argv)

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
           "without_class_offsets": without}
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


if __name__ == "__main__":
    main()
