"""WM-811K for the benchmarks: every labeled map decoded once to a uint8 array at the recipe's
input (nearest-neighbour, as the auto recipe decodes categorical maps), cached, with the
published splits, and the data profile the auto recipe is chosen from.

The product reads WM-811K as PNG files (``dlvm data wm811k``, then ingest); decoding the
``wm811k.npz`` straight into arrays here gives the same pixels (the PNGs hold the values as
stored, and both go through ``components.data.images.decode_array``) without writing 62,248
files per benchmark run.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from components.data.images import Preprocess, decode_array
from components.data.profile import CATEGORICAL_LEVELS, DataProfile, with_labels
from components.data.wm811k import POOL_SPLITS, TEST_SPLIT, find_wm811k, load_wm811k

TRAIN_SPLITS = ("train_1", "train_10", "train_20", "train_29")
# The label sets of the label-efficiency table: published, disjoint, and growing.
LABEL_SETS = {"train_1": ("train_1",), "train_10": ("train_10",), "train_10+20": ("train_10", "train_20"),
              "all": TRAIN_SPLITS}


@dataclass
class WaferArrays:
    images: np.ndarray  # uint8 [N, S, S], every labeled map in file order
    labels: np.ndarray  # int64 [N]
    split: np.ndarray  # [N] index into split_names
    split_names: list[str]
    classes: list[str]
    preprocess: Preprocess
    source: Path

    def indices(self, *splits: str) -> np.ndarray:
        unknown = [s for s in splits if s not in self.split_names]
        if unknown:
            raise ValueError(f"unknown WM-811K splits {unknown}; the file has {', '.join(self.split_names)}")
        return np.flatnonzero(np.isin(self.split, [self.split_names.index(s) for s in splits]))

    def label_set(self, name: str) -> np.ndarray:
        if name not in LABEL_SETS:
            raise ValueError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}")
        return self.indices(*LABEL_SETS[name])


def load_wafer_arrays(size: int, cache: Path, npz: Path | None = None) -> WaferArrays:
    path = find_wm811k(npz)
    maps = load_wm811k(path)
    pre = Preprocess(size, "nearest", "stretch")  # median aspect 1.0: the auto recipe stretches
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{pre}".encode()).hexdigest()[:12]
    target = cache / f"wm811k-{size}-{key}.npy"
    if target.exists():
        images = np.load(target)
    else:
        images = np.stack([decode_array(Image.fromarray(maps.map(i), "L"), pre)
                           for i in tqdm(range(len(maps)), desc="decode WM-811K", leave=False)])
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp.npy")
        np.save(tmp, images)
        tmp.rename(target)
    return WaferArrays(images, maps.label, maps.split, maps.split_names, maps.classes, pre, path)


def stratified_sample(indices: np.ndarray, labels: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """At most ``limit`` of ``indices`` with the class mix kept (every class represented); all when None."""
    if limit is None or len(indices) <= limit:
        return np.sort(indices)
    rng = np.random.default_rng(seed)
    y = labels[indices]
    keep = []
    for c in np.unique(y):
        members = indices[y == c]
        k = max(1, int(round(limit * len(members) / len(indices))))
        keep.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(keep))


def wafer_profile(data: WaferArrays, labeled: np.ndarray) -> DataProfile:
    """What ``profile_manifest`` records for the unlabeled pool (the train and val maps), with the
    label statistics of ``labeled``."""
    maps = load_wm811k(data.source)
    pool = data.indices(*[s for s in POOL_SPLITS if s in data.split_names])
    h, w = maps.heights[pool], maps.widths[pool]
    aspect = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1)
    sample = pool[np.linspace(0, len(pool) - 1, 16).astype(int)]
    categorical = all(len(np.unique(maps.map(int(i)))) <= CATEGORICAL_LEVELS for i in sample)
    profile = DataProfile(n_images=len(pool), median_width=int(np.median(w)), median_height=int(np.median(h)),
                          median_aspect=round(float(np.median(aspect)), 3), categorical=categorical)
    return with_labels(profile, data.labels[labeled])


__all__ = ["LABEL_SETS", "TEST_SPLIT", "TRAIN_SPLITS", "WaferArrays", "load_wafer_arrays", "stratified_sample",
           "wafer_profile"]
