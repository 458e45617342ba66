"""WM-811K with every training label: the product's fine-tune (``adapt``) with the auto recipe's
settings for this data, scored on the published test split.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.wm811k_finetune --epochs 24 --max-minutes 45 --threads 1 \
        --out benchmarks/results/wm811k-finetune/all-64px-pool-24ep.json

The recipe is ``resolve_recipe('auto', profile)`` for the data's profile (49,798 unlabeled maps,
median 27x27, categorical pixels, 37,348 labels, imbalance 248:1) on this device with
``pretrain=False`` (the from-scratch fine-tune): 64 px nearest-neighbour behind a max-pool stem
on a CPU. Overrides are explicit flags and recorded: ``--size`` and ``--stem-pool`` (the input and
its stem) and ``--epochs`` (the recipe's count comes from a planning throughput; the cosine
schedule is laid out over the epochs given, so they should fit the time). ``--train`` picks the
published label set (``train_1``, ``train_10``, ``train_10+20``, ``all``); the validation split
that picks the best epoch and fits the class offsets is carved from those labels (``adapt``),
never from ``val`` or ``test``.

``--init`` starts the fine-tune from SimCLR pretraining (the auto recipe's, ``--pretrain-steps``
steps, cached and resumable like the label-efficiency benchmark's) on the unlabeled pool
(``domain-simclr``: the train+val maps, never a test map) or on the generic corpus
(``generic-simclr``: ``../shared/data/generic-imagenette``, grayscale, same input and network)
instead of from scratch: at which label set does a pretrained start reach the all-label score?

Writes the test metrics (accuracy, balanced accuracy, macro-F1, 95 % bootstrap intervals),
per-class F1, the validation balanced accuracy of every epoch, the recipe and the thread
settings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import components  # noqa: F401  (OMP_WAIT_POLICY before torch)
from benchmarks.device_bundle import GENERIC_CORPUS
from benchmarks.label_efficiency import load_generic, pretrained_encoder
from benchmarks.wafer_maps import LABEL_SETS, TEST_SPLIT, load_wafer_arrays, stratified_sample, wafer_profile
from components.data.wm811k import POOL_SPLITS
from components.evaluation.metrics import confusion_matrix, evaluate_predictions
from components.training.adapt import adapt, predict_proba
from components.training.device import cpu_threads
from components.training.recipes import resolve_recipe, stem_pool

ROOT = Path(__file__).resolve().parents[1]
INITS = ("scratch", "domain-simclr", "generic-simclr")


def per_class_f1(cm: np.ndarray) -> list[float]:
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1)
    return [round(float(2 * t / d), 4) if d else float("nan") for t, d in zip(tp, denom)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default="all", choices=sorted(LABEL_SETS))
    ap.add_argument("--size", type=int, default=0, help="input px (default 0: the auto recipe's own choice)")
    ap.add_argument("--epochs", type=int, default=0, help="fine-tune epochs (default 0: the auto recipe's own choice)")
    ap.add_argument("--stem-pool", type=int, default=None, choices=(0, 1),
                    help="max-pool after the stem (1: a 64 px input costs what 32 px costs without; "
                         "default: the auto recipe's rule, from 64 px)")
    ap.add_argument("--init", default="scratch", choices=INITS, help="where the fine-tune starts")
    ap.add_argument("--pretrain-steps", type=int, default=None,
                    help="SimCLR steps (default: the auto recipe's share of --max-minutes)")
    ap.add_argument("--generic-corpus", type=Path, default=GENERIC_CORPUS)
    ap.add_argument("--max-minutes", type=float, default=None, help="hard stop of the training loop")
    ap.add_argument("--test-limit", type=int, default=None, help="stratified subsample of the test split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--npz", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=ROOT / ".dlvm" / "bench-cache")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    runtime = cpu_threads(args.threads)
    probe_data = load_wafer_arrays(32, args.cache, args.npz)
    train_idx = probe_data.label_set(args.train)
    profile = wafer_profile(probe_data, train_idx)
    recipe = resolve_recipe("auto", profile, seed=args.seed, device="cpu", threads=runtime["threads"],
                            pretrain=False, budget_minutes=args.max_minutes)
    size = args.size or recipe.preprocess.size
    data = probe_data if size == 32 else load_wafer_arrays(size, args.cache, args.npz)
    backbone = dataclasses.replace(recipe.backbone, img_size=size)
    ft = recipe.adapt["finetune"]
    overrides = {}
    if args.size and args.size != recipe.preprocess.size:
        overrides["size"] = f"{args.size} px instead of the auto recipe's {recipe.preprocess.size}"
    if args.epochs and args.epochs != ft.epochs:
        overrides["epochs"] = f"{args.epochs} instead of the auto recipe's {ft.epochs} (fits the time here)"
        ft = dataclasses.replace(ft, epochs=args.epochs, patience=max(10, args.epochs // 2))  # the auto rule
    # the recipe's rule for another size, unless --stem-pool says otherwise: a 32 px run keeps the
    # 16 px maps after the stem, as the 32 px runs before the rule had
    pool = bool(args.stem_pool) if args.stem_pool is not None else stem_pool(size, profile.categorical)
    if pool != backbone.stem_pool:
        overrides["stem_pool"] = f"{pool} instead of the auto recipe's {backbone.stem_pool}"
        backbone = dataclasses.replace(backbone, stem_pool=pool)
    ft = dataclasses.replace(ft, max_seconds=args.max_minutes * 60 if args.max_minutes else None, device="cpu")
    test_idx = stratified_sample(data.indices(TEST_SPLIT), data.labels, args.test_limit, args.seed)
    print(recipe.describe(), flush=True)
    print(f"overrides: {overrides or 'none'}; train {args.train}: {len(train_idx)} maps, test {len(test_idx)} maps; "
          f"threads {runtime}", flush=True)

    state, pretraining = None, None
    if args.init != "scratch":
        steps = args.pretrain_steps or resolve_recipe("auto", profile, seed=args.seed, device="cpu", pretrain=True,
                                                      threads=runtime["threads"],
                                                      budget_minutes=args.max_minutes).pretrain.steps
        sim = dataclasses.replace(recipe.pretrain, backbone=backbone, steps=steps, warmup_steps=max(1, steps // 10),
                                  max_seconds=None, device="cpu")
        if args.init == "domain-simclr":
            images = data.images[data.indices(*[s for s in POOL_SPLITS if s in data.split_names])]
        else:
            if not args.generic_corpus.is_dir():
                raise SystemExit(f"no generic corpus at {args.generic_corpus} (--generic-corpus)")
            images = load_generic(args.generic_corpus, size, 10**6, args.cache)
        state, pretraining = pretrained_encoder(f"wm811k-ft-{args.init}", images, sim, args.cache)
        print(f"pretraining {args.init}: {json.dumps(pretraining)}", flush=True)

    t0 = time.perf_counter()
    clf = adapt(backbone, state, data.images[train_idx], data.labels[train_idx], len(data.classes), ft, progress=True,
                preprocess=data.preprocess.to_dict())
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    proba = predict_proba(clf, data.images[test_idx], device="cpu")
    test_s = time.perf_counter() - t1
    y_test = data.labels[test_idx]
    metrics = evaluate_predictions(y_test, proba, len(data.classes))
    cm = confusion_matrix(y_test, proba.argmax(1), len(data.classes))
    out = {"command": "python -m benchmarks.wm811k_finetune " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
           "train_split": args.train, "n_train": int(len(train_idx)), "n_test": int(len(test_idx)),
           "runtime": runtime, "recipe": recipe.to_dict(), "overrides": overrides,
           "finetune": {k: v for k, v in ft.to_dict().items() if k != "augment"}, "img_size": size,
           "backbone": dataclasses.asdict(backbone), "init": args.init, "pretraining": pretraining,
           "n_params": sum(p.numel() for p in clf.encoder.parameters()),
           "train_seconds": round(train_s, 1), "test_seconds": round(test_s, 1), "training": clf.training_log,
           "test": metrics, "per_class_f1": dict(zip(data.classes, per_class_f1(cm))),
           "confusion": cm.tolist(), "classes": data.classes}
    print(json.dumps({k: {m: round(v, 4) for m, v in d.items()} for k, d in metrics.items()}))
    print("per-class F1:", out["per_class_f1"])
    print("training:", json.dumps(clf.training_log))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
