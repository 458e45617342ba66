"""WM-811K semiconductor wafer maps (the labeled part, 62,248 maps) as dlvm input.

The data shelf holds one numpy file (``wm811k.npz``, no pickle; its SOURCE.md describes it):
every map's values packed one after the other, each map's shape and offset, a class index
and a split index per map. Values: 0 = no die, 128 = good die, 255 = failing die.

:func:`write_wm811k` turns it into what a user of dlvm starts from:

* ``pool/wmNNNNNN.png``: the unlabeled domain pool, every map of the ``train_*`` and
  ``val`` splits (49,798 maps), one 8-bit grayscale PNG each (lossless: the values are
  stored as they are, at the map's own size); ``NNNNNN`` is the map's index in the file;
* ``test/wmNNNNNN.png``: the published test split, kept apart so that nobody pretrains on it;
* ``labels/<split>.json``: one Label Studio JSON export per published split (``train_1``,
  ``train_10``, ``train_20``, ``train_29``, ``val``, ``test``), each task pointing at its
  PNG through Label Studio's local-files URL (``url_prefix`` + ``pool/...`` or ``test/...``);
* ``wm811k.json``: what was written (maps per split and class, exact duplicates).

Exact duplicates: 195 maps repeat another map value for value (157 groups across splits,
12 with disagreeing labels). dlvm's ingest keeps the first copy in path order and
quarantines the rest as duplicates, so a few labels of a split name an image the dataset
version does not hold; the label snapshot reports each as ``unknown_image``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from components.data.elpv import (
    LOCAL_FILES_PREFIX,
    stratified_subset,
    write_label_studio_export,
)
from components.data.files import write_atomically

POOL_SPLITS = ("train_1", "train_10", "train_20", "train_29", "val")
TEST_SPLIT = "test"
DEFAULT_URL_PREFIX = LOCAL_FILES_PREFIX + "wm811k/"
SUMMARY_NAME = "wm811k.json"
NPZ_ENV = "DLVM_WM811K_NPZ"
_ARRAYS = ("pixels", "offsets", "heights", "widths", "label", "classes", "split", "split_names")


@dataclass(frozen=True)
class WaferMaps:
    """The maps of a ``wm811k.npz``, read without copying the pixel array per map."""

    pixels: np.ndarray       # uint8, all maps row-major one after the other
    offsets: np.ndarray      # int64 [n + 1]
    heights: np.ndarray      # [n]
    widths: np.ndarray       # [n]
    label: np.ndarray        # [n] index into classes
    classes: list[str]
    split: np.ndarray        # [n] index into split_names
    split_names: list[str]

    def __len__(self) -> int:
        return len(self.heights)

    def map(self, i: int) -> np.ndarray:
        """Map ``i`` as a uint8 array of shape (height, width)."""
        return self.pixels[self.offsets[i]:self.offsets[i + 1]].reshape(int(self.heights[i]), int(self.widths[i]))

    def split_of(self, i: int) -> str:
        return self.split_names[int(self.split[i])]

    def class_of(self, i: int) -> str:
        return self.classes[int(self.label[i])]

    def indices(self, split: str) -> np.ndarray:
        """Indices of the maps of one published split, ascending."""
        if split not in self.split_names:
            raise ValueError(f"unknown split {split!r}; this file has {', '.join(self.split_names)}")
        return np.flatnonzero(self.split == self.split_names.index(split))


def load_wm811k(path: Path | str) -> WaferMaps:
    """Read and check a ``wm811k.npz``; a clear error names what does not fit the format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"WM-811K file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            arrays = {k: npz[k] for k in _ARRAYS if k in names}
    except (OSError, EOFError, ValueError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        # A single .npy has no .files; a pickle or any other file fails to load at all.
        raise ValueError(f"{path} is not a numpy .npz file without pickles: {exc}") from None
    missing = [k for k in _ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"{path} is not a WM-811K file: arrays {missing} are missing")
    n = len(arrays["heights"])
    offsets = arrays["offsets"].astype(np.int64)
    heights, widths = arrays["heights"].astype(np.int64), arrays["widths"].astype(np.int64)
    problems = []
    if arrays["pixels"].dtype != np.uint8:
        problems.append(f"pixels are {arrays['pixels'].dtype}, not uint8")
    if not (len(widths) == len(arrays["label"]) == len(arrays["split"]) == n and len(offsets) == n + 1):
        problems.append("per-map arrays have different lengths")
    elif offsets[0] != 0 or offsets[-1] != len(arrays["pixels"]) or np.any(np.diff(offsets) != heights * widths):
        problems.append("offsets do not match the maps' shapes and the pixel array")
    if np.any(heights < 1) or np.any(widths < 1):
        problems.append("a map has an empty shape")
    classes, split_names = [str(c) for c in arrays["classes"]], [str(s) for s in arrays["split_names"]]
    if n and (arrays["label"].min() < 0 or arrays["label"].max() >= len(classes)):
        problems.append("a label is outside the class list")
    if n and (arrays["split"].min() < 0 or arrays["split"].max() >= len(split_names)):
        problems.append("a split index is outside the split names")
    if problems:
        raise ValueError(f"{path} is not a valid WM-811K file: {'; '.join(problems)}")
    return WaferMaps(pixels=arrays["pixels"], offsets=offsets, heights=heights, widths=widths,
                     label=arrays["label"].astype(np.int64), classes=classes,
                     split=arrays["split"].astype(np.int64), split_names=split_names)


def find_wm811k(explicit: Path | str | None = None) -> Path:
    """The ``wm811k.npz`` to read: ``explicit``, else $DLVM_WM811K_NPZ, else the project's data
    shelf (``shared/data/wafer-wm811k/`` beside the working directory or the checkout)."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(NPZ_ENV):
        return Path(os.environ[NPZ_ENV])
    shelf = Path("shared/data/wafer-wm811k/wm811k.npz")
    for base in (Path.cwd(), Path.cwd().parent, Path(__file__).resolve().parents[3]):
        if (base / shelf).is_file():
            return base / shelf
    raise FileNotFoundError(f"no wm811k.npz found: pass its path (--npz) or set {NPZ_ENV}")


def map_file_name(i: int) -> str:
    return f"wm{i:06d}.png"


def map_rel_path(maps: WaferMaps, i: int) -> str:
    """Where map ``i`` is written, relative to the output folder."""
    folder = "test" if maps.split_of(i) == TEST_SPLIT else "pool"
    return f"{folder}/{map_file_name(i)}"


def png_bytes(values: np.ndarray) -> bytes:
    """A mode-L PNG holding ``values`` exactly (PNG is lossless; no scaling, no resizing)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def select_maps(maps: WaferMaps, limit_per_split: int | None = None, seed: int = 0) -> np.ndarray:
    """All map indices, or at most ``limit_per_split`` of each split with the class mix kept."""
    if limit_per_split is None:
        return np.arange(len(maps))
    if limit_per_split < 1:
        raise ValueError(f"limit per split must be >= 1, got {limit_per_split}")
    chosen = []
    for name in maps.split_names:
        idx = maps.indices(name)
        keep = stratified_subset([maps.class_of(i) for i in idx], limit_per_split, seed)
        chosen.extend(int(idx[k]) for k in keep)
    return np.array(sorted(chosen), dtype=np.int64)


def write_wm811k(maps: WaferMaps, out: Path | str, url_prefix: str = DEFAULT_URL_PREFIX,
                 limit_per_split: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Write the maps as PNGs, one Label Studio export per split and a summary (module docstring).

    ``out`` must be empty, missing, or an earlier output of this function: files whose
    bytes are already right are left alone, and map files that no longer belong are removed.
    Returns the summary (also written to ``out/wm811k.json``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SUMMARY_NAME).is_file():
        raise ValueError(f"{out} is not empty and holds no earlier {SUMMARY_NAME}: choose an empty folder")
    chosen = select_maps(maps, limit_per_split, seed)
    wanted = {map_rel_path(maps, int(i)): int(i) for i in chosen}
    for folder in ("pool", "test", "labels"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    written = kept = 0
    first_by_hash: dict[str, str] = {}
    duplicates: list[tuple[str, str]] = []  # (later copy, first copy) in path order, as ingest sees them
    for rel in tqdm(sorted(wanted), desc="writing wafer maps", unit="map", disable=not progress):
        data = png_bytes(maps.map(wanted[rel]))
        target = out / rel
        if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
            kept += 1
        else:
            write_atomically(target, data)
            written += 1
        digest = hashlib.sha256(data).hexdigest()
        first = first_by_hash.setdefault(digest, rel)
        if first != rel:
            duplicates.append((rel, first))
    removed = 0
    for folder in ("pool", "test"):
        for p in (out / folder).glob("wm*.png"):
            if f"{folder}/{p.name}" not in wanted:
                p.unlink()
                removed += 1

    splits = {}
    for name in maps.split_names:
        idx = [int(i) for i in chosen if maps.split_of(int(i)) == name]
        export = out / "labels" / f"{name}.json"
        write_label_studio_export(export, [url_prefix + map_rel_path(maps, i) for i in idx],
                                  [maps.class_of(i) for i in idx])
        splits[name] = {"maps": len(idx), "export": export.relative_to(out).as_posix(),
                        "classes": dict(sorted(Counter(maps.class_of(i) for i in idx).items()))}
    in_pool = [r for r in wanted if r.startswith("pool/")]
    pool_dups = [d for d in duplicates if d[0].startswith("pool/") and d[1].startswith("pool/")]
    test_copies_of_pool = [d for d in duplicates if d[0].startswith("test/") and d[1].startswith("pool/")]
    labels_of = defaultdict(set)
    for later, first in duplicates:
        labels_of[first].update({maps.class_of(wanted[first]), maps.class_of(wanted[later])})
    summary = {
        "format": "dlvm-wm811k/1",
        "source": "WM-811K (MIR lab, Wu et al., IEEE TSM 2015); splits of faris-k/self-supervised-wafermaps",
        "classes": list(maps.classes),
        "values": {"0": "no die", "128": "good die", "255": "failing die"},
        "maps": len(wanted), "pool": len(in_pool), "test": len(wanted) - len(in_pool),
        "pool_splits": [s for s in POOL_SPLITS if s in maps.split_names],
        "splits": splits,
        "url_prefix": url_prefix,
        "limit_per_split": limit_per_split,
        "exact_duplicates": {
            "total": len(duplicates),
            "within_pool": len(pool_dups),
            "test_maps_equal_to_a_pool_map": len(test_copies_of_pool),
            "groups_with_disagreeing_labels": sum(1 for labels in labels_of.values() if len(labels) > 1),
        },
        "files": {"written": written, "unchanged": kept, "removed": removed},
    }
    write_atomically(out / SUMMARY_NAME, (json.dumps(summary, indent=1) + "\n").encode())
    return summary

