"""Episodic few-shot accuracy (N-way K-shot, CIs over episodes from the test split) of
prototypes, the linear probe, plain fine-tuning, Reptile and first-order MAML on one backbone.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.episodic_fewshot --dataset elpv --specs 4way1shot,4way5shot
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.episodic_fewshot --dataset wm811k --specs 5way1shot,5way5shot

ELPV: the 2,624 cells, 4 classes, the protocol's hash-assigned 25 % test split. WM-811K:
up to ``--per-class`` maps per class from the published training subsets (meta-training)
and from the published test split (episodes), nearest-neighbour resized. The backbone is a
randomly initialised tiny ResNet (``scratch``) unless ``--backbone`` names a checkpoint
file with a ``state_dict``. Results go to benchmarks/results/episodic-fewshot/.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from components.data.wm811k import find_wm811k
from components.evaluation.episodes import EpisodeConfig, episodes_markdown, evaluate_episodes, parse_specs
from components.evaluation.split import test_split
from components.evaluation.sweep import Backbone
from components.models.resnet import ResNetConfig
from components.training.meta import MetaConfig

RESULTS = Path(__file__).parent / "results" / "episodic-fewshot"


def load_elpv(size: int):
    from components.data.elpv import CLASS_NAMES_4, class_name, elpv_labels, elpv_root
    from components.data.images import load_image_array

    rows, root = elpv_labels(), elpv_root()
    shas = [hashlib.sha256((root / r.path).read_bytes()).hexdigest() for r in rows]
    images = np.stack([load_image_array(root / r.path, size) for r in rows])
    labels = np.array([CLASS_NAMES_4.index(class_name(r.probability)) for r in rows])
    train_idx, test_idx = test_split(shas, labels)
    return images, labels, train_idx, test_idx, CLASS_NAMES_4


def load_wm811k(size: int, per_class: int, seed: int = 0):
    with np.load(find_wm811k(), allow_pickle=False) as npz:
        d = {k: npz[k] for k in npz.files}  # an NpzFile decompresses an array on every access
    split_names = [str(s) for s in d["split_names"]]
    classes = [str(c) for c in d["classes"]]
    rng = np.random.default_rng(seed)
    is_test = d["split"] == split_names.index("test")
    is_train = np.isin(d["split"], [split_names.index(s) for s in split_names if s.startswith("train")])
    chosen = []
    for mask in (is_train, is_test):
        for c in range(len(classes)):
            members = np.flatnonzero(mask & (d["label"] == c))
            chosen.append(rng.permutation(members)[:per_class])
    n_train = sum(len(c) for c in chosen[: len(classes)])
    idx = np.concatenate(chosen)

    def decode(i: int) -> np.ndarray:
        m = d["pixels"][d["offsets"][i]:d["offsets"][i + 1]].reshape(int(d["heights"][i]), int(d["widths"][i]))
        return np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST))

    images = np.stack([decode(i) for i in idx])
    return images, d["label"][idx].astype(np.int64), np.arange(n_train), np.arange(n_train, len(idx)), classes


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("elpv", "wm811k"), required=True)
    p.add_argument("--specs", required=True)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--query", type=int, default=10)
    p.add_argument("--per-class", type=int, default=200, help="WM-811K maps per class and split")
    p.add_argument("--meta-steps", type=int, default=50)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--eval-inner-steps", type=int, default=10)
    p.add_argument("--inner-lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.dataset == "elpv":
        images, labels, train_idx, test_idx, classes = load_elpv(args.size)
    else:
        images, labels, train_idx, test_idx, classes = load_wm811k(args.size, args.per_class)
    loaded = time.perf_counter() - t0
    meta = MetaConfig(meta_steps=args.meta_steps, meta_batch=args.meta_batch, inner_steps=args.inner_steps,
                      eval_inner_steps=args.eval_inner_steps, inner_lr=args.inner_lr, query=5, device="cpu")
    cfg = EpisodeConfig(specs=parse_specs(args.specs), episodes=args.episodes, query=args.query, meta=meta,
                        device="cpu")
    backbone = Backbone("scratch (tiny ResNet, random init)", ResNetConfig.tiny(args.size), None)
    result = evaluate_episodes([backbone], images, labels, train_idx, test_idx, cfg, progress=True)
    seconds = time.perf_counter() - t0
    md = episodes_markdown(result, cfg)
    out = {"args": vars(args), "classes": classes, "n_train": int(len(train_idx)), "n_test": int(len(test_idx)),
           "load_seconds": round(loaded, 1), "seconds": round(seconds, 1), "threads": args.threads,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpus": os.cpu_count(), **result.to_dict()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{args.dataset}-{args.size}px-{args.specs.replace(',', '-')}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2))
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    print(f"{seconds:.0f} s ({loaded:.0f} s loading)")
    return out


if __name__ == "__main__":
    main()
