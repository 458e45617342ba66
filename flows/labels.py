"""Flow `labels`: turn a Label Studio export (or class folders, class-prefixed names, a
path,label CSV) into a validated, versioned label snapshot."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from components.labeling.label_sources import (
    SOURCE_KINDS,
    drop_changed_files,
    tasks_from_class_folders,
    tasks_from_csv,
    tasks_from_name_prefixes,
)
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
def build_snapshot(export, manifest: dict, classes: list[str] | None):
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
                prefix_separator: str = "_") -> dict:
    """Snapshot labels for a dataset version (latest by default) from a Label Studio JSON
    export (`source` label-studio), a class-per-folder tree (folders), a folder of
    class-prefixed file names (prefix) or a path,label CSV (csv): the same checks for each."""
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
            snapshot = build_snapshot(path, quote(manifest), classes)
        else:
            tasks = tasks_from_layout(path, source, classes, prefix_separator)
            snapshot = build_snapshot(quote(tasks), quote(manifest), classes)
            if wants_folder:
                snapshot = check_files(quote(snapshot), quote(tasks), path, classes)
            snapshot.source = {"kind": source, "path": str(path)}
        for issue in snapshot.issues:
            logger.warning("label issue: %s %s (%s)", issue["kind"], issue["image"], issue["detail"])
        if not snapshot.items:
            raise ValueError(f"{path} holds no usable labels for {dataset} v{version.version} "
                             f"({len(snapshot.issues)} issues)")
        stored = store_artifact(settings, to_json_bytes(snapshot), "label-snapshots", f"{dataset}.json")
        what = "export" if source == "label-studio" else source
        row, created = register_label_snapshot(settings, version.id, quote(snapshot), stored, f"{what} {path}")
    counts = {c: sum(1 for item in snapshot.items if item["label"] == c) for c in snapshot.classes}
    print(f"labels: {dataset} v{version.version} snapshot {row.version}: {len(snapshot.items)} labeled "
          f"{counts}, {len(snapshot.issues)} issues{'' if created else ' (unchanged)'}")
    return {"dataset": dataset, "dataset_version": version.version, "snapshot_id": row.id,
            "snapshot_version": row.version, "created": created, "n_labeled": len(snapshot.items),
            "class_counts": counts, "issues": snapshot.issues, "content_hash": snapshot.content_hash}
