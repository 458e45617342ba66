"""Flow `labels`: turn a Label Studio export (or class folders, class-prefixed names, a
path,label CSV) into a validated, versioned label snapshot."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from components.labeling.boxes import (
    BOX_SNAPSHOT_FORMAT,
    boxes_from_csv,
    boxes_from_label_studio,
)
from components.labeling.label_sources import (
    SOURCE_KINDS,
    drop_changed_files,
    tasks_from_class_folders,
    tasks_from_csv,
    tasks_from_name_prefixes,
)
from components.labeling.snapshots import build_label_snapshot, to_json_bytes
from components.names import check_classes, check_dataset
from components.orchestration.lineage import recorded_run
from components.settings import get_settings
from flows.tasks import (
    load_artifact,
    register_label_snapshot,
    resolve_dataset_version,
    store_artifact,
)

ISSUES_SHOWN = 10  # issue lines logged; the rest are counted (a large export can have 100k)


@task(name="build-label-snapshot", cache_policy=NO_CACHE)
def build_snapshot(export, manifest: dict, classes: list[str] | None, boxes: bool = False):
    """Image classes from a Label Studio export (a file) or from tasks built from a folder
    layout or a path,label CSV (a list); with ``boxes``, boxes from a RectangleLabels export,
    and a ``.csv`` export file is always rows ``image,x1,y1,x2,y2,label``."""
    if isinstance(export, Path) and export.suffix.lower() == ".csv":
        return boxes_from_csv(export, manifest, allowed_classes=classes)
    if boxes:
        return boxes_from_label_studio(export, manifest, allowed_classes=classes)
    return build_label_snapshot(export, manifest, allowed_classes=classes)


@task(name="label-tasks-from-layout", cache_policy=NO_CACHE)
def tasks_from_layout(path: Path, source: str, classes: list[str] | None, prefix_separator: str) -> list[dict]:
    if source == "folders":
        return tasks_from_class_folders(path)
    if source == "prefix":
        return tasks_from_name_prefixes(path, prefix_separator, classes)
    return tasks_from_csv(path)


@task(name="check-labeled-files", cache_policy=NO_CACHE)
def check_files(snapshot, tasks: list[dict], root: Path, classes: list[str] | None):
    return drop_changed_files(snapshot, tasks, root, classes)


@flow(name="labels", log_prints=True)
def labels_flow(export_path: str, dataset: str, dataset_version: int | None = None,
                classes: list[str] | None = None, source: str = "label-studio",
                prefix_separator: str = "_", boxes: bool = False, allow_empty_classes: bool = False,
                min_labels: int = 1) -> dict:
    """Snapshot labels for a dataset version (latest by default) from a Label Studio JSON
    export (`source` label-studio), a class-per-folder tree (folders), a folder of
    class-prefixed file names (prefix) or a path,label CSV (csv): the same checks for each.
    With `boxes` (or a .csv Label Studio-style export) defect boxes instead of image classes.

    A declared class (``classes``) without a single label refuses the snapshot (a misspelt
    class name would otherwise drop the class silently) unless ``allow_empty_classes``;
    fewer than ``min_labels`` usable labels refuse it too."""
    check_dataset(dataset)
    if classes is not None:
        classes = check_classes(classes)
    if boxes and source != "label-studio":
        raise ValueError("boxes come from a Label Studio RectangleLabels export or a box CSV, not from --from-*")
    settings = get_settings()
    logger = get_run_logger()
    if source not in SOURCE_KINDS:
        raise ValueError(f"label source must be one of {', '.join(SOURCE_KINDS)}, got {source!r}")
    path = Path(export_path).expanduser().resolve()
    wants_folder = source in ("folders", "prefix")
    if wants_folder and not path.is_dir():
        raise NotADirectoryError(f"label folder {path} is not a directory")
    if not wants_folder and not path.is_file():
        raise FileNotFoundError(f"label {'export' if source == 'label-studio' else 'CSV'} {path} does not exist")
    with recorded_run(settings, "labels", {"export": str(path), "dataset": dataset,
                                           "dataset_version": dataset_version, "source": source}):
        version = resolve_dataset_version(settings, dataset, dataset_version)
        manifest = json.loads(load_artifact(settings, version.manifest_uri, version.manifest_sha256))
        if source == "label-studio":
            # quote(): no walk through every manifest record by Prefect (flows/ingest.py says why)
            snapshot = build_snapshot(path, quote(manifest), classes, boxes)
        else:
            tasks = tasks_from_layout(path, source, classes, prefix_separator)
            snapshot = build_snapshot(quote(tasks), quote(manifest), classes)
            if wants_folder:
                snapshot = check_files(quote(snapshot), quote(tasks), path, classes)
            snapshot.source = {"kind": source, "path": str(path)}
        if snapshot.issues:  # counts and the first few: the full list is in the snapshot artifact
            logger.warning("label issues: %s", ", ".join(f"{n} {kind}" for kind, n in snapshot.issue_counts().items()))
            for issue in snapshot.issues[:ISSUES_SHOWN]:
                logger.warning("label issue: %s %s (%s)", issue["kind"], issue["image"], issue["detail"])
        if not snapshot.items:
            raise ValueError(f"{path} holds no usable labels for {dataset} v{version.version} "
                             f"({len(snapshot.issues)} issues)")
        if len(snapshot.items) < min_labels:
            raise ValueError(f"{path} holds {len(snapshot.items)} usable labels for {dataset} v{version.version}, "
                             f"fewer than the {min_labels} required")
        labeled = ({b["label"] for item in snapshot.items for b in item["boxes"]}
                   if snapshot.format == BOX_SNAPSHOT_FORMAT else {item["label"] for item in snapshot.items})
        empty = [c for c in snapshot.classes if c not in labeled]
        if classes is not None and empty and not allow_empty_classes:
            raise ValueError(f"declared classes without a single label in {path}: {', '.join(map(repr, empty))} "
                             "(misspelt? labels outside the classes are unknown_class issues); "
                             "allow them with --allow-empty-classes")
        if empty:
            logger.warning("classes without labels: %s", ", ".join(empty))
        if len(snapshot.items) < 0.1 * manifest["n_images"]:
            logger.warning("only %d of the %d images of %s v%d are labeled (--min-labels requires a minimum)",
                           len(snapshot.items), manifest["n_images"], dataset, version.version)
        stored = store_artifact(settings, to_json_bytes(snapshot), "label-snapshots", f"{dataset}.json")
        what = "export" if source == "label-studio" else source
        if snapshot.format == BOX_SNAPSHOT_FORMAT:
            what = f"box {what}"
        row, created = register_label_snapshot(settings, version.id, quote(snapshot), stored, f"{what} {path}")
    if snapshot.format == BOX_SNAPSHOT_FORMAT:  # boxes per class
        counts = {c: sum(b["label"] == c for item in snapshot.items for b in item["boxes"]) for c in snapshot.classes}
    else:
        counts = {c: sum(1 for item in snapshot.items if item["label"] == c) for c in snapshot.classes}
    print(f"labels: {dataset} v{version.version} snapshot {row.version}: {len(snapshot.items)} labeled "
          f"{counts}, {len(snapshot.issues)} issues{'' if created else ' (unchanged)'}")
    return {"dataset": dataset, "dataset_version": version.version, "snapshot_id": row.id,
            "snapshot_version": row.version, "created": created, "n_labeled": len(snapshot.items),
            "class_counts": counts, "issues": snapshot.issues, "content_hash": snapshot.content_hash}
