"""What a model is asked to predict on: images from a folder, a registered dataset version
or an S3 prefix, decoded exactly as training decoded them, in bounded batches; and one
image sent as bytes (the prediction endpoint).

A file that cannot be used is reported with a reason code (the ingest's vocabulary:
``not_an_image``, ``truncated``, ``decompression_bomb``, ``unsupported_mode``, ...) and
never stops the others.
"""
from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from components.data.images import decode_array
from components.data.validate import ALLOWED_EXTENSIONS, SUPPORTED_MODES, ImageLimits, sha256_bytes
from components.settings import Settings

_DATASET_REF = re.compile(r"^dataset:(?P<name>[A-Za-z0-9][\w.\-]*)(?::(?P<version>\d+))?$")


class UnreadableImage(ValueError):
    """Bytes that are not an image this model can take; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def model_input_size(classifier) -> int:
    """The square side, in pixels, a classifier's images are decoded to (the one place that
    reads a classifier's input preprocessing, so predict, export and serving agree)."""
    return int(classifier.vit_cfg.img_size)


def decode_image_bytes(data: bytes, size: int, limits: ImageLimits | None = None) -> np.ndarray:
    """One encoded image -> uint8 ``[size, size]``, converted as the training images were
    (components/data/images.py); refused with :class:`UnreadableImage` before decoding
    when its header declares too many pixels."""
    return decode_image_bytes_sized(data, size, limits)[0]


_EXIF_ORIENTATION, _TURNED = 0x0112, (5, 6, 7, 8)  # EXIF orientations that swap width and height (decoding turns the image upright)


