"""A raw-image folder with good images of several kinds and every kind of bad file, as a
user's camera share might hold them (ingest tests, CLI tests)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from components.data.elpv import elpv_root

ELPV = elpv_root() / "images"
GOOD = ["a/cell0001.png", "a/cell0002.png", "b/sub/cell0003.png", "b/cell0004.png", "cell0005.png"]
# path -> expected reason of every bad file the fixture creates
EXPECTED_BAD = {
    "bad/truncated.png": "truncated",
    "bad/empty.png": "empty_file",
    "bad/text.png": "not_an_image",
    "bad/bomb.png": "decompression_bomb",
    "bad/tiny.png": "too_small",
    "bad/cmyk.jpg": "unsupported_mode",
    "bad/notes.txt": "unsupported_extension",
    "z/copy_of_cell0001.png": "duplicate",
    "z/copy_of_rgb.jpg": "duplicate",
}


def _bomb_png(path: Path) -> None:
    # 20000x20000 bilevel: 400 M pixels declared, ~50 KB on disk, ~0.5 s to write.
    Image.new("1", (20000, 20000)).save(path)


def make_raw_folder(root: Path) -> Path:
    """A folder with good images of several kinds, every kind of bad file, and hidden files."""
    for rel in GOOD:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ELPV / Path(rel).name, root / rel)
    elpv6 = np.asarray(Image.open(ELPV / "cell0006.png"))
    (root / "deep").mkdir()
    Image.fromarray(elpv6.astype(np.uint16) * 257).save(root / "deep/sixteen.png")  # 16-bit grayscale
    rgb = np.stack([elpv6, elpv6[::-1], elpv6[:, ::-1]], axis=-1)
    Image.fromarray(rgb, "RGB").save(root / "deep/rgb.jpg", quality=90)

    bad = root / "bad"
    bad.mkdir()
    data = (ELPV / "cell0007.png").read_bytes()
    (bad / "truncated.png").write_bytes(data[: len(data) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("this is a text file, not a PNG\n")
    _bomb_png(bad / "bomb.png")
    Image.new("L", (8, 40)).save(bad / "tiny.png")
    Image.new("CMYK", (32, 32), (10, 20, 30, 40)).save(bad / "cmyk.jpg")
    (bad / "notes.txt").write_text("operator notes\n")

    (root / "z").mkdir()
    shutil.copyfile(root / "a/cell0001.png", root / "z/copy_of_cell0001.png")
    shutil.copyfile(root / "deep/rgb.jpg", root / "z/copy_of_rgb.jpg")

    # Hidden files and folders are not part of the dataset.
    (root / ".DS_Store").write_bytes(b"\0\1junk")
    (root / ".cache").mkdir()
    shutil.copyfile(ELPV / "cell0008.png", root / ".cache/cell0008.png")
    return root
