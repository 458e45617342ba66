"""Pack the benchmark data for a GPU machine that cannot reach ours: ELPV and the generic
corpus in one folder small enough to travel with the working tree (the device tool sends at
most 64 MiB, and the elpv-dataset package alone is 92 MB).

    .venv/bin/python -m benchmarks.device_bundle                  # .device/ at 128 px, ~60 MiB
    bash benchmarks/device_check.sh label-efficiency              # on the GPU machine, reads .device/

What goes in, and why it changes nothing the benchmark measures:

* ``elpv-<size>/``: every ELPV image already decoded and resized to ``size`` (exactly what
  ``load_image_array`` gives), stored as lossless PNG, plus ``labels.json`` with each image's
  defect probability, cell type and the sha256 of the **original** file, so the hash-assigned
  75/25 split is the same one the CPU runs use.
* ``generic/``: the first ``--generic-images`` training images of the generic corpus (the
  order ``label_efficiency.load_generic`` takes them in), byte for byte, with a ``labels.csv``
  in the corpus's own layout. The whole training split (9,469 images, 78 MB) does not fit
  beside ELPV; the benchmark pretrains on however many are there and says how many.
* ``BUNDLE.json``: what was packed, from where, and its size.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from components.data.elpv import elpv_labels, elpv_root
from components.data.images import load_image_array

ROOT = Path(__file__).resolve().parents[1]

GENERIC_CORPUS = ROOT.parent / "shared" / "data" / "generic-imagenette"
# DeepPCB on the data shelf next to the checkout (DLVM_DEEPPCB points elsewhere).
DEEPPCB = Path(os.environ.get("DLVM_DEEPPCB", ROOT.parent / "shared" / "data" / "pcb-deeppcb"))
DEVICE_TREE_LIMIT_MIB = 64  # what the device tool carries: working tree + carried paths
ELPV_LABELS = "labels.json"
DEFAULT_SIZE = 128  # label_efficiency's gpu recipe
DEFAULT_GENERIC_IMAGES = 5000  # 53 MiB with ELPV at 128 px: what fits beside the working tree


def deeppcb_root() -> Path:
    """DeepPCB's folder (images/, boxes.csv, splits.csv); one clear line when it is not there."""
    if not ((DEEPPCB / "boxes.csv").is_file() and (DEEPPCB / "splits.csv").is_file() and (DEEPPCB / "images").is_dir()):
        raise SystemExit(f"DeepPCB not found at {DEEPPCB} (needs images/, boxes.csv, splits.csv): put the data shelf "
                         "../shared next to the checkout or set DLVM_DEEPPCB")
    return DEEPPCB


def generic_train_paths(corpus: Path) -> list[Path]:
    """The corpus's training images in the order the benchmark takes them (sorted paths)."""
    if not (corpus / "labels.csv").is_file():
        raise FileNotFoundError(f"generic corpus not found at {corpus} (needs labels.csv); pass --generic-corpus")
    lines = (corpus / "labels.csv").read_text().splitlines()[1:]
    return sorted(corpus / line.split(",")[0] for line in lines if line.strip().endswith(",train"))


def pack_elpv(out: Path, size: int, limit: int | None = None) -> tuple[int, int]:
    """ELPV decoded at ``size`` as PNGs + labels.json (original sha256s); returns (images, bytes written)."""
    rows, root = elpv_labels(), elpv_root()
    rows = rows[:limit] if limit else rows
    out.mkdir(parents=True)
    entries, total = [], 0
    for i, row in enumerate(tqdm(rows, desc=f"ELPV at {size} px", leave=False)):
        original = (root / row.path).read_bytes()  # read once: decoded and hashed
        name = f"{i:04d}.png"
        buf = io.BytesIO()
        Image.fromarray(load_image_array(io.BytesIO(original), size)).save(buf, "PNG", optimize=True)
        (out / name).write_bytes(buf.getvalue())
        total += len(buf.getvalue())
        entries.append({"file": name, "source": row.path, "probability": row.probability, "cell_type": row.cell_type,
                        "sha256": hashlib.sha256(original).hexdigest()})
    (out / ELPV_LABELS).write_text(json.dumps({"size": size, "images": entries}) + "\n")
    return len(entries), total + (out / ELPV_LABELS).stat().st_size


