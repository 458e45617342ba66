"""Image decoding to fixed-size grayscale uint8, and the decoded-dataset cache."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from components.data.elpv import elpv_root
from components.data.images import (
    ImageCache,
    ImageHashMismatch,
    load_image_array,
    to_grayscale8,
)
from components.data.ingest import build_manifest, scan_folder

ELPV = elpv_root() / "images"


def test_8bit_grayscale_is_kept_and_resized():
    src = np.asarray(Image.open(ELPV / "cell0001.png"))
    full = load_image_array(ELPV / "cell0001.png", 300)
    assert full.dtype == np.uint8 and full.shape == (300, 300)
    assert np.array_equal(full, src)  # same size: untouched
    small = load_image_array(ELPV / "cell0001.png", 64)
    assert small.shape == (64, 64) and small.dtype == np.uint8
    # Shrinking averages: block means of the original stay close to the small image.
    ref = np.asarray(Image.fromarray(src).resize((64, 64), Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(small.astype(np.float32) - ref).mean() < 6


def test_16bit_is_scaled_by_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(1000, 3000, size=(100, 100)).astype(np.uint16)
    a[0, 0] = 65535  # a hot pixel must not crush the contrast
    a[0, 1] = 0
    Image.fromarray(a).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode == "I;16"
    out = load_image_array(tmp_path / "x.png", 100)
    assert out.dtype == np.uint8 and out.shape == (100, 100)
    lo, hi = np.percentile(a.astype(np.float32), [1, 99])
    expected = np.rint(np.clip((a.astype(np.float32) - lo) * 255 / (hi - lo), 0, 255))
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert out[0, 0] == 255 and out[0, 1] == 0
    assert out.std() > 60  # the useful range is spread over 8 bits
    # Order is preserved.
    flat_a, flat_o = a.ravel()[2:], out.ravel()[2:]
    i, j = np.argmin(flat_a), np.argmax(flat_a)
    assert flat_o[i] <= flat_o[j]


def test_flat_16bit_image_does_not_divide_by_zero(tmp_path):
    Image.fromarray(np.full((32, 32), 1234, np.uint16)).save(tmp_path / "flat.png")
    out = load_image_array(tmp_path / "flat.png", 16)
    assert out.shape == (16, 16) and not out.any()


def test_rgb_and_palette_become_luminance(tmp_path):
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    rgb[..., 2] = 50
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    out = load_image_array(tmp_path / "c.png", 40)
    expected = round(200 * 299 / 1000 + 100 * 587 / 1000 + 50 * 114 / 1000)
    assert np.all(np.abs(out.astype(int) - expected) <= 1)
    Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.all(np.abs(load_image_array(tmp_path / "p.png", 20).astype(int) - expected) <= 1)
    rgba = np.dstack([rgb, np.full((40, 40), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.all(np.abs(load_image_array(tmp_path / "a.png", 40).astype(int) - expected) <= 1)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((32, 64), np.uint8)
    a[:, :32] = 255  # left half white
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image_array(tmp_path / "o.jpg", 32)
    # After the rotation the white half is on top.
    assert out[:12].mean() > 200 and out[-12:].mean() < 50


def test_unsupported_mode_raises():
    with pytest.raises(ValueError, match="CMYK"):
        to_grayscale8(Image.new("CMYK", (8, 8)))


@pytest.fixture
def small_dataset(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    for i in (3, 1, 2, 10):
        shutil.copyfile(ELPV / f"cell{i:04d}.png", root / f"cell{i:04d}.png")
    a16 = np.asarray(Image.open(ELPV / "cell0005.png")).astype(np.uint16) * 200
    Image.fromarray(a16).save(root / "zz16.png")
    return root, build_manifest(scan_folder(root, progress=False), "small")


def test_cache_decodes_once_in_manifest_order(small_dataset, tmp_path):
    root, manifest = small_dataset
    cache = ImageCache(tmp_path / "cache")
    assert not cache.has(manifest, 32)
    arr = cache.load(manifest, root, 32, progress=False)
    assert cache.has(manifest, 32) and not cache.has(manifest, 16)
    assert arr.shape == (5, 32, 32) and arr.dtype == np.uint8
    for k, rec in enumerate(manifest["images"]):
        assert np.array_equal(arr[k], load_image_array(root / rec["path"], 32))
    path = cache.path_for(manifest, 32)
    assert path.name == f"{manifest['content_hash'][:16]}-32.npy" and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left

    # Second load comes from the cache: the images are no longer needed.
    moved = tmp_path / "moved"
    root.rename(moved)
    again = cache.load(manifest, root, 32, progress=False)
    assert np.array_equal(again, arr)
    # Another size is another entry (and needs the images again).
    assert cache.load(manifest, moved, 16, progress=False).shape == (5, 16, 16)
    assert cache.path_for(manifest, 16).is_file()


def test_cache_refuses_files_that_differ_from_the_manifest(small_dataset, tmp_path):
    root, manifest = small_dataset
    shutil.copyfile(ELPV / "cell0099.png", root / "cell0001.png")
    with pytest.raises(ImageHashMismatch, match="cell0001.png"):
        ImageCache(tmp_path / "cache").load(manifest, root, 32, progress=False)
    assert not ImageCache(tmp_path / "cache").path_for(manifest, 32).exists()
