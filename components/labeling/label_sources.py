"""Labels laid out the common ways, as Label Studio tasks, so they become the same validated
snapshot (components/labeling/snapshots.py) through the same checks as an export:

* class folders: ``DIR/<class>/.../image.png`` (one sub-folder per class, any depth below it;
  files directly in ``DIR`` carry no class and are not read);
* name prefixes: ``DIR/.../<class><sep><rest>.png`` (the class is the file name up to the
  first ``sep``; with a list of known classes, the longest one the name starts with, then ``sep``);
* a CSV file of ``path,label`` rows (an optional header row ``path,label``).

Each file (or row) becomes one task whose image reference is its path relative to ``DIR``
(or as written in the CSV) with one annotation choosing its class. Snapshots match a
reference to the dataset version's manifest by path suffix, so a tree labels the version
made by ingesting that tree or a folder above it. Hidden files and folders are skipped,
as ingest skips them.

For folders and prefixes the files are at hand, so :func:`drop_changed_files` also checks
that each labeled file has the content of the manifest image it matched; a file that
differs is an ``unknown_image`` (the labels would otherwise go to other pixels).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath
from typing import Sequence

from components.data.ingest import iter_files
from components.data.validate import sha256_file
from components.labeling.snapshots import LabelExportError, LabelSnapshotData, snapshot_hash

SOURCE_KINDS = ("label-studio", "folders", "prefix", "csv")


def label_task(task_id: int, ref: str, label: str) -> dict:
    """One Label Studio task with a single manual choice, as the JSON export writes it."""
    return {"id": task_id, "data": {"image": ref}, "predictions": [],
            "annotations": [{"id": task_id, "completed_by": None, "was_cancelled": False, "created_at": "",
                             "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                                         "origin": "manual", "value": {"choices": [label] if label else []}}]}]}


def _folder(root: Path | str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"label folder {root} is not a directory")
    return root


def tasks_from_class_folders(root: Path | str) -> list[dict]:
    """A task per file under a class sub-folder of ``root`` (class = the sub-folder's name)."""
    root = _folder(root)
    files = [rel for rel in iter_files(root) if "/" in rel]
    if not files:
        raise LabelExportError(f"{root} has no class sub-folders with files in them "
                               "(expected DIR/<class>/<image>; for class-prefixed names use --from-prefix)")
    return [label_task(i, rel, rel.split("/", 1)[0]) for i, rel in enumerate(files, start=1)]


def class_from_name(name: str, separator: str = "_", classes: Sequence[str] | None = None) -> str:
    """The class a file name starts with ('' when it has none): the part before the first
    ``separator``, or with ``classes`` the longest of them followed by ``separator``."""
    if classes:
        fitting = [c for c in classes if name.startswith(c + separator)]
        return max(fitting, key=len) if fitting else ""
    head, sep, _ = name.partition(separator)
    return head if sep else ""


def tasks_from_name_prefixes(root: Path | str, separator: str = "_",
                             classes: Sequence[str] | None = None) -> list[dict]:
    """A task per file under ``root`` (any depth), its class the prefix of its file name. A
    name without a class prefix becomes an annotation with no choice (``empty_annotation``)."""
    if not separator:
        raise ValueError("the class-prefix separator must not be empty")
    root = _folder(root)
    files = iter_files(root)
    if not files:
        raise LabelExportError(f"{root} holds no files")
    return [label_task(i, rel, class_from_name(PurePosixPath(rel).name, separator, classes))
            for i, rel in enumerate(files, start=1)]


def tasks_from_csv(path: Path | str) -> list[dict]:
    """A task per ``path,label`` row of a CSV file (comma-separated, UTF-8, optional header)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise LabelExportError(f"cannot read label CSV {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise LabelExportError(f"label CSV {path} is not UTF-8 text: {exc}") from None
    tasks = []
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise LabelExportError(f"{path} line {line_no}: expected 2 columns (path,label), got {len(row)}: {row!r}")
        ref, label = row[0].strip(), row[1].strip()
        if line_no == 1 and (ref.lower(), label.lower()) == ("path", "label"):
            continue  # header
        if not ref:
            raise LabelExportError(f"{path} line {line_no}: empty path")
        tasks.append(label_task(len(tasks) + 1, ref, label))
    if not tasks:
        raise LabelExportError(f"{path} holds no path,label rows")
    return tasks


def drop_changed_files(snapshot: LabelSnapshotData, tasks: list[dict], root: Path | str,
                       allowed_classes: Sequence[str] | None = None) -> LabelSnapshotData:
    """Keep only the items whose file under ``root`` has the manifest image's sha256; the
    others become ``unknown_image`` issues. Classes (when not given) and the content hash are
    derived again from what is kept, as for an export without those items."""
    root = Path(root)
    refs = {t["id"]: t["data"]["image"] for t in tasks}
    kept, issues = [], list(snapshot.issues)
    for item in snapshot.items:
        ref = refs[item["task"]]
        actual = sha256_file(root / ref)
        if actual == item["sha256"]:
            kept.append(item)
        else:
            issues.append({"image": ref, "kind": "unknown_image",
                           "detail": f"{ref} differs from the dataset version's {item['path']} "
                                     f"(sha256 {actual[:12]}, version has {item['sha256'][:12]})"})
    if len(kept) == len(snapshot.items):
        return snapshot
    issues.sort(key=lambda i: (i["image"], i["kind"], i["detail"]))
    classes = snapshot.classes if allowed_classes is not None else sorted({it["label"] for it in kept})
    return LabelSnapshotData(classes=classes, items=kept, issues=issues,
                             content_hash=snapshot_hash(classes, kept),
                             manifest_hash=snapshot.manifest_hash, n_tasks=snapshot.n_tasks, source=snapshot.source)
