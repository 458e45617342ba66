"""Flow `labels`: turn a Label Studio export into a validated, versioned label snapshot."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.labeling.boxes import BOX_SNAPSHOT_FORMAT, boxes_from_csv, boxes_from_label_studio
from components.labeling.snapshots import build_label_snapshot, to_json_bytes
from components.orchestration.lineage import recorded_run
from components.settings import get_settings
from flows.tasks import (
    load_artifact,
    register_label_snapshot,
    resolve_dataset_version,
    store_artifact,
)


@task(name="build-label-snapshot", cache_policy=NO_CACHE)
def build_snapshot(export: Path, manifest: dict, classes: list[str] | None, boxes: bool = False):
    """Image classes from a Label Studio export; with ``boxes``, boxes from a RectangleLabels
    export or (a ``.csv`` file) from rows ``image,x1,y1,x2,y2,label``."""
    if export.suffix.lower() == ".csv":
        return boxes_from_csv(export, manifest, allowed_classes=classes)
    if boxes:
        return boxes_from_label_studio(export, manifest, allowed_classes=classes)
    return build_label_snapshot(export, manifest, allowed_classes=classes)


@flow(name="labels", log_prints=True)
def labels_flow(export_path: str, dataset: str, dataset_version: int | None = None,
                classes: list[str] | None = None, boxes: bool = False) -> dict:
    """Snapshot the labels in a Label Studio JSON export for a dataset version (latest by default);
    with `boxes` (or a .csv export) defect boxes instead of image classes."""
    settings = get_settings()
    logger = get_run_logger()
    path = Path(export_path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"label export {path} does not exist")
    with recorded_run(settings, "labels", {"export": str(path), "dataset": dataset,
                                           "dataset_version": dataset_version}):
        version = resolve_dataset_version(settings, dataset, dataset_version)
        manifest = json.loads(load_artifact(settings, version.manifest_uri, version.manifest_sha256))
        snapshot = build_snapshot(path, manifest, classes, boxes)
        for issue in snapshot.issues:
            logger.warning("label issue: %s %s (%s)", issue["kind"], issue["image"], issue["detail"])
        if not snapshot.items:
            raise ValueError(f"{path} holds no usable labels for {dataset} v{version.version} "
                             f"({len(snapshot.issues)} issues)")
        stored = store_artifact(settings, to_json_bytes(snapshot), "label-snapshots", f"{dataset}.json")
        source = f"{'box ' if snapshot.format == BOX_SNAPSHOT_FORMAT else ''}export {path}"
        row, created = register_label_snapshot(settings, version.id, snapshot, stored, source)
    if snapshot.format == BOX_SNAPSHOT_FORMAT:  # boxes per class
        counts = {c: sum(b["label"] == c for item in snapshot.items for b in item["boxes"]) for c in snapshot.classes}
    else:
        counts = {c: sum(1 for item in snapshot.items if item["label"] == c) for c in snapshot.classes}
    print(f"labels: {dataset} v{version.version} snapshot {row.version}: {len(snapshot.items)} labeled "
          f"{counts}, {len(snapshot.issues)} issues{'' if created else ' (unchanged)'}")
    return {"dataset": dataset, "dataset_version": version.version, "snapshot_id": row.id,
            "snapshot_version": row.version, "created": created, "n_labeled": len(snapshot.items),
            "class_counts": counts, "issues": snapshot.issues}
