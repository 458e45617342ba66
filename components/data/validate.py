"""Validate one image file: is it a complete, decodable image we can train on?

A file passes when it has an allowed extension, is not empty, its header declares a size
within :class:`ImageLimits` (checked *before* decoding, so a decompression bomb never
allocates its pixels), it decodes completely (``img.load()``), and its mode is one we
can turn into a grayscale array:

* grayscale 8-bit ``L``, 16-bit ``I;16``/``I;16B``/``I;16L``/``I;16N``, 32-bit int ``I``,
  and bilevel ``1`` — used as they are;
* colour ``RGB``, ``RGBA``, ``P`` (palette) and ``LA`` — accepted, converted to
  grayscale (luminance, alpha dropped) when loaded (see ``components.data.images``);
* everything else (``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, float ``F``, ...) is rejected
  with ``unsupported_mode``.

A failing check carries a short machine code in ``reason`` and a human sentence in
``detail``. Codes: ``unsupported_extension``, ``empty_file``, ``unreadable``,
``not_an_image``, ``truncated``, ``corrupt``, ``decompression_bomb``, ``too_small``,
``too_large``, ``unsupported_mode``, ``name_too_long`` (``duplicate`` is assigned by the
folder scan, which sees all files).
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

ALLOWED_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})

# mode -> bits per sample of the stored image
GRAYSCALE_MODES: dict[str, int] = {
    "1": 1,
    "L": 8,
    "I;16": 16,
    "I;16B": 16,
    "I;16L": 16,
    "I;16N": 16,
    "I": 32,
}
# Accepted, converted to grayscale on load.
COLOR_MODES: dict[str, int] = {"RGB": 8, "RGBA": 8, "P": 8, "LA": 8}
SUPPORTED_MODES: dict[str, int] = {**GRAYSCALE_MODES, **COLOR_MODES}

REASONS: tuple[str, ...] = (
    "unsupported_extension",
    "empty_file",
    "unreadable",
    "not_an_image",
    "truncated",
    "corrupt",
    "decompression_bomb",
    "too_small",
    "too_large",
    "unsupported_mode",
    "duplicate",
    "name_too_long",
    "link_outside",
)

# File names longer than this (in UTF-8 bytes) are quarantined: most file systems stop at
# 255 bytes, and the tools a version passes through (staging, DVC's checkout, an editor's
# backup) add temporary prefixes and suffixes to a name, which must still fit.
MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class ImageLimits:
    """What an acceptable image looks like."""

    min_side: int = 16
    max_side: int = 16384
    # Declared width*height above this is refused before decoding (decompression bomb).
    max_pixels: int = 64_000_000
    extensions: frozenset[str] = field(default=ALLOWED_EXTENSIONS)

    def allows_extension(self, path: Path) -> bool:
        return path.suffix.lower() in self.extensions


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of :func:`validate_image`. ``reason`` is empty when ``ok``."""

    path: str
    ok: bool
    reason: str = ""
    detail: str = ""
    sha256: str = ""
    size: int = 0  # file size in bytes
    width: int = 0
    height: int = 0
    mode: str = ""
    bit_depth: int = 0
    format: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def validate_image(path: Path | str, limits: ImageLimits | None = None) -> ImageCheck:
    """Check one file completely (reads and decodes it) and hash its bytes."""
    limits = limits or ImageLimits()
    path = Path(path)
    name = str(path)

    def bad(reason: str, detail: str, **kw) -> ImageCheck:
        return ImageCheck(path=name, ok=False, reason=reason, detail=detail, **kw)

    if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
        return bad("name_too_long", f"file name is {len(os.fsencode(path.name))} bytes long, "
                   f"more than {MAX_NAME_BYTES}: rename it")
    if not limits.allows_extension(path):
        return bad("unsupported_extension", f"extension {path.suffix or '(none)'!r} is not one of "
                   f"{', '.join(sorted(limits.extensions))}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return bad("unreadable", f"cannot read file: {exc}")
    meta = {"sha256": sha256_bytes(data), "size": len(data)}
    if not data:
        return bad("empty_file", "file is 0 bytes", **meta)

    with warnings.catch_warnings():
        # Pillow's own bomb guard only warns below 2x its global limit; make it an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return bad("decompression_bomb", f"refused before decoding: {exc}", **meta)
        except UnidentifiedImageError:
            return bad("not_an_image", "content is not a recognised image format", **meta)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # The header itself is broken (e.g. a PNG cut inside its first chunk).
            return bad("truncated" if _looks_truncated(exc) else "corrupt", f"cannot read header: {exc}", **meta)

        with img:
            width, height = img.size
            meta.update(width=width, height=height, mode=img.mode, format=img.format or "")
            if width * height > limits.max_pixels:
                return bad("decompression_bomb", f"header declares {width}x{height} = {width * height:,} pixels, "
                           f"limit {limits.max_pixels:,}; refused before decoding", **meta)
            if max(width, height) > limits.max_side:
                return bad("too_large", f"{width}x{height} has a side above {limits.max_side}", **meta)
            if min(width, height) < limits.min_side:
                return bad("too_small", f"{width}x{height} has a side below {limits.min_side}", **meta)
            if img.mode not in SUPPORTED_MODES:
                return bad("unsupported_mode", f"mode {img.mode!r} is not supported (accepted: "
                           f"{', '.join(SUPPORTED_MODES)})", **meta)
            try:
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                return bad("decompression_bomb", str(exc), **meta)
            except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
                reason = "truncated" if _looks_truncated(exc) else "corrupt"
                return bad(reason, f"decoding failed: {exc}", **meta)

    return ImageCheck(path=name, ok=True, bit_depth=SUPPORTED_MODES[meta["mode"]], **meta)


def _looks_truncated(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return any(s in msg for s in ("truncated", "premature end", "unexpected end", "not enough data",
                                  "buffer is not large enough", "end of file")) or isinstance(exc, EOFError)
