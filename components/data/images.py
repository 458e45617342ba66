"""Decode images into fixed-size grayscale uint8 arrays, and cache a whole dataset version.

Conversion rules (the same for every image of a dataset, so models see one domain):

* 8-bit grayscale is used as is; bilevel ``1`` becomes 0/255;
* 16/32-bit integer grayscale is scaled to 8 bits by its own 1st..99th percentile
  (robust to hot pixels; a flat image falls back to min..max, then to all zeros);
* colour (RGB, RGBA, P, LA) becomes luminance (ITU-R 601-2, Pillow's ``convert('L')``),
  alpha is dropped;
* EXIF orientation is applied; the image is resized to ``size x size`` whole, as a
  :class:`Preprocess` says: ``aspect`` ``stretch`` (aspect not kept, nothing cropped away)
  or ``pad`` (long side to ``size``, the rest filled with black, aspect kept); ``resample``
  ``bicubic`` (Pillow's, which widens its support when shrinking and so averages like an
  area filter) or ``nearest`` (categorical pixels such as wafer maps: no new gray levels).
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from components.data.validate import COLOR_MODES, GRAYSCALE_MODES

_ORIENTATION = 0x0112  # EXIF tag


class ImageHashMismatch(RuntimeError):
    """A file's bytes differ from the sha256 the manifest records."""


def to_grayscale8(img: Image.Image) -> Image.Image:
    """An 8-bit ``L`` image from any supported mode (see module docstring)."""
    mode = img.mode
    if mode == "L":
        return img
    if mode in ("1", "RGB", "RGBA", "P", "LA"):
        return img.convert("L")
    if mode in GRAYSCALE_MODES:  # I;16*, I
        a = np.asarray(img).astype(np.float32)
        lo, hi = np.percentile(a, [1.0, 99.0])
        if hi <= lo:
            lo, hi = float(a.min()), float(a.max())
        if hi <= lo:
            return Image.fromarray(np.zeros(a.shape, np.uint8), "L")
        scaled = np.clip((a - lo) * (255.0 / (hi - lo)), 0, 255)
        return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")
    raise ValueError(f"unsupported image mode {mode!r} (accepted: {', '.join({**GRAYSCALE_MODES, **COLOR_MODES})})")


RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}
ASPECT = ("stretch", "pad")


@dataclass(frozen=True)
class Preprocess:
    """How a raw image becomes the model's ``size x size`` input; stored with every model
    so that prediction decodes new images exactly as training did."""

    size: int
    resample: str = "bicubic"  # bicubic | nearest
    aspect: str = "stretch"  # stretch | pad

    def __post_init__(self) -> None:
        if int(self.size) < 8:
            raise ValueError(f"input size must be >= 8 px, got {self.size}")
        object.__setattr__(self, "size", int(self.size))
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, got {self.resample!r}")
        if self.aspect not in ASPECT:
            raise ValueError(f"aspect must be one of {', '.join(ASPECT)}, got {self.aspect!r}")

    @property
    def is_default(self) -> bool:
        return (self.resample, self.aspect) == ("bicubic", "stretch")

    def describe(self) -> str:
        return f"{self.size}x{self.size} px, {self.resample} resampling, aspect {self.aspect}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["size"]), d.get("resample", "bicubic"), d.get("aspect", "stretch"))

    @classmethod
    def coerce(cls, value: "int | Preprocess | dict") -> "Preprocess":
        """A bare size means the historical default (bicubic, stretch)."""
        if isinstance(value, Preprocess):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        return cls(int(value))


def decode_array(img: Image.Image, size: "int | Preprocess") -> np.ndarray:
    pre = Preprocess.coerce(size)
    if img.getexif().get(_ORIENTATION, 1) != 1:  # most files have none; skip exif_transpose's copy
        img = ImageOps.exif_transpose(img)
    gray = to_grayscale8(img)
    n, w, h = pre.size, *gray.size
    if (w, h) == (n, n):
        return np.asarray(gray, dtype=np.uint8)
    if pre.aspect == "pad" and w != h:
        scale = n / max(w, h)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
        inner = gray.resize((tw, th), RESAMPLE[pre.resample], reducing_gap=3.0 if pre.resample == "bicubic" else None)
        canvas = Image.new("L", (n, n), 0)
        canvas.paste(inner, ((n - tw) // 2, (n - th) // 2))
        return np.asarray(canvas, dtype=np.uint8)
    gray = gray.resize((n, n), RESAMPLE[pre.resample], reducing_gap=3.0 if pre.resample == "bicubic" else None)
    return np.asarray(gray, dtype=np.uint8)


def load_image_array(path: Path | str | BinaryIO, size: "int | Preprocess") -> np.ndarray:
    """One image file (a path or an open binary file) as a ``uint8`` array of shape ``(size, size)``."""
    with Image.open(path) as img:
        img.load()
        return decode_array(img, size)


def _load_verified(data: bytes, where: str, size: "int | Preprocess", sha256: str) -> np.ndarray:
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ImageHashMismatch(f"{where}: sha256 {actual} differs from the manifest's {sha256}")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return decode_array(img, size)


class ImageCache:
    """Decoded dataset versions as ``.npy`` files keyed by manifest content hash + size."""

    def __init__(self, cache_dir: Path | str):
        self.cache_dir = Path(cache_dir)

    def path_for(self, manifest: dict, size: "int | Preprocess") -> Path:
        pre = Preprocess.coerce(size)
        # The default keeps the name entries had before preprocessing was configurable.
        suffix = "" if pre.is_default else f"-{pre.resample}-{pre.aspect}"
        return self.cache_dir / f"{manifest['content_hash'][:16]}-{pre.size}{suffix}.npy"

    def has(self, manifest: dict, size: "int | Preprocess") -> bool:
        """Whether this version is already decoded this way (no images needed)."""
        target = self.path_for(manifest, size)
        size = Preprocess.coerce(size).size
        if not target.is_file():
            return False
        try:
            arr = np.load(target, mmap_mode="r")
        except (OSError, ValueError):
            return False
        return arr.shape == (len(manifest["images"]), size, size) and arr.dtype == np.uint8

    def load(self, manifest: dict, images_root: Path | str, size: "int | Preprocess", progress: bool = True,
             read: Callable[[str], bytes] | None = None) -> np.ndarray:
        """``[N, size, size]`` uint8 in manifest order; decoded once, then read from disk.

        ``read(path)`` gives an image's bytes (default: the file ``images_root / path``; a
        sharded dataset version passes its shards' reader). Every image's sha256 is checked
        against the manifest while decoding, so a cache entry can only hold the images its
        key names.
        """
        images = manifest["images"]
        target = self.path_for(manifest, size)
        pre, size = Preprocess.coerce(size), Preprocess.coerce(size).size
        if target.is_file():
            arr = np.load(target)
            if arr.shape == (len(images), size, size) and arr.dtype == np.uint8:
                return arr
            # Wrong shape: a hash-prefix collision or a damaged file; rebuild it.
        root = Path(images_root)
        out = np.empty((len(images), size, size), dtype=np.uint8)
        for i, rec in enumerate(tqdm(images, desc=f"decoding {pre.describe()}", unit="img", disable=not progress)):
            data = read(rec["path"]) if read is not None else (root / rec["path"]).read_bytes()
            where = str(root / rec["path"]) if read is None else f"{rec['path']} (shards in {root})"
            out[i] = _load_verified(data, where, pre, rec["sha256"])
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, out)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out
