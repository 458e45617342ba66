"""Turn a Label Studio JSON export into a validated label snapshot for one dataset version.

Input: the JSON list that Label Studio's export API returns (tasks with ``data``,
``annotations``, ``predictions``) and a dataset manifest
(:func:`components.data.ingest.build_manifest`). Output: :class:`LabelSnapshotData`,
one item per labelled manifest image plus the issues that kept labels out.

Rules:

* The image of a task is ``data[image_key]``. Its reference is normalised (Label Studio
  local-files prefix ``/data/local-files/?d=`` removed, with or without a host, URL-decoded, ``s3://bucket/``,
  ``gs://bucket/`` or ``http(s)://host/`` and any query removed, an uploaded file's
  ``/data/upload/<project>/<8 hex>-`` prefix removed) and matched to the manifest path
  that is a path-suffix of it. No match -> ``unknown_image``; more than one ->
  ``ambiguous_image`` (the label is kept out rather than guessed). A reference shorter
  than every manifest path (e.g. a bare file name) matches when exactly one manifest path
  ends with it.
* A reference to an exact copy that the ingest quarantined as a duplicate (the manifest's
  ``duplicates``) counts for the kept image; copies labelled differently are a ``conflict``.
* Only ``choices`` results count; predictions (pre-annotations) are ignored.
* Cancelled (skipped) annotations are ignored and reported as ``cancelled``.
* Several non-cancelled annotations of one image (in one task or in several tasks) that
  agree are fine; if they disagree the image is left out with a ``conflict`` issue.
* Classes outside ``allowed_classes`` -> ``unknown_class`` (image left out).
* An annotation with no choice -> ``empty_annotation``, with several choices ->
  ``multiple_choices`` (single-label classification; image left out).
* A task without annotations is simply unlabeled: no issue. A task whose image is not in
  the manifest is reported only when it carries annotations (labels that would be lost).

Structural problems (not JSON, not a list, a task that is not an object or lacks
``data``) raise :class:`LabelExportError`.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

SNAPSHOT_FORMAT = "dlvm-label-snapshot/1"
ISSUE_KINDS = ("unknown_image", "ambiguous_image", "unknown_class", "cancelled", "conflict",
               "empty_annotation", "multiple_choices", "missing_image")

_LOCAL_FILES = "/data/local-files/"
_UPLOAD = re.compile(r"^/?data/upload/\d+/[0-9a-f]{8}-(.+)$")


class LabelExportError(ValueError):
    """The export is not a Label Studio JSON export (message says what is wrong)."""


@dataclass
class LabelSnapshotData:
    classes: list[str]
    items: list[dict]  # {path, sha256, label, annotator, created_at, task (Label Studio task id)}, sorted by path
    issues: list[dict]  # {image, kind, detail}
    content_hash: str  # sha256 over classes + (path, sha256, label): what training sees
    manifest_hash: str = ""
    n_tasks: int = 0
    format: str = field(default=SNAPSHOT_FORMAT)
    # Where the labels came from; for a Label Studio pull {"label_studio", "project", "cursor"}:
    # the next pull asks only for tasks changed after the cursor. Not part of content_hash.
    source: dict = field(default_factory=dict)

    def labels_by_path(self) -> dict[str, str]:
        return {it["path"]: it["label"] for it in self.items}

    def issue_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in self.issues:
            out[i["kind"]] = out.get(i["kind"], 0) + 1
        return out


def to_json_bytes(snapshot: LabelSnapshotData) -> bytes:
    """Deterministic serialisation (same snapshot -> same bytes)."""
    return (json.dumps(asdict(snapshot), sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def from_json_bytes(data: bytes) -> LabelSnapshotData:
    d = json.loads(data)
    return LabelSnapshotData(**d)


def snapshot_hash(classes: list[str], items: list[dict]) -> str:
    payload = {"classes": classes, "items": [[it["path"], it["sha256"], it["label"]] for it in items]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def normalize_image_ref(ref: str) -> str:
    """Reduce a task's image reference to a relative POSIX path (see module docstring)."""
    ref = ref.strip()
    parts = urlsplit(ref)
    if parts.path.startswith(_LOCAL_FILES):  # relative, or absolute with Label Studio's host
        for part in parts.query.split("&"):
            if part.startswith("d="):
                return _clean(unquote(part[2:]))
    if parts.scheme in ("s3", "gs", "gcs", "azure-blob", "http", "https") and parts.netloc:
        ref = parts.path  # bucket / host is dropped with the netloc
    else:
        ref = ref.split("?", 1)[0]
    ref = unquote(ref)
    m = _UPLOAD.match(ref)
    if m:
        ref = m.group(1)
    return _clean(ref)


