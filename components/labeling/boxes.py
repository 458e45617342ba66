"""Box label snapshots: Label Studio ``RectangleLabels`` exports, or a CSV
``image,x1,y1,x2,y2,label``, validated against a dataset manifest into a versioned snapshot.

The same rules as classification snapshots (components/labeling/snapshots.py) for finding
images (reference normalisation, path-suffix matching, unknown / ambiguous images), for
cancelled annotations, for classes outside the project's and for disagreeing annotators;
and, per box:

* Label Studio boxes are percentages of the image (``x``, ``y``, ``width``, ``height``);
  they are converted to pixel corners with the manifest's image size. CSV boxes are pixel
  corners (top-left, bottom-right), as in DeepPCB's ``boxes.csv``.
* ``outside_image``: a corner beyond the image (more than half a pixel: rounding is not a
  problem); ``empty_box``: zero width or height; ``inverted_box``: x2 < x1 or y2 < y1 (CSV)
  or a negative width / height (Label Studio); ``rotated_box``: a Label Studio box with a
  rotation (the detectors are axis-aligned); ``bad_value``: a coordinate that is not a
  finite number; ``empty_annotation`` / ``multiple_labels``: a rectangle with no or several
  labels.
* An image with any bad box is left out whole: keeping its other boxes would register an
  image whose defects are not all marked, which trains a detector that this defect is
  background. ``duplicate_box`` (the same label and corners twice for one image in one
  source) keeps one copy.
* A Label Studio annotation with no rectangles is a labeled image with no defects (kept,
  with an empty box list): that is what "checked, nothing there" looks like.

Structural problems (not JSON / not the CSV header) raise :class:`LabelExportError`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path

from components.labeling.snapshots import (
    LabelExportError,
    LabelSnapshotData,
    PathIndex,
    load_export,
    merge_snapshot,
    normalize_image_ref,
)

BOX_SNAPSHOT_FORMAT = "dlvm-box-snapshot/1"
CSV_HEADER = ["image", "x1", "y1", "x2", "y2", "label"]
BOX_ISSUE_KINDS = ("unknown_image", "ambiguous_image", "missing_image", "unknown_class", "cancelled", "conflict",
                   "empty_annotation", "multiple_labels", "outside_image", "empty_box", "inverted_box",
                   "rotated_box", "bad_value", "duplicate_box")
TOLERANCE_PX = 0.5  # rounding of percentages and corners: half a pixel beyond the edge is still inside


def is_box_snapshot(snapshot: dict | LabelSnapshotData) -> bool:
    fmt = snapshot.get("format") if isinstance(snapshot, dict) else snapshot.format
    return fmt == BOX_SNAPSHOT_FORMAT


def box_snapshot_hash(classes: list[str], items: list[dict]) -> str:
    payload = {"classes": classes, "items": [[it["path"], it["sha256"], [[b["label"], b["x1"], b["y1"], b["x2"],
                                                                        b["y2"]] for b in it["boxes"]]]
                                             for it in items]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _Collector:
    """Boxes per manifest image from any source, the issues, and the final snapshot."""

    def __init__(self, manifest: dict, allowed_classes: list[str] | None):
        self.records = {r["path"]: r for r in manifest["images"]}
        self.index = PathIndex(list(self.records))
        self.allowed = list(dict.fromkeys(allowed_classes)) if allowed_classes is not None else None
        self.manifest_hash = manifest.get("content_hash", "")
        self.issues: list[dict] = []
        self.bad: set[str] = set()  # images left out because of a bad box
        # path -> list of annotations: (boxes, annotator, created_at, task)
        self.annotations: dict[str, list[tuple[list[dict], str, str, object]]] = {}

    def issue(self, image: str, kind: str, detail: str) -> None:
        self.issues.append({"image": image, "kind": kind, "detail": detail})

    def image(self, ref: object, where: str) -> str | None:
        if not isinstance(ref, str) or not ref:
            self.issue(where, "missing_image", f"{where} names no image")
            return None
        norm = normalize_image_ref(ref)
        hits = self.index.match(norm)
        if not hits:
            self.issue(ref, "unknown_image", f"{where}: {norm!r} matches no image of the dataset version")
            return None
        if len(hits) > 1:
            self.issue(ref, "ambiguous_image", f"{where}: {norm!r} matches {len(hits)} images: {', '.join(hits[:5])}")
            return None
        return hits[0]

    def box(self, path: str, label: str, x1, y1, x2, y2, where: str) -> dict | None:
        """A checked box in pixel corners, or None (issue recorded, image marked bad)."""
        def bad(kind: str, detail: str) -> None:
            self.issue(path, kind, f"{where}: {detail}")
            self.bad.add(path)

        try:
            x1, y1, x2, y2 = (float(v) for v in (x1, y1, x2, y2))
        except (TypeError, ValueError):
            return bad("bad_value", f"corners {(x1, y1, x2, y2)} are not numbers")
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            return bad("bad_value", f"corners {(x1, y1, x2, y2)} are not finite")
        if self.allowed is not None and label not in self.allowed:
            return bad("unknown_class", f"class {label!r} is not one of {self.allowed}")
        if x2 < x1 or y2 < y1:
            return bad("inverted_box", f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has x2 < x1 or y2 < y1")
        if x2 == x1 or y2 == y1:
            return bad("empty_box", f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has zero width or height")
        w, h = self.records[path].get("width"), self.records[path].get("height")
        if w and h and (x1 < -TOLERANCE_PX or y1 < -TOLERANCE_PX or x2 > w + TOLERANCE_PX or y2 > h + TOLERANCE_PX):
            return bad("outside_image", f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {w}x{h} image")
        clip = (lambda v, hi: min(max(v, 0.0), float(hi))) if w and h else (lambda v, hi: v)
        return {"label": label, "x1": round(clip(x1, w), 2), "y1": round(clip(y1, h), 2),
                "x2": round(clip(x2, w), 2), "y2": round(clip(y2, h), 2)}

    def add(self, path: str, boxes: list[dict], annotator: str, created_at: str, task, where: str) -> None:
        unique: list[dict] = []
        for b in boxes:
            if b in unique:
                self.issue(path, "duplicate_box", f"{where}: {b['label']} box ({b['x1']:g}, {b['y1']:g}, "
                                                  f"{b['x2']:g}, {b['y2']:g}) appears twice; kept once")
            else:
                unique.append(b)
        self.annotations.setdefault(path, []).append((unique, annotator, created_at, task))

    def snapshot(self, n_tasks: int) -> LabelSnapshotData:
        items = []
        for path in sorted(self.annotations):
            if path in self.bad:
                continue
            versions = self.annotations[path]
            keyed = {json.dumps(sorted(json.dumps(b, sort_keys=True) for b in boxes)) for boxes, *_ in versions}
            if len(keyed) > 1:
                who = ", ".join(f"{a or '?'}: {len(boxes)} boxes" for boxes, a, _, _ in versions)
                self.issue(path, "conflict", f"annotations disagree ({who})")
                continue
            boxes, annotator, created_at, task = min(versions, key=lambda v: (v[2], v[1]))
            boxes = sorted(boxes, key=lambda b: (b["y1"], b["x1"], b["y2"], b["x2"], b["label"]))
            record = self.records[path]
            items.append({"path": path, "sha256": record["sha256"], "boxes": boxes,
                          "width": record.get("width"), "height": record.get("height"),
                          "annotator": annotator, "created_at": created_at, "task": task})
        labels = sorted({b["label"] for it in items for b in it["boxes"]})
        classes = self.allowed if self.allowed is not None else labels
        self.issues.sort(key=lambda i: (i["image"], i["kind"], i["detail"]))
        return LabelSnapshotData(classes=classes, items=items, issues=self.issues,
                                 content_hash=box_snapshot_hash(classes, items), manifest_hash=self.manifest_hash,
                                 n_tasks=n_tasks, format=BOX_SNAPSHOT_FORMAT)


def percent_to_corners(x: float, y: float, width: float, height: float, image_width: float,
                       image_height: float) -> tuple[float, float, float, float]:
    """A Label Studio rectangle (top-left ``x``, ``y`` and ``width``, ``height``, each in percent
    of the image's width or height) as pixel corners ``(x1, y1, x2, y2)``."""
    return (x * image_width / 100, y * image_height / 100, (x + width) * image_width / 100,
            (y + height) * image_height / 100)


def corners_to_percent(x1: float, y1: float, x2: float, y2: float, image_width: float,
                       image_height: float) -> dict[str, float]:
    """Pixel corners as a Label Studio rectangle value (``x``, ``y``, ``width``, ``height`` in
    percent), clipped to the image: a detector's box may reach past the edge, a Label Studio
    region may not. The inverse of :func:`percent_to_corners` for boxes inside the image."""
    if image_width <= 0 or image_height <= 0:
        raise ValueError(f"image size must be positive, got {image_width}x{image_height}")
    left, right = (min(max(v / image_width * 100, 0.0), 100.0) for v in (x1, x2))
    top, bottom = (min(max(v / image_height * 100, 0.0), 100.0) for v in (y1, y2))
    if right < left or bottom < top:
        raise ValueError(f"inverted box ({x1:g}, {y1:g}, {x2:g}, {y2:g})")
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


def _rectangles(ann: dict, from_name: str | None) -> list[dict]:
    return [r for r in ann.get("result") or [] if isinstance(r, dict) and r.get("type") == "rectanglelabels"
            and (from_name is None or r.get("from_name") == from_name)]


def boxes_from_label_studio(export: list | str | Path | bytes, manifest: dict, allowed_classes: list[str] | None = None,
                            image_key: str = "image", from_name: str | None = None) -> LabelSnapshotData:
    """A box snapshot from a Label Studio JSON export of ``RectangleLabels`` annotations."""
    tasks = load_export(export)
    c = _Collector(manifest, allowed_classes)
    for task in tasks:
        anns, tid = task.get("annotations") or [], task.get("id")
        if not anns:
            continue
        path = c.image(task["data"].get(image_key), f"task {tid}")
        if path is None:
            continue
        record = c.records[path]
        for ann in anns:
            where = f"task {tid} annotation {ann.get('id')}"
            if ann.get("was_cancelled"):
                c.issue(path, "cancelled", f"{where} was cancelled (skipped)")
                continue
            boxes = []
            for r in _rectangles(ann, from_name):
                v = r.get("value") or {}
                labels = [str(x) for x in v.get("rectanglelabels") or []]
                if not labels:
                    c.issue(path, "empty_annotation", f"{where}: a rectangle without a label")
                    c.bad.add(path)
                    continue
                if len(set(labels)) > 1:
                    c.issue(path, "multiple_labels", f"{where}: a rectangle labeled {sorted(set(labels))}")
                    c.bad.add(path)
                    continue
                if v.get("rotation"):
                    c.issue(path, "rotated_box", f"{where}: a {labels[0]} rectangle rotated by {v['rotation']} degrees")
                    c.bad.add(path)
                    continue
                try:
                    x, y, w, h = (float(v[k]) for k in ("x", "y", "width", "height"))
                except (KeyError, TypeError, ValueError):
                    c.issue(path, "bad_value", f"{where}: rectangle value {v} lacks numeric x, y, width, height")
                    c.bad.add(path)
                    continue
                W = float(r.get("original_width") or record.get("width") or 0)
                H = float(r.get("original_height") or record.get("height") or 0)
                if not W or not H:
                    c.issue(path, "bad_value", f"{where}: image size unknown, cannot place a percentage box")
                    c.bad.add(path)
                    continue
                box = c.box(path, labels[0], *percent_to_corners(x, y, w, h, W, H), where)
                if box is not None:
                    boxes.append(box)
            c.add(path, boxes, _annotator(ann), str(ann.get("created_at") or ""), tid, where)
    return c.snapshot(len(tasks))


def merge_box_snapshot(previous: LabelSnapshotData | None, changed_tasks: list[dict], manifest: dict,
                       allowed_classes: list[str] | None = None, image_key: str = "image",
                       from_name: str | None = None, source: dict | None = None,
                       origin: str | None = None) -> LabelSnapshotData:
    """The feedback round's incremental pull for box projects: ``previous`` (a box snapshot)
    with every image of ``changed_tasks`` re-derived from their ``RectangleLabels``, exactly
    as :func:`components.labeling.snapshots.merge_snapshot` does for image classes."""
    if previous is not None and not is_box_snapshot(previous):
        raise ValueError("a box pull merges onto a box snapshot, not onto image classes")
    return merge_snapshot(previous, changed_tasks, manifest, allowed_classes, image_key=image_key,
                          from_name=from_name, source=source, origin=origin, build=boxes_from_label_studio,
                          content_hash=box_snapshot_hash)


def _annotator(ann: dict) -> str:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("id") or "")
    return "" if who is None else str(who)


