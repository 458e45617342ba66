"""A small DeepPCB subset as a raw folder: the first images (by name) of the data shelf's
boxes.csv, copied, with their box rows in the file's order (the `deeppcb` fixture finds it)."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path


def copy_first_images(deeppcb: Path, dest: Path, n: int) -> tuple[list[str], list[dict]]:
    """Copy the first ``n`` image names of DeepPCB's boxes.csv into ``dest`` (created); return
    the names and the CSV rows of those images."""
    dest.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(open(deeppcb / "boxes.csv")))
    names = sorted({Path(r["image"]).name for r in rows})[:n]
    for name in names:
        shutil.copyfile(deeppcb / "images" / name, dest / name)
    kept = set(names)
    return names, [r for r in rows if Path(r["image"]).name in kept]
