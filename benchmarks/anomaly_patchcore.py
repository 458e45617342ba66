"""Anomaly detection without defect labels (PatchCore-style, components/anomaly) on real data.

- ``--data deeppcb``: DeepPCB's defect-free templates are the good images: the memory bank
  is fitted on ``--n-fit`` trainval templates, the threshold set on ``--n-cal`` other trainval
  templates for ``--false-alarm-rate``; the test set is ``--n-test`` test-split templates
  (good) and their tested images (anomalous, 3-12 defects each). Pixel AUROC uses the
  defect boxes as regions (every pixel inside a box is a defect pixel). The JSON keeps each
  test image's score under ``test_scores``.
- ``--data elpv``: functional cells (defect probability 0) are the good images, defective
  cells (probability 1) the anomalies; ``--n-test`` cells of probability 1/3 and 2/3 are left
  out of the headline AUROC and scored against the good test cells separately. Good cells
  are split fit / calibration / test.

    .venv/bin/python -m benchmarks.anomaly_patchcore --data deeppcb --size 256 --n-fit 60 --n-test 200
    .venv/bin/python -m benchmarks.anomaly_patchcore --data elpv --size 128 --n-fit 300

The backbone is ``--arch`` (a ResNet preset or a ViT) with random weights unless
``--weights`` names a dlvm backbone checkpoint (``backbone_config`` + ``state_dict``).
Writes ``--out`` (default ``benchmarks/results/anomaly-<data>-<arch>-<size>.json``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.device_bundle import deeppcb_root
from components.anomaly.features import FeatureConfig
from components.anomaly.patchcore import PatchCoreConfig, fit_patchcore
from components.data.images import load_image_array
from components.evaluation.anomaly import auroc, boxes_to_mask, evaluate_anomaly, heatmap_overlays, image_auroc
from components.models.backbones import build_backbone, checkpoint_config, load_backbone_weights
from components.models.checkpoint import load_checkpoint
from components.models.resnet import ResNetConfig
from components.models.vit import ViTConfig

ARCHS = {
    "resnet-tiny": lambda size: ResNetConfig.tiny(img_size=size),
    "resnet-small": lambda size: ResNetConfig.small(img_size=size),
    "resnet18": lambda size: ResNetConfig.resnet18(img_size=size),
    "vit-tiny": lambda size: ViTConfig.tiny(img_size=size, patch_size=8, depth=6),
}


def load_deeppcb(size: int, n_fit: int, n_cal: int, n_test: int, seed: int):
    root = deeppcb_root()
    ids = {row["id"]: row["split"] for row in csv.DictReader((root / "splits.csv").read_text().splitlines())}
    rng = np.random.default_rng(seed)
    trainval = rng.permutation(sorted(i for i, s in ids.items() if s == "trainval"))
    test = rng.permutation(sorted(i for i, s in ids.items() if s == "test"))[:n_test]
    boxes: dict[str, list] = {}
    for row in csv.DictReader((root / "boxes.csv").read_text().splitlines()):
        boxes.setdefault(row["image"], []).append(tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2")))

    def load(names):
        return np.stack([load_image_array(root / "images" / n, size) for n in tqdm(names, leave=False)])

    fit = load([f"{i}_temp.png" for i in trainval[:n_fit]])
    cal = load([f"{i}_temp.png" for i in trainval[n_fit:n_fit + n_cal]])
    good, bad = load([f"{i}_temp.png" for i in test]), load([f"{i}_test.png" for i in test])
    masks = np.stack([boxes_to_mask(boxes.get(f"images/{i}_test.png", []), (640, 640), size) for i in test])
    test_images = np.concatenate([good, bad])
    y = np.r_[np.zeros(len(good), bool), np.ones(len(bad), bool)]
    names = [f"{i}_temp.png" for i in test] + [f"{i}_test.png" for i in test]
    return fit, cal, test_images, y, np.concatenate([np.zeros_like(masks), masks]), {"names": names}


def load_elpv_cells(size: int, n_fit: int, n_cal: int, n_test: int, seed: int):
    from components.data.elpv import elpv_labels, elpv_root

    rows, root = elpv_labels(), elpv_root()
    rng = np.random.default_rng(seed)
    good = rng.permutation([i for i, r in enumerate(rows) if r.probability == 0])
    bad = [i for i, r in enumerate(rows) if r.probability == 1]
    middle = [i for i, r in enumerate(rows) if 0 < r.probability < 1]
    fit_idx, cal_idx, good_test = good[:n_fit], good[n_fit:n_fit + n_cal], good[n_fit + n_cal:][:n_test]
    bad_test = rng.permutation(bad)[:n_test]

    def load(idx):
        return np.stack([load_image_array(root / rows[i].path, size) for i in tqdm(idx, leave=False)])

    test_images = np.concatenate([load(good_test), load(bad_test)])
    y = np.r_[np.zeros(len(good_test), bool), np.ones(len(bad_test), bool)]
    return load(fit_idx), load(cal_idx), test_images, y, None, {"middle": load(rng.permutation(middle)[:n_test])}


def compare_runs(paths: list[Path], n_boot: int = 1000, seed: int = 0) -> dict:
    """DeepPCB runs' per-image scores (``test_scores``), after the fact: each run's image AUROC on
    boards of designs seen in trainval vs of designs absent from it (the first five digits of an
    id name the board group; four test groups have no trainval image), and each later run's
    AUROC minus the first run's on the boards both scored, with a paired bootstrap interval
    (the same boards resampled for both: the runs share test images, so their intervals alone
    overstate the uncertainty of the difference). Each part also gets the false-alarm and
    detection rates at the run's calibrated threshold."""
    rows = csv.DictReader((deeppcb_root() / "splits.csv").read_text().splitlines())
    splits = {row["id"]: row["split"] for row in rows}
    seen_groups = {i[:5] for i, s in splits.items() if s == "trainval"}
    results = {str(p): json.loads(p.read_text()) for p in paths}
    runs = {name: r["test_scores"] for name, r in results.items()}
    out: dict = {}
    for name, scores in runs.items():
        threshold = results[name].get("metrics", {}).get("threshold")
        ids = sorted({n.split("_")[0] for n in scores})
        row = {}
        for part, keep in (("seen_designs", True), ("unseen_designs", False)):
            pick = [i for i in ids if (i[:5] in seen_groups) == keep]
            if pick:
                y = np.r_[np.zeros(len(pick), bool), np.ones(len(pick), bool)]
                s = np.array([scores[f"{i}_temp.png"] for i in pick] + [scores[f"{i}_test.png"] for i in pick])
                row[part] = {"boards": len(pick), **image_auroc(y, s, n_boot, seed)}
                if threshold is not None:  # the run's calibrated threshold, on each part's boards
                    row[part]["false_alarm_rate"] = float(np.mean(s[~y] > threshold))
                    row[part]["detection_rate"] = float(np.mean(s[y] > threshold))
        out[name] = row
    first, *rest = runs
    rng = np.random.default_rng(seed)
    for name in rest:
        ids = sorted({n.split("_")[0] for n in runs[first]} & {n.split("_")[0] for n in runs[name]})
        y = np.r_[np.zeros(len(ids), bool), np.ones(len(ids), bool)]

        def run_auroc(run: str, idx: np.ndarray) -> float:
            board = [ids[k] for k in idx]
            return auroc(y, np.array([runs[run][f"{i}_temp.png"] for i in board] +
                                     [runs[run][f"{i}_test.png"] for i in board]))

        everything = np.arange(len(ids))
        diffs = np.array([run_auroc(name, idx) - run_auroc(first, idx)
                          for idx in rng.integers(0, len(ids), size=(n_boot, len(ids)))])
        point = run_auroc(name, everything) - run_auroc(first, everything)
        lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
        out[name][f"minus_{first}"] = {"boards": len(ids), "value": point, "ci_low": float(lo), "ci_high": float(hi)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["deeppcb", "elpv"], default="deeppcb")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="resnet-small")
    ap.add_argument("--weights", type=Path, help="a dlvm backbone checkpoint (default: random weights)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n-fit", type=int, default=60)
    ap.add_argument("--n-cal", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--stages", default="2,3", help="CNN stages whose features are stacked")
    ap.add_argument("--neighbourhood", type=int, default=3, help="features are averaged over this square (odd)")
    ap.add_argument("--dihedral", action="store_true", help="fit the bank on the 8 flips/turns of each good image")
    ap.add_argument("--coreset", type=float, default=0.02)
    ap.add_argument("--image-coreset", type=float, default=1.0,
                    help="greedy-thin each good image's patches to this fraction first (1: off)")
    ap.add_argument("--max-bank", type=int, default=10_000)
    ap.add_argument("--false-alarm-rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", type=Path, nargs="+", metavar="JSON",
                    help="no run: break down these DeepPCB results by seen / unseen board design and "
                         "compare each with the first on their shared boards (see compare_runs)")
    args = ap.parse_args(argv)
    if args.compare:
        comparison = compare_runs(args.compare)
        print(json.dumps(comparison, indent=1))
        return comparison
    torch.set_num_threads(args.threads)
    started = time.time()
    load = load_deeppcb if args.data == "deeppcb" else load_elpv_cells
    fit, cal, test_images, y, masks, extra = load(args.size, args.n_fit, args.n_cal, args.n_test, args.seed)
    loaded = time.time()
    if args.weights:
        checkpoint = load_checkpoint(args.weights.read_bytes())
        backbone_cfg = checkpoint_config(checkpoint)
        if getattr(backbone_cfg, "family", "") == "resnet":  # a ResNet takes any size; record the one used
            backbone_cfg = replace(backbone_cfg, img_size=args.size)
        backbone = build_backbone(backbone_cfg)
        load_backbone_weights(backbone, checkpoint["state_dict"])
    else:
        backbone_cfg = ARCHS[args.arch](args.size)
        backbone = build_backbone(backbone_cfg, seed=args.seed)
    features = FeatureConfig(cnn_stages=tuple(int(s) for s in args.stages.split(",")), neighbourhood=args.neighbourhood)
    cfg = PatchCoreConfig(features=features, coreset_fraction=args.coreset, max_bank=args.max_bank,
                          fit_dihedral=args.dihedral, image_coreset_fraction=args.image_coreset, seed=args.seed)
    model = fit_patchcore(backbone, backbone_cfg, fit, cfg, progress=True)
    fitted = time.time()
    model.calibrate(cal, args.false_alarm_rate, progress=True)
    scores, heat = model.score(test_images, progress=True)
    scored = time.time()
    metrics = evaluate_anomaly(y, scores, model.threshold, heat if masks is not None else None, masks)
    if "middle" in extra:  # ELPV cells of defect probability 1/3, 2/3 against the good test cells
        mid_scores, _ = model.score(extra["middle"], progress=True)
        good_scores = scores[~y]
        metrics["middle_vs_good_auroc"] = evaluate_anomaly(
            np.r_[np.zeros(len(good_scores), bool), np.ones(len(mid_scores), bool)],
            np.r_[good_scores, mid_scores], None)["image_auroc"]
    result = {"data": args.data, "arch": args.arch, "weights": str(args.weights or "random"), "size": args.size,
              "n_fit": len(fit), "n_cal": len(cal), "bank": int(model.bank.shape[0]),
              "feature_dim": int(model.bank.shape[1]), "patchcore": cfg.to_dict(),
              "false_alarm_rate_target": args.false_alarm_rate, "metrics": metrics,
              "seconds": {"load": round(loaded - started, 1), "fit": round(fitted - loaded, 1),
                          "calibrate_and_score": round(scored - fitted, 1)},
              "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    if "names" in extra:  # per-image scores, for breakdowns after the run (e.g. boards of unseen designs)
        result["test_scores"] = {name: round(float(s), 5) for name, s in zip(extra["names"], scores)}
    out = args.out or Path(f"benchmarks/results/anomaly-{args.data}-{args.arch}-{args.size}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    pick = np.r_[np.flatnonzero(~y)[:2], np.flatnonzero(y)[:6]]
    out.with_suffix(".png").write_bytes(heatmap_overlays(
        test_images[pick], heat[pick], [f"{'anomaly' if y[i] else 'good'} {scores[i]:.2f}" for i in pick],
        masks[pick] if masks is not None else None))
    print(json.dumps({k: result[k] for k in ("data", "arch", "size", "bank", "metrics", "seconds")}, indent=1))
    return result


if __name__ == "__main__":
    main()