def _clean(path: str) -> str:
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("/", ".", "")]
    return "/".join(parts)


class _PathIndex:
    """Match normalised references to manifest paths by path suffix."""

    def __init__(self, paths: list[str]):
        self.by_name: dict[str, list[str]] = {}
        for p in paths:
            self.by_name.setdefault(PurePosixPath(p).name, []).append(p)

    def match(self, ref: str) -> list[str]:
        candidates = self.by_name.get(PurePosixPath(ref).name, []) if ref else []
        hits = [p for p in candidates if ref == p or ref.endswith("/" + p)]
        if not hits:
            # Reference shorter than the manifest paths (e.g. an upload's bare file name).
            hits = [p for p in candidates if p.endswith("/" + ref)]
        return sorted(hits)


PathIndex = _PathIndex  # public name: box snapshots (components/labeling/boxes.py) match images the same way


def load_export(export: list | str | Path | bytes) -> list[dict]:
    """Read and structurally validate an export (list, JSON bytes, or path to a JSON file)."""
    if isinstance(export, (str, Path)):
        path = Path(export)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise LabelExportError(f"cannot read label export {path}: {exc}") from exc
        export = raw
    if isinstance(export, bytes):
        try:
            export = json.loads(export)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LabelExportError(f"label export is not valid JSON: {exc}") from exc
    if isinstance(export, dict) and "annotations" not in export:
        raise LabelExportError("label export must be a JSON list of tasks (Label Studio 'JSON' export), "
                               f"got an object with keys {sorted(export)[:8]}")
    if not isinstance(export, list):
        raise LabelExportError(f"label export must be a JSON list of tasks, got {type(export).__name__}")
    for i, task in enumerate(export):
        if not isinstance(task, dict):
            raise LabelExportError(f"task #{i} is a {type(task).__name__}, not an object")
        if not isinstance(task.get("data"), dict):
            raise LabelExportError(f"task #{i} (id {task.get('id')!r}) has no 'data' object")
        anns = task.get("annotations", [])
        if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
            raise LabelExportError(f"task #{i} (id {task.get('id')!r}): 'annotations' must be a list of objects")
        for a in anns:
            if not isinstance(a.get("result", []), list):
                raise LabelExportError(f"task #{i} (id {task.get('id')!r}): annotation 'result' must be a list")
    return export


def _annotator(ann: dict) -> str:
    who = ann.get("completed_by")
    if isinstance(who, dict):  # some export variants inline the user
        return str(who.get("email") or who.get("id") or "")
    return "" if who is None else str(who)


def _choices(ann: dict, from_name: str | None) -> list[str]:
    out: list[str] = []
    for r in ann.get("result") or []:
        if not isinstance(r, dict) or r.get("type") != "choices":
            continue
        if from_name is not None and r.get("from_name") != from_name:
            continue
        value = r.get("value") or {}
        choices = value.get("choices") or []
        # One choice given as a plain string is that choice, not a list of its letters.
        out.extend([choices] if isinstance(choices, str) else (str(c) for c in choices))
    return out


