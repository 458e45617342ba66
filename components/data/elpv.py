"""The ELPV solar-cell dataset (PyPI ``elpv-dataset``) as dlvm input.

2,624 electroluminescence images of solar cells, 300x300 8-bit grayscale, each with a
*defect probability* of 0, 1/3, 2/3 or 1 and a cell type (mono/poly). Deitsch et al.
(Solar Energy 2019) assign the probability from expert judgement: it says how sure the
experts are that the cell is defective, not how severe the defect is. The class names
therefore name that certainty:

    probability   4-class name          binary name
    0             functional            functional
    1/3           possibly_defective    functional
    2/3           likely_defective      defective
    1             defective             defective

In the binary scheme p >= 0.5 counts as defective. Licence: CC BY-NC-SA 4.0 (the data), Apache-2.0 (the package).
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

CLASS_NAMES_4: list[str] = ["functional", "possibly_defective", "likely_defective", "defective"]
CLASS_NAMES_2: list[str] = ["functional", "defective"]
LOCAL_FILES_PREFIX = "/data/local-files/?d="
DEFAULT_URL_PREFIX = LOCAL_FILES_PREFIX + "elpv/"
EXPORT_NAME = "label-studio-export.json"


class ElpvLabel(NamedTuple):
    path: str  # 'images/cell0001.png', relative to elpv_root()
    probability: float
    cell_type: str  # 'mono' or 'poly'


def elpv_root() -> Path:
    """Directory of the installed package's data (holds labels.csv and images/)."""
    import elpv_dataset

    root = Path(elpv_dataset.__file__).parent / "data"
    if not (root / "labels.csv").is_file():
        raise FileNotFoundError(f"ELPV data not found under {root}; is elpv-dataset installed?")
    return root


@lru_cache(maxsize=1)
def _labels_cached() -> tuple[ElpvLabel, ...]:
    rows = []
    for line in (elpv_root() / "labels.csv").read_text().splitlines():
        if not line.strip():
            continue
        path, prob, cell_type = line.split()
        rows.append(ElpvLabel(path, float(prob), cell_type))
    return tuple(rows)


def elpv_labels() -> list[ElpvLabel]:
    """All 2,624 (path, probability, cell_type) rows of labels.csv, in file order."""
    return list(_labels_cached())


def class_name(probability: float, binary: bool = False) -> str:
    """Class name for a defect probability (see the module docstring)."""
    if binary:
        return CLASS_NAMES_2[int(probability >= 0.5)]
    idx = int(round(probability * 3))
    if not 0 <= idx <= 3 or abs(probability * 3 - idx) > 1e-6:
        raise ValueError(f"ELPV probability must be 0, 1/3, 2/3 or 1, got {probability}")
    return CLASS_NAMES_4[idx]


def stratified_subset(labels: Sequence[str], limit: int, seed: int = 0) -> list[int]:
    """Indices of ``limit`` items with class proportions kept (largest remainder), at least
    one per class when ``limit`` allows; deterministic for a seed; returned sorted."""
    n = len(labels)
    if limit >= n:
        return list(range(n))
    if limit <= 0:
        return []
    classes = sorted(set(labels))
    by_class = {c: [i for i, y in enumerate(labels) if y == c] for c in classes}
    exact = {c: limit * len(by_class[c]) / n for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: (-(exact[c] - quota[c]), c))[: limit - sum(quota.values())]:
        quota[c] += 1
    # Give empty classes one item, taken from the largest quota.
    for c in classes:
        if quota[c] == 0 and limit >= len(classes):
            donor = max(classes, key=lambda k: (quota[k], k))
            quota[donor] -= 1
            quota[c] = 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in classes:
        chosen.extend(int(i) for i in rng.choice(by_class[c], size=quota[c], replace=False))
    return sorted(chosen)


def write_label_studio_export(dest_json: Path | str, image_refs: Sequence[str], labels: Sequence[str | None],
                              from_name: str = "choice", to_name: str = "image", annotator_id: int = 1,
                              project_id: int = 1, start: datetime | None = None) -> Path:
    """Write tasks + annotations in the shape of Label Studio's JSON export API.

    ``labels[i]`` is the class of ``image_refs[i]``; ``None`` writes an unlabeled task.
    Timestamps are deterministic (``start`` + i seconds) so the file is reproducible.
    """
    if len(image_refs) != len(labels):
        raise ValueError(f"{len(image_refs)} image refs but {len(labels)} labels")
    start = start or datetime(2024, 1, 1, tzinfo=timezone.utc)
    tasks = []
    ann_id = 0
    for i, (ref, label) in enumerate(zip(image_refs, labels), start=1):
        ts = (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        annotations = []
        if label is not None:
            ann_id += 1
            annotations.append({
                "id": ann_id,
                "completed_by": annotator_id,
                "result": [{
                    "id": f"r{ann_id}",
                    "from_name": from_name,
                    "to_name": to_name,
                    "type": "choices",
                    "origin": "manual",
                    "value": {"choices": [label]},
                }],
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": ts,
                "updated_at": ts,
                "lead_time": 1.0,
                "prediction": {},
                "result_count": 0,
                "unique_id": f"elpv-{ann_id}",
                "import_id": None,
                "last_action": None,
                "task": i,
                "project": project_id,
                "updated_by": annotator_id,
                "parent_prediction": None,
                "parent_annotation": None,
                "last_created_by": None,
            })
        tasks.append({
            "id": i,
            "annotations": annotations,
            "file_upload": None,
            "drafts": [],
            "predictions": [],
            "data": {to_name: ref},
            "meta": {},
            "created_at": ts,
            "updated_at": ts,
            "inner_id": i,
            "total_annotations": len(annotations),
            "cancelled_annotations": 0,
            "total_predictions": 0,
            "comment_count": 0,
            "unresolved_comment_count": 0,
            "last_comment_updated_at": None,
            "project": project_id,
            "updated_by": annotator_id if annotations else None,
            "comment_authors": [],
        })
    dest_json = Path(dest_json)
    dest_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest_json.with_name(f".{dest_json.name}.tmp")
    tmp.write_text(json.dumps(tasks, indent=1) + "\n")
    os.replace(tmp, dest_json)
    return dest_json


def export_elpv(dest_dir: Path | str, limit: int | None = None, seed: int = 0, binary: bool = False,
                url_prefix: str = DEFAULT_URL_PREFIX) -> tuple[Path, Path]:
    """Copy ELPV images to ``dest_dir/images`` and write ``dest_dir/label-studio-export.json``.

    ``limit`` takes a stratified, seed-deterministic subset (for tests). Image references
    are ``url_prefix + 'images/cellNNNN.png'`` — by default Label Studio local-files URLs
    for a document root whose ``elpv/`` folder is ``dest_dir``. Returns
    ``(images_dir, export_json_path)``.
    """
    dest_dir = Path(dest_dir)
    rows = elpv_labels()
    names = [class_name(r.probability, binary) for r in rows]
    idx = stratified_subset(names, limit, seed) if limit is not None else list(range(len(rows)))
    images_dir = dest_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    root = elpv_root()
    selected = {rows[i].path for i in idx}
    # A re-export with another subset must not leave the previous subset's images behind.
    for old in images_dir.glob("cell*.png"):
        if f"images/{old.name}" not in selected:
            old.unlink()
    for i in idx:
        shutil.copyfile(root / rows[i].path, dest_dir / rows[i].path)
    export = write_label_studio_export(dest_dir / EXPORT_NAME, [url_prefix + rows[i].path for i in idx],
                                       [names[i] for i in idx])
    return images_dir, export