def boxes_from_csv(source: str | Path | bytes, manifest: dict,
                   allowed_classes: list[str] | None = None) -> LabelSnapshotData:
    """A box snapshot from a CSV ``image,x1,y1,x2,y2,label`` (pixel corners; one row per box)."""
    if isinstance(source, (str, Path)):
        try:
            source = Path(source).read_bytes()
        except OSError as exc:
            raise LabelExportError(f"cannot read box CSV {source}: {exc}") from exc
    try:
        text = source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelExportError(f"box CSV is not UTF-8 text: {exc}") from exc
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if header != CSV_HEADER:
        raise LabelExportError(f"box CSV header must be {','.join(CSV_HEADER)}, got {','.join(header) or 'nothing'}")
    c = _Collector(manifest, allowed_classes)
    boxes: dict[str, list[dict]] = {}
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"line {line}"
        if len(row) != len(CSV_HEADER):
            c.issue(f"line {line}", "bad_value", f"{where}: {len(row)} fields, expected {len(CSV_HEADER)}")
            continue
        ref, x1, y1, x2, y2, label = (cell.strip() for cell in row)
        path = c.image(ref, where)
        if path is None:
            continue
        box = c.box(path, label, x1, y1, x2, y2, where)
        if box is not None:
            boxes.setdefault(path, [])
            if box in boxes[path]:
                c.issue(path, "duplicate_box",
                        f"{where}: {label} box ({x1}, {y1}, {x2}, {y2}) appears twice; kept once")
            else:
                boxes[path].append(box)
    for path, found in boxes.items():
        c.add(path, found, "", "", None, "csv")
    return c.snapshot(0)