def build_label_snapshot(export: list | str | Path | bytes, manifest: dict, allowed_classes: list[str] | None = None,
                         image_key: str = "image", from_name: str | None = None) -> LabelSnapshotData:
    """Validate an export against a manifest; see the module docstring for the rules."""
    tasks = load_export(export)
    records = {r["path"]: r for r in manifest["images"]}
    # A label on a quarantined exact copy is a label of the kept image (and a conflict
    # when the two copies were labelled differently).
    copies = {dup: kept for dup, kept in (manifest.get("duplicates") or {}).items() if kept in records}
    index = _PathIndex(list(records) + list(copies))
    allowed = list(dict.fromkeys(allowed_classes)) if allowed_classes is not None else None
    issues: list[dict] = []
    # manifest path -> list of (label, annotator, created_at) from non-cancelled annotations
    votes: dict[str, list[tuple[str, str, str]]] = {}

    def issue(image: str, kind: str, detail: str) -> None:
        issues.append({"image": image, "kind": kind, "detail": detail})

    for task in tasks:
        anns = task.get("annotations") or []
        tid = task.get("id")
        ref = task["data"].get(image_key)
        if not anns:
            continue  # unlabeled
        if not isinstance(ref, str) or not ref:
            issue(f"task {tid}", "missing_image", f"task {tid} has no data.{image_key} string")
            continue
        norm = normalize_image_ref(ref)
        hits = sorted({copies.get(hit, hit) for hit in index.match(norm)})
        if not hits:
            issue(ref, "unknown_image", f"task {tid}: {norm!r} matches no image of the dataset version")
            continue
        if len(hits) > 1:
            issue(ref, "ambiguous_image", f"task {tid}: {norm!r} matches {len(hits)} images: {', '.join(hits[:5])}")
            continue
        path = hits[0]
        for ann in anns:
            if ann.get("was_cancelled"):
                issue(path, "cancelled", f"task {tid}: annotation {ann.get('id')} was cancelled (skipped)")
                continue
            choices = _choices(ann, from_name)
            if not choices:
                issue(path, "empty_annotation", f"task {tid}: annotation {ann.get('id')} has no choice")
                continue
            if len(set(choices)) > 1:
                issue(path, "multiple_choices", f"task {tid}: annotation {ann.get('id')} chose {sorted(set(choices))}")
                continue
            label = choices[0]
            if allowed is not None and label not in allowed:
                issue(path, "unknown_class", f"task {tid}: class {label!r} is not one of {allowed}")
                continue
            votes.setdefault(path, []).append((label, _annotator(ann), str(ann.get("created_at") or ""), tid))

    items: list[dict] = []
    for path in sorted(votes):
        labels = sorted({v[0] for v in votes[path]})
        if len(labels) > 1:
            who = ", ".join(f"{a or '?'}: {lab}" for lab, a, _, _ in votes[path])
            issue(path, "conflict", f"annotations disagree ({who})")
            continue
        # Agreeing duplicates: credit the earliest annotation.
        label, annotator, created_at, task_id = min(votes[path], key=lambda v: (v[2], v[1]))
        items.append({"path": path, "sha256": records[path]["sha256"], "label": label,
                      "annotator": annotator, "created_at": created_at, "task": task_id})

    classes = allowed if allowed is not None else sorted({it["label"] for it in items})
    issues.sort(key=lambda i: (i["image"], i["kind"], i["detail"]))
    return LabelSnapshotData(classes=classes, items=items, issues=issues,
                             content_hash=snapshot_hash(classes, items),
                             manifest_hash=manifest.get("content_hash", ""), n_tasks=len(tasks))


def merge_snapshot(previous: LabelSnapshotData | None, changed_tasks: list[dict], manifest: dict,
                   allowed_classes: list[str] | None = None, image_key: str = "image",
                   from_name: str | None = None, source: dict | None = None,
                   origin: str | None = None, build: Callable[..., LabelSnapshotData] | None = None,
                   content_hash: Callable[[list[str], list[dict]], str] | None = None) -> LabelSnapshotData:
    """An incremental pull: ``previous`` with every image of ``changed_tasks`` re-derived
    from those tasks alone (all their annotations, so edits and deletions count too).

    Images that no changed task touches keep their label and issues from ``previous``.
    With no ``previous`` this is :func:`build_label_snapshot` of the changed tasks. Items
    from ``changed_tasks`` are stamped ``origin`` (e.g. the Label Studio project), so a
    later pull knows which labels that project gave. ``build`` and ``content_hash`` default
    to image classes' (:func:`build_label_snapshot`, :func:`snapshot_hash`); box snapshots
    pass theirs (components/labeling/boxes.py: merge_box_snapshot)."""
    build, content_hash = build or build_label_snapshot, content_hash or snapshot_hash
    fresh = build(changed_tasks, manifest, allowed_classes, image_key=image_key, from_name=from_name)
    if origin is not None:
        for it in fresh.items:
            it["origin"] = origin
    records = {r["path"] for r in manifest["images"]}
    copies = {dup: kept for dup, kept in (manifest.get("duplicates") or {}).items() if kept in records}
    index = _PathIndex(sorted(records) + sorted(copies))
    touched: set[str] = set()
    for task in changed_tasks:
        ref = task["data"].get(image_key)
        if isinstance(ref, str) and ref:
            hits = index.match(normalize_image_ref(ref))
            touched.update(copies.get(hit, hit) for hit in hits)
            touched.add(ref)  # issues of unmatched references are keyed by the raw reference
    items = {it["path"]: it for it in fresh.items}
    issues = list(fresh.issues)
    if previous is not None:
        if allowed_classes is None and previous.classes != fresh.classes:
            fresh.classes = sorted(set(previous.classes) | set(fresh.classes))
        for it in previous.items:
            if it["path"] not in touched and it["path"] in records:
                items.setdefault(it["path"], it)
        issues += [i for i in previous.issues if i["image"] not in touched]
    merged = [items[p] for p in sorted(items)]
    classes = fresh.classes
    issues.sort(key=lambda i: (i["image"], i["kind"], i["detail"]))
    return LabelSnapshotData(classes=classes, items=merged, issues=issues,
                             content_hash=content_hash(classes, merged),
                             manifest_hash=manifest.get("content_hash", ""),
                             n_tasks=len(changed_tasks),  # tasks read by this pull
                             format=fresh.format, source=dict(source or {}))