def decode_image_bytes_sized(data: bytes, size: int,
                             limits: ImageLimits | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`decode_image_bytes` and the upright image's (width, height) before it was scaled to
    ``size``: what maps a detector's boxes back onto the original image."""
    limits = limits or ImageLimits()
    if not data:
        raise UnreadableImage("empty_file", "no bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UnreadableImage("decompression_bomb", str(exc)) from None
        except UnidentifiedImageError:
            raise UnreadableImage("not_an_image", "content is not a recognised image format") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise UnreadableImage("corrupt", f"cannot read header: {exc}") from None
        with img:
            width, height = img.size
            if width * height > limits.max_pixels or max(width, height) > limits.max_side:
                raise UnreadableImage("decompression_bomb" if width * height > limits.max_pixels else "too_large",
                                      f"{width}x{height} is above the limits ({limits.max_side} px a side, "
                                      f"{limits.max_pixels:,} pixels)")
            if min(width, height) < limits.min_side:
                raise UnreadableImage("too_small", f"{width}x{height} has a side below {limits.min_side}")
            if img.mode not in SUPPORTED_MODES:
                raise UnreadableImage("unsupported_mode", f"mode {img.mode!r} is not supported")
            try:
                img.load()
                upright = (height, width) if img.getexif().get(_EXIF_ORIENTATION, 1) in _TURNED else (width, height)
                return decode_array(img, size), upright
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise UnreadableImage("decompression_bomb", str(exc)) from None
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise UnreadableImage("truncated" if "truncated" in str(exc).lower() else "corrupt",
                                      f"decoding failed: {exc}") from None


@dataclass
class InputItem:
    """One input: its name in the source, and how to get its bytes (None: already decoded)."""
    name: str
    read: Callable[[], bytes] | None = None
    sha256: str = ""
    pixels: np.ndarray | None = None
    size: tuple[int, int] | None = None  # (width, height) before decoding, when known


@dataclass
class InputSource:
    """A resolved source: its canonical description and its items, in a stable order."""
    description: str
    items: list[InputItem]
    ignored: list[str] = field(default_factory=list)  # files that are not images by extension


@dataclass
class Batch:
    names: list[str]
    sha256: list[str]
    images: np.ndarray  # uint8 [n, size, size]
    failures: list[dict]  # {"name", "reason", "detail"}
    sizes: list[tuple[int, int] | None] = field(default_factory=list)  # each image's (width, height) before decoding


def folder_source(folder: Path | str) -> InputSource:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    items, ignored = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden files and folders (.DS_Store, .dvc, ...)
        if path.suffix.lower() not in ALLOWED_EXTENSIONS:
            ignored.append(rel)
            continue
        items.append(InputItem(rel, read=path.read_bytes))
    return InputSource(str(root.resolve()), items, ignored)


def s3_source(settings: Settings, uri: str) -> InputSource:
    """Every image object under ``s3://bucket/prefix`` on the configured S3 endpoint."""
    from components.storage import S3ArtifactStore

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"S3 source {uri!r} has no bucket: use s3://BUCKET/PREFIX")
    if not settings.s3_endpoint:
        raise ValueError(f"reading {uri} needs DLVM_S3_ENDPOINT (and DLVM_S3_ACCESS_KEY / DLVM_S3_SECRET_KEY)")
    client = S3ArtifactStore(bucket, "", settings.s3_endpoint, settings.s3_access_key.get_secret_value(),
                             settings.s3_secret_key.get_secret_value(), settings.s3_region).client
    items, ignored = [], []
    for obj in sorted(client.list_objects(bucket, prefix=prefix, recursive=True), key=lambda o: o.object_name):
        key = obj.object_name
        if key.endswith("/"):
            continue
        if Path(key).suffix.lower() not in ALLOWED_EXTENSIONS:
            ignored.append(key)
            continue

        def read(key: str = key) -> bytes:
            from minio.error import MinioException
            try:
                response = client.get_object(bucket, key)
            except MinioException as exc:  # reported for this object; the others go on
                raise OSError(f"S3 refused {key}: {exc}") from None
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        items.append(InputItem(key, read=read))
    return InputSource(f"s3://{bucket}/{prefix}", items, ignored)


def dataset_source(settings: Settings, ref: str, size: int) -> InputSource:
    """``dataset:NAME`` (latest version) or ``dataset:NAME:V``: a registered version's images,
    from the decode cache (or DVC), with the manifest's paths and hashes."""
    from components.data.access import dataset_images
    from components.registry.db import read_session
    from components.registry.refs import resolve_dataset_version

    match = _DATASET_REF.match(ref)
    if not match:
        raise ValueError(f"bad dataset source {ref!r}: use dataset:NAME or dataset:NAME:VERSION")
    with read_session(settings) as session:
        version = resolve_dataset_version(session, match["name"],
                                          int(match["version"]) if match["version"] else None)
    manifest, images = dataset_images(settings, match["name"], version, size)
    items = [InputItem(rec["path"], sha256=rec["sha256"], pixels=images[i],
                       size=(int(rec["width"]), int(rec["height"])) if rec.get("width") and rec.get("height") else None)
             for i, rec in enumerate(manifest["images"])]
    return InputSource(f"dataset:{match['name']}:{version.version}", items)


def resolve_source(settings: Settings, source: str, size: int) -> InputSource:
    """A folder path, ``dataset:NAME[:V]`` or ``s3://bucket/prefix``."""
    if source.startswith("dataset:"):
        return dataset_source(settings, source, size)
    if source.startswith("s3://"):
        return s3_source(settings, source)
    return folder_source(source)


def iter_batches(items: list[InputItem], size: int, batch_size: int = 256,
                 progress: Callable[[int], None] | None = None) -> Iterator[Batch]:
    """Decoded batches of at most ``batch_size`` usable images; unusable ones are in ``failures``."""
    for start in range(0, len(items), batch_size):
        names, shas, arrays, failures, sizes = [], [], [], [], []
        for item in items[start:start + batch_size]:
            try:
                if item.pixels is not None:
                    pixels, sha, original = item.pixels, item.sha256, item.size
                else:
                    data = item.read()
                    sha = sha256_bytes(data)
                    pixels, original = decode_image_bytes_sized(data, size)
            except UnreadableImage as exc:
                failures.append({"name": item.name, "reason": exc.reason, "detail": exc.detail})
            except OSError as exc:  # a file that vanished or cannot be read
                failures.append({"name": item.name, "reason": "unreadable", "detail": str(exc)})
            else:
                names.append(item.name)
                shas.append(sha)
                arrays.append(pixels)
                sizes.append(original)
            if progress is not None:
                progress(1)
        images = np.stack(arrays) if arrays else np.zeros((0, size, size), np.uint8)
        yield Batch(names, shas, images, failures, sizes)
