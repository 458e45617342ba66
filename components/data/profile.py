"""A profile of a dataset: what the ``auto`` training recipe is chosen from.

Sizes, shapes and count come from the manifest (recorded at ingest); whether pixels are
categorical (a few gray levels, like wafer maps: 0 = no die, 1 = good, 2 = failing) from a
small sample of the files; class count and imbalance from the labels. Plain data, so a
recipe resolved from it can be printed and recorded with the run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CATEGORICAL_LEVELS = 8  # at most this many distinct gray levels in every sampled image: categorical maps


@dataclass(frozen=True)
class DataProfile:
    n_images: int
    median_width: int
    median_height: int
    median_aspect: float  # long side / short side, median over images
    categorical: bool = False
    n_labels: int | None = None
    n_classes: int | None = None
    imbalance: float | None = None  # commonest / rarest class count

    @property
    def median_short_side(self) -> int:
        return min(self.median_width, self.median_height)

    def describe(self) -> str:
        text = (f"{self.n_images} images, median {self.median_width}x{self.median_height} px"
                f"{', categorical pixels' if self.categorical else ''}")
        if self.n_labels is not None:
            text += f"; {self.n_labels} labels"
        if self.n_classes is not None and self.imbalance is not None:
            text += f", {self.n_classes} classes, imbalance {self.imbalance:.1f}:1"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def with_labels(profile: DataProfile, labels) -> DataProfile:
    """The profile with the label statistics of ``labels`` (class indices)."""
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y) if len(y) else np.zeros(0, np.int64)
    present = counts[counts > 0]
    imbalance = float(present.max() / present.min()) if len(present) else None
    return DataProfile(**{**asdict(profile), "n_labels": int(len(y)), "n_classes": int(len(present)),
                          "imbalance": imbalance})


def gray_levels(path: Path) -> int:
    from PIL import Image

    from components.data.images import to_grayscale8

    with Image.open(path) as img:
        img.load()
        return int(len(np.unique(np.asarray(to_grayscale8(img)))))


def profile_manifest(manifest: dict, images_root: Path | str | None = None, sample: int = 16) -> DataProfile:
    """The profile of a dataset version's manifest; with ``images_root`` (where its files are),
    up to ``sample`` evenly spaced files are read to tell categorical maps from images."""
    records = manifest["images"]
    if not records:
        raise ValueError("cannot profile an empty dataset")
    w = np.array([int(r.get("width", 0)) for r in records])
    h = np.array([int(r.get("height", 0)) for r in records])
    aspect = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1)
    categorical = False
    if images_root is not None:
        root = Path(images_root)
        picks = np.unique(np.linspace(0, len(records) - 1, min(sample, len(records))).astype(int))
        files = [root / records[i]["path"] for i in picks if (root / records[i]["path"]).is_file()]
        categorical = bool(files) and all(gray_levels(f) <= CATEGORICAL_LEVELS for f in files)
    return DataProfile(n_images=len(records), median_width=int(np.median(w)), median_height=int(np.median(h)),
                       median_aspect=round(float(np.median(aspect)), 3), categorical=categorical)
