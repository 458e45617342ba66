"""Small synthetic image sets for tests that need a learnable task in seconds."""
from __future__ import annotations

import hashlib

import numpy as np


def banded_images(n: int, num_classes: int = 3, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy uint8 images whose class is a bright horizontal band at a class-specific height."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    images = rng.integers(0, 90, size=(n, size, size)).astype(np.uint8)
    band = size // num_classes
    for i, c in enumerate(labels):
        images[i, c * band:(c + 1) * band] += 120
    return images, labels


def fake_shas(n: int, tag: str = "img") -> list[str]:
    """``n`` distinct sha256 hex strings, as image hashes for split tests."""
    return [hashlib.sha256(f"{tag}{i}".encode()).hexdigest() for i in range(n)]


WAFER_CLASSES = ("Center", "Edge-Ring", "Scratch", "None")
WAFER_SPLITS = ("train_1", "train_10", "train_20", "train_29", "val", "test")


def wafer_map(cls: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A wafer-like map: 0 outside the disc, 128 good dies, 255 failing dies in a pattern of the class."""
    yy, xx = np.mgrid[:height, :width]
    r = np.hypot((yy - (height - 1) / 2) / (height / 2), (xx - (width - 1) / 2) / (width / 2))
    out = np.where(r <= 1.0, 128, 0).astype(np.uint8)
    fail = rng.random((height, width)) < 0.03
    if cls == "Center":
        fail |= r < 0.35
    elif cls == "Edge-Ring":
        fail |= (r > 0.8) & (r <= 1.0)
    elif cls == "Scratch":
        fail |= np.abs(yy - xx * height / width) < 0.8
    out[fail & (r <= 1.0)] = 255
    return out


def write_wafer_npz(path, per_split: dict[str, int] | None = None, seed: int = 0, duplicate: bool = True) -> dict:
    """A tiny file in the wm811k.npz format (SOURCE.md of the data shelf): ``per_split`` maps per
    split, classes cycling, shapes 16..22 x 16..22 (ingest refuses sides below 16); with
    ``duplicate`` the last test map repeats map 0 value for value (WM-811K has such exact
    repeats). Returns the arrays written and the maps."""
    per_split = per_split or {"train_1": 4, "train_10": 8, "train_20": 4, "train_29": 4, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    maps, labels, splits = [], [], []
    for s, name in enumerate(WAFER_SPLITS):
        for k in range(per_split.get(name, 0)):
            c = (k + s) % len(WAFER_CLASSES)
            maps.append(wafer_map(WAFER_CLASSES[c], int(rng.integers(16, 23)), int(rng.integers(16, 23)), rng))
            labels.append(c)
            splits.append(s)
    if duplicate and per_split.get("test"):
        maps[-1], labels[-1] = maps[0].copy(), labels[0]
    arrays = {
        "pixels": np.concatenate([m.ravel() for m in maps]).astype(np.uint8),
        "offsets": np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64),
        "heights": np.array([m.shape[0] for m in maps], np.int16),
        "widths": np.array([m.shape[1] for m in maps], np.int16),
        "label": np.array(labels, np.int8), "classes": np.array(WAFER_CLASSES),
        "split": np.array(splits, np.int8), "split_names": np.array(WAFER_SPLITS),
    }
    np.savez(path, **arrays)
    return {**arrays, "maps": maps}
