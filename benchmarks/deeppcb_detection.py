"""Box detection on DeepPCB (components/models/detection.py, components/training/detect.py):
train on a fraction of the published ``trainval`` split, evaluate on its ``test`` split.

The tested images (``ID_test.png``, 640x640, 3-12 defect boxes of 6 types) are decoded at
``--size`` (boxes scaled with them); ``--fraction`` of the 1,000 trainval images (a seeded
draw) train the detector for ``--steps`` steps of ``--batch-size``; the first ``--n-test``
images of the test split (in id order; all 500 by default) are the test set. Metrics: mAP@0.5
(VOC, all-point), mAP@0.33 and precision / recall / F-score at IoU > 0.33 (DeepPCB's
criterion) at ``--score-threshold``, each with a percentile bootstrap interval over test images.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.deeppcb_detection --fraction 0.25 --steps 600

The backbone is ``--arch`` with random weights (scratch) unless ``--weights`` names a dlvm
ResNet or ViT backbone checkpoint (``backbone_config`` + ``state_dict``; a ViT's position table
is resized to ``--size``). Writes ``--out`` (default
``benchmarks/results/deeppcb-detection-<arch>-<size>-f<fraction>.json``) and, with ``--png``,
a drawing of test images with true (green) and found (red) boxes.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.device_bundle import deeppcb_root
from components.anomaly.features import feature_backbone
from components.data.images import load_image_array
from components.evaluation.detection import draw_boxes, evaluate_detection
from components.models.backbones import build_backbone, checkpoint_config, config_to_dict, family_of
from components.models.checkpoint import load_checkpoint
from components.models.detection import DETECTOR_FAMILIES
from components.models.resnet import ResNetConfig
from components.models.vit import ViTConfig
from components.training.detect import DetectConfig, predict_boxes, train_detector

CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
ARCHS = {"resnet-tiny": ResNetConfig.tiny, "resnet-small": ResNetConfig.small, "resnet18": ResNetConfig.resnet18,
         "vit-tiny": lambda img_size: ViTConfig.tiny(img_size=img_size, patch_size=8, depth=6)}
ORIGINAL = 640


def load_split(ids: list[str], size: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Tested images of ``ids`` at ``size`` px and their boxes (scaled) and class indices."""
    found: dict[str, list] = {}
    root = deeppcb_root()
    for row in csv.DictReader(open(root / "boxes.csv")):
        found.setdefault(Path(row["image"]).name, []).append(row)
    images = np.stack([load_image_array(root / "images" / f"{i}_test.png", size)
                       for i in tqdm(ids, desc="images", leave=False)])
    boxes, labels = [], []
    for i in ids:
        rows = found.get(f"{i}_test.png", [])
        boxes.append(np.array([[float(r[k]) * size / ORIGINAL for k in ("x1", "y1", "x2", "y2")] for r in rows],
                              np.float32).reshape(-1, 4))
        labels.append(np.array([CLASSES.index(r["defect"]) for r in rows], np.int64))
    return images, boxes, labels


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="resnet-small")
    ap.add_argument("--weights", type=Path, help="a dlvm ResNet backbone checkpoint (default: random weights)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--fraction", type=float, default=0.25, help="fraction of the 1,000 trainval images")
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--crop", type=int, help="train on random crops of this size (default: whole images)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--score-threshold", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--png", type=Path, help="also draw 8 test images with their boxes here")
    ap.add_argument("--tile", type=int, help="also detect the test split in overlapping windows of this size "
                    "(metrics_tiled in the JSON)")
    ap.add_argument("--weights-label", default="domain", help="what --weights is, for the JSON's name: domain, generic")
    ap.add_argument("--resume", type=Path, help="training checkpoint: written as the run goes, resumed from if present")
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 1:
        raise SystemExit(f"--fraction must be in (0, 1], got {args.fraction}")
    torch.set_num_threads(args.threads)
    started = time.time()
    split = {row["id"]: row["split"] for row in csv.DictReader(open(deeppcb_root() / "splits.csv"))}
    trainval = sorted(i for i, s in split.items() if s == "trainval")
    rng = np.random.default_rng(args.seed)
    train_ids = sorted(rng.permutation(trainval)[:max(1, round(args.fraction * len(trainval)))])
    test_ids = sorted(i for i, s in split.items() if s == "test")[:args.n_test]
    train_images, train_boxes, train_labels = load_split(train_ids, args.size)
    test_images, test_boxes, test_labels = load_split(test_ids, args.size)
    loaded = time.time()
    if args.weights:
        checkpoint = load_checkpoint(args.weights.read_bytes())
        if family_of(checkpoint_config(checkpoint)) not in DETECTOR_FAMILIES:
            raise SystemExit("the detector needs a ResNet or ViT backbone checkpoint")
        backbone, backbone_cfg = feature_backbone(checkpoint, args.size)
    else:
        backbone_cfg = ARCHS[args.arch](img_size=args.size)
        backbone = build_backbone(backbone_cfg, seed=args.seed)
    cfg = DetectConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                       crop=args.crop)
    model, history = train_detector(backbone, train_images, train_boxes, train_labels, len(CLASSES), cfg,
                                    progress=not args.no_progress, checkpoint_path=args.resume)
    if args.resume:
        args.resume.unlink(missing_ok=True)  # trained: a rerun starts over instead of resuming at the last checkpoint
    trained = time.time()
    model = model.to("cpu")
    preds = predict_boxes(model, test_images, cfg, progress=not args.no_progress)
    truths = [{"boxes": b, "labels": lab} for b, lab in zip(test_boxes, test_labels)]
    metrics = evaluate_detection(preds, truths, CLASSES, score_threshold=args.score_threshold, n_boot=args.n_boot,
                                 seed=args.seed)
    done = time.time()
    tiled = None
    if args.tile:
        from dataclasses import replace as with_fields
        tiled_preds = predict_boxes(model, test_images, with_fields(cfg, tile=args.tile), progress=not args.no_progress)
        tiled = evaluate_detection(tiled_preds, truths, CLASSES, score_threshold=args.score_threshold,
                                   n_boot=args.n_boot, seed=args.seed)
        tiled["seconds"] = round(time.time() - done, 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "backbone": config_to_dict(backbone_cfg), "detect": cfg.to_dict(),
              "n_train_images": len(train_ids), "n_train_boxes": int(sum(len(b) for b in train_boxes)),
              "metrics": metrics, "metrics_tiled": tiled, "resumed_from_step": history["resumed_from_step"],
              "loss_first_10": float(np.mean(history["loss"][:10])),
              "loss_last_10": float(np.mean(history["loss"][-10:])),
              "seconds": {"load": round(loaded - started, 1), "train": round(trained - loaded, 1),
                          "evaluate": round(done - trained, 1)},
              "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
              "load_avg_1m_at_end": load, "cores": os.cpu_count()}
    weights = args.weights_label if args.weights else "scratch"
    out = args.out or Path(__file__).parent / "results" / (
        f"deeppcb-detection-{args.arch if not args.weights else 'weights'}-{weights}-{args.size}-f{args.fraction:g}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if args.png:
        args.png.write_bytes(draw_boxes(test_images[:8], preds[:8], truths[:8], CLASSES, args.score_threshold))
    m = metrics
    print(f"DeepPCB detection, {len(train_ids)} train / {len(test_ids)} test images at {args.size} px, "
          f"{args.steps} steps ({result['seconds']['train']} s): mAP@0.5 {m['map50']['value']:.3f} "
          f"[{m['map50']['ci_low']:.3f}, {m['map50']['ci_high']:.3f}], mAP@0.33 {m['map33']['value']:.3f}, "
          f"F-score@0.33 {m['fscore33']['value']:.3f} [{m['fscore33']['ci_low']:.3f}, {m['fscore33']['ci_high']:.3f}]"
          f"{'' if tiled is None else f'; tiled ({args.tile} px windows): mAP@0.5 ' + format(tiled['map50']['value'], '.3f')}"
          f" -> {out}")
    return result


if __name__ == "__main__":
    main()
