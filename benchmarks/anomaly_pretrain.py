"""A domain and a generic backbone for the anomaly benchmark (benchmarks/anomaly_patchcore.py
``--weights``): the product's SimCLR pretraining of the same ResNet on two corpora, nothing
else different.

- ``--corpus deeppcb``: DeepPCB's *trainval* defect-free templates only (never a test-split
  image, never a tested image with defects), decoded at ``--scale`` px (the anomaly
  benchmark's ``--size``) and cut into random ``--crop`` px squares: the backbone sees traces
  and pads at the pixel scale the memory bank will.
- ``--corpus generic``: the generic corpus's (``../shared/data/generic-imagenette``) training
  photographs, grayscale at 128 px (their stored size), cut into crops the same way.

Both pools hold ``--pool`` crops; the recipe is components/training/recipes.py
``tiny_cnn_pretrain`` (SimCLR, the joint-embedding augmentations: the 8 symmetries, crops,
gain, noise) with the anomaly benchmark's ``--arch`` as backbone and ``--steps`` x
``--batch-size``. Writes ``--out`` (default
``benchmarks/results/.cache/anomaly-<corpus>-simclr-<arch>.pt``, git-ignored): a backbone
checkpoint (``backbone_config`` + ``state_dict`` + ``info``) that ``--weights`` loads.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.anomaly_pretrain --corpus deeppcb --steps 200
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.anomaly_pretrain --corpus generic --steps 200
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import components  # noqa: F401  (OMP_WAIT_POLICY before torch)
from benchmarks.anomaly_patchcore import ARCHS
from benchmarks.device_bundle import GENERIC_CORPUS, deeppcb_root, generic_train_paths
from components.data.images import Preprocess, load_image_array
from components.models.backbones import config_to_dict
from components.models.checkpoint import save_checkpoint
from components.training.pretrain import pretrain
from components.training.recipes import tiny_cnn_pretrain

CACHE = Path("benchmarks/results/.cache")


def random_crops(images: np.ndarray, n: int, crop: int, seed: int) -> np.ndarray:
    """``n`` random ``crop`` px squares from uint8 images ``[N, H, W]``, each from a random image."""
    if crop > min(images.shape[1:]):
        raise ValueError(f"crop {crop} px is larger than the images {images.shape[1:]}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(images), size=n)
    rows = rng.integers(images.shape[1] - crop + 1, size=n)
    cols = rng.integers(images.shape[2] - crop + 1, size=n)
    return np.stack([images[i, r:r + crop, c:c + crop] for i, r, c in zip(idx, rows, cols)])


def deeppcb_trainval_templates(scale: int, limit: int | None = None) -> np.ndarray:
    """The defect-free templates of DeepPCB's trainval split (sorted ids) at ``scale`` px."""
    root = deeppcb_root()
    rows = csv.DictReader((root / "splits.csv").read_text().splitlines())
    ids = sorted(row["id"] for row in rows if row["split"] == "trainval")
    return np.stack([load_image_array(root / "images" / f"{i}_temp.png", scale)
                     for i in tqdm(ids[:limit], desc="decode templates", leave=False)])


def generic_photos(limit: int) -> np.ndarray:
    """The generic corpus's first ``limit`` training photographs (sorted paths), grayscale, 128 px."""
    photo = Preprocess(128)
    return np.stack([load_image_array(p, photo)
                     for p in tqdm(generic_train_paths(GENERIC_CORPUS)[:limit], desc="decode generic", leave=False)])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=["deeppcb", "generic"], required=True)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="resnet-small")
    ap.add_argument("--scale", type=int, default=256, help="DeepPCB templates are decoded at this size")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--pool", type=int, default=4000, help="crops in the pretraining pool")
    ap.add_argument("--source-images", type=int, default=1000, help="templates / photographs the crops come from")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    source = (deeppcb_trainval_templates(args.scale, args.source_images) if args.corpus == "deeppcb"
              else generic_photos(args.source_images))
    pool = random_crops(source, args.pool, args.crop, args.seed)
    backbone = ARCHS[args.arch](args.crop)
    if getattr(backbone, "family", "") != "resnet":
        raise SystemExit("this pretraining cuts crops for a ResNet (any input size); a ViT's size is fixed")
    cfg = tiny_cnn_pretrain("simclr", backbone=backbone, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            warmup_steps=max(1, args.steps // 10), proj_hidden_dim=256, proj_dim=64, seed=args.seed)
    result = pretrain(pool, cfg, progress=True)
    info = {"corpus": args.corpus, "method": cfg.method, "arch": args.arch, "steps": len(result.losses),
            "batch_size": cfg.batch_size, "lr": cfg.lr, "crop": args.crop, "pool": len(pool),
            "source_images": len(source), "scale": args.scale if args.corpus == "deeppcb" else 128,
            "first_loss": round(result.losses[0], 4), "final_loss": round(float(np.mean(result.losses[-10:])), 4),
            "pretrain_seconds": round(result.seconds, 1), "total_seconds": round(time.time() - started, 1),
            "threads": torch.get_num_threads()}
    out = args.out or CACHE / f"anomaly-{args.corpus}-simclr-{args.arch}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    # img_size is the crop size it saw; the anomaly benchmark runs a ResNet at its own --size
    out.write_bytes(save_checkpoint({"kind": "backbone", "backbone_config": config_to_dict(backbone),
                                     "state_dict": result.encoder_state, "info": info}))
    print(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    main()
