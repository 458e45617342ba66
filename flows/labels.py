"""Flow `labels`: turn a Label Studio export into a validated, versioned label snapshot."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

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
def build_snapshot(export: list, manifest: dict, classes: list[str] | None):
    return build_label_snapshot(export, manifest, allowed_classes=classes)


@flow(name="labels", log_prints=True)
def labels_flow(export_path: str, dataset: str, dataset_version: int | None = None,
                classes: list[str] | None = None, allow_empty_classes: bool = False, min_labels: int = 1) -> dict:
    """Snapshot the labels in a Label Studio JSON export for a dataset version (latest by default).

    A declared class (``classes``) without a single label refuses the snapshot (a misspelt
    class name would otherwise drop the class silently) unless ``allow_empty_classes``;
    fewer than ``min_labels`` usable labels refuse it too."""
    check_dataset(dataset)
    if classes is not None:
        classes = check_classes(classes)
    settings = get_settings()
    logger = get_run_logger()
    path = Path(export_path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"label export {path} does not exist")
    with recorded_run(settings, "labels", {"export": str(path), "dataset": dataset,
                                           "dataset_version": dataset_version}):
        version = resolve_dataset_version(settings, dataset, dataset_version)
        manifest = json.loads(load_artifact(settings, version.manifest_uri, version.manifest_sha256))
        snapshot = build_snapshot(path, manifest, classes)
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
        labeled = {item["label"] for item in snapshot.items}
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
        row, created = register_label_snapshot(settings, version.id, snapshot, stored, f"export {path}")
    counts = {c: sum(1 for item in snapshot.items if item["label"] == c) for c in snapshot.classes}
    print(f"labels: {dataset} v{version.version} snapshot {row.version}: {len(snapshot.items)} labeled "
          f"{counts}, {len(snapshot.issues)} issues{'' if created else ' (unchanged)'}")
    return {"dataset": dataset, "dataset_version": version.version, "snapshot_id": row.id,
            "snapshot_version": row.version, "created": created, "n_labeled": len(snapshot.items),
            "class_counts": counts, "issues": snapshot.issues}
