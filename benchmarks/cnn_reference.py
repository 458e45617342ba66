"""A reference point outside the ViT family: a small CNN trained from scratch on ELPV 4-class.

The label-efficiency table on 2 CPU cores caps every ViT (pretrained or random, probed or
fine-tuned, 64 or 128 px) at 63-69 %. This script asks whether that ceiling is the transformer
(no convolutional prior, 1,968 training images) or the budget and the input: the same 75/25
stratified split, the same augmentations (plus 90-degree turns: cells are square), a plain
VGG-style CNN with batch norm, trained from scratch at the resolution given.

    .venv/bin/python -m benchmarks.cnn_reference --size 128 --epochs 20    # 4 min on 2 CPU cores
    .venv/bin/python -m benchmarks.cnn_reference --size 256 --epochs 25    # 35 min on 2 CPU cores

Prints test accuracy after every epoch (a diagnostic, not model selection: the number reported
is the last epoch's) and writes ``--out`` (default ``benchmarks/results/cnn-reference-<size>.json``):
4-class accuracy / macro-F1 / balanced accuracy with 95 % bootstrap intervals, 2-class accuracy
(defect probability >= 0.5), predicted class counts, per-epoch history.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.label_efficiency import load_elpv
from components.evaluation.metrics import evaluate_predictions
from components.evaluation.split import test_split
from components.models.vit import normalize_uint8
from components.training.augment import Augment, augment_batch
from components.training.device import pick_device
from components.training.optim import cosine_lr

ROOT = Path(__file__).resolve().parents[1]


def conv_net(width: int, num_classes: int) -> nn.Sequential:
    """Stride-2 stem, three double-conv stages (x2 channels, /2 pixels each), average pool."""
    def stage(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)]
    w = width
    return nn.Sequential(nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                         *stage(w, 2 * w), *stage(2 * w, 4 * w), *stage(4 * w, 8 * w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes))


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    net.eval()
    preds = [net(normalize_uint8(images[i:i + batch_size])).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(preds).numpy()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128, help="input pixels (ELPV cells are 300 x 300)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--width", type=int, default=16, help="stem channels (stages: 2x, 4x, 8x)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--elpv-images", type=int, default=None, help="a stratified subset (smoke runs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", type=Path, default=ROOT / ".dlvm" / "bench-cache")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.size < 16 or args.epochs < 1 or args.width < 1:
        raise SystemExit(f"cnn_reference: --size must be >= 16, --epochs and --width >= 1 "
                         f"(got {args.size}, {args.epochs}, {args.width})")
    out = args.out or ROOT / "benchmarks" / "results" / f"cnn-reference-{args.size}.json"

    images, y4, y2, shas = load_elpv(args.size, args.cache, subset=args.elpv_images)
    train_idx, test_idx = test_split(shas, y4, test_fraction=0.25)
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    net = conv_net(args.width, 4).to(device)
    train_x = torch.from_numpy(images[train_idx]).to(device)
    train_y = torch.from_numpy(y4[train_idx]).to(device)
    test_x = torch.from_numpy(images[test_idx]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.05)
    augment = Augment(rot90=True)
    gen = torch.Generator().manual_seed(args.seed)
    batch = min(args.batch_size, len(train_idx))
    steps_per_epoch = len(train_idx) // batch
    total = args.epochs * steps_per_epoch
    print(f"CNN (width {args.width}) from scratch on ELPV 4-class at {args.size} px: {len(train_idx)} train / "
          f"{len(test_idx)} test, {args.epochs} epochs on {device}", flush=True)

    history, step, t0 = [], 0, time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.randperm(len(train_idx), generator=gen)
        losses = []
        for j in range(steps_per_epoch):
            idx = order[j * batch:(j + 1) * batch].to(device)
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, steps_per_epoch, args.lr)
            loss = F.cross_entropy(net(augment_batch(train_x[idx], augment, gen)), train_y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        pred = predict(net, test_x)
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4),
                        "test_accuracy": round(float((pred == y4[test_idx]).mean()), 4),
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(history[-1]), flush=True)

    pred = predict(net, test_x)
    result = {
        "command": "python -m benchmarks.cnn_reference " + " ".join(argv if argv is not None else sys.argv[1:]),
        "size": args.size, "epochs": args.epochs, "width": args.width, "seed": args.seed, "device": str(device),
        "parameters": sum(p.numel() for p in net.parameters()), "train": len(train_idx), "test": len(test_idx),
        "metrics_4class": evaluate_predictions(y4[test_idx], pred, 4),
        "accuracy_2class": float(((pred >= 2) == (y2[test_idx] == 1)).mean()),
        "predicted_counts": np.bincount(pred, minlength=4).tolist(),
        "true_counts": np.bincount(y4[test_idx], minlength=4).tolist(),
        "seconds": round(time.perf_counter() - t0, 1), "history": history,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    acc = result["metrics_4class"]["accuracy"]
    print(f"4-class accuracy {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}], 2-class "
          f"{result['accuracy_2class']:.3f}, predicted {result['predicted_counts']} (true {result['true_counts']}) "
          f"-> {out}", flush=True)
    return result


if __name__ == "__main__":
    main()