def pack_generic(out: Path, corpus: Path, count: int) -> tuple[int, int]:
    """The first ``count`` training images of ``corpus``, byte for byte, in its layout;
    returns (images, bytes written)."""
    paths = generic_train_paths(corpus)[:count]
    out.mkdir(parents=True)
    lines, total = ["path,label,split"], 0
    for path in tqdm(paths, desc="generic images", leave=False):
        rel = path.relative_to(corpus)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / rel)
        total += path.stat().st_size
        lines.append(f"{rel.as_posix()},{rel.parent.name},train")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    return len(paths), total + (out / "labels.csv").stat().st_size


def load_elpv_bundle(folder: Path, size: int) -> tuple[np.ndarray, list[float], list[str]]:
    """(images uint8 [N, size, size], defect probabilities, original sha256s) from a bundle's
    ``elpv-<size>/`` folder, in labels.csv order; a clear error when it holds another size."""
    labels = folder / ELPV_LABELS
    if not labels.is_file():
        raise FileNotFoundError(f"{folder} is not an ELPV bundle folder (no {ELPV_LABELS}); "
                                "build one with benchmarks/device_bundle.py")
    meta = json.loads(labels.read_text())
    if meta["size"] != size:
        raise ValueError(f"{folder} holds ELPV at {meta['size']} px but the recipe needs {size} px; "
                         f"rebuild it with benchmarks/device_bundle.py --size {size}")
    images = np.stack([load_image_array(folder / e["file"], size) for e in meta["images"]])
    return images, [e["probability"] for e in meta["images"]], [e["sha256"] for e in meta["images"]]


def build_bundle(out: Path, size: int, generic_images: int, corpus: Path = GENERIC_CORPUS,
                 max_mib: float = DEVICE_TREE_LIMIT_MIB - 4, elpv_images: int | None = None) -> dict:
    """Write the bundle to ``out`` (replaced if it is a bundle already); refuse one over ``max_mib``."""
    if out.exists():
        if not (out / "BUNDLE.json").is_file():
            raise FileExistsError(f"{out} exists and is not a device bundle (no BUNDLE.json): refusing to replace it")
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    n_elpv, elpv_bytes = pack_elpv(tmp / f"elpv-{size}", size, elpv_images)
    n_generic, generic_bytes = pack_generic(tmp / "generic", corpus, generic_images)
    mib = (elpv_bytes + generic_bytes) / 2**20
    # device_check.sh finds elpv-<size>/ and generic/ from "size": no folder names to keep in step.
    manifest = {"size": size, "elpv_images": n_elpv, "generic_images": n_generic,
                "generic_corpus": str(corpus), "mib": round(mib, 1)}
    if mib > max_mib:
        shutil.rmtree(tmp)
        raise ValueError(f"the bundle would be {mib:.1f} MiB, over the {max_mib:g} MiB that can travel beside the "
                         f"working tree; lower --generic-images (now {generic_images}) or --size (now {size})")
    (tmp / "BUNDLE.json").write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.rename(out)
    return manifest


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".device")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"pixels; the recipe's (default {DEFAULT_SIZE}: gpu)")
    ap.add_argument("--generic-images", type=int, default=DEFAULT_GENERIC_IMAGES,
                    help=f"how many generic training images (default {DEFAULT_GENERIC_IMAGES:,})")
    ap.add_argument("--generic-corpus", type=Path, default=GENERIC_CORPUS)
    ap.add_argument("--max-mib", type=float, default=DEVICE_TREE_LIMIT_MIB - 4,
                    help="refuse a bundle larger than this (default 60: the device tool carries 64 MiB in all)")
    ap.add_argument("--elpv-images", type=int, default=None, help="only the first N ELPV images (tests)")
    args = ap.parse_args(argv)
    try:
        manifest = build_bundle(args.out, args.size, args.generic_images, args.generic_corpus, args.max_mib,
                                args.elpv_images)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"device_bundle: {exc}") from None
    print(f"wrote {args.out}: {manifest['elpv_images']} ELPV images at {args.size} px and "
          f"{manifest['generic_images']} generic images, {manifest['mib']} MiB")
    return manifest


if __name__ == "__main__":
    main()
