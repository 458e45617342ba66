"""Flow `ingest`: validate a folder of raw images, version the good ones with DVC,
register the dataset version. Bad files go to quarantine with their reasons."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from components.data import access
from components.data.ingest import (
    build_manifest,
    folder_counts,
    quarantine,
    scan_folder,
    stage_into_workspace,
    unchanged_quarantine,
)
from components.data.shards import stage_shards
from components.names import check_dataset, child_path
from components.orchestration.lineage import current_flow_run_id, recorded_run
from components.registry import queries, writes
from components.registry.db import session_scope
from components.settings import get_settings
from flows.tasks import IO_RETRIES, store_artifact


@task(name="scan-folder", cache_policy=NO_CACHE)
def scan(source: Path, include: list[str], exclude: list[str]):
    return scan_folder(source, include=include, exclude=exclude)


@task(name="quarantine-bad-files", cache_policy=NO_CACHE)
def quarantine_bad(scan_result, source: Path, dest: Path) -> list:
    return quarantine(scan_result, source, dest)


@task(name="find-existing-version", cache_policy=NO_CACHE)
def find_existing(settings, dataset: str, content_hash: str):
    # A read: the dataset row is only created with its first version, so a failed ingest
    # leaves no empty dataset behind.
    with session_scope(settings) as session:
        try:
            ds = queries.get_dataset(session, dataset)
        except queries.NotFound:
            return None
        return queries.find_dataset_version(session, ds.id, content_hash)


@task(name="dvc-add-and-push", **IO_RETRIES)
def dvc_add_and_push(settings, scan_result, source: Path, dataset: str, shard_size: int | None):
    """Stage the good images (one file each, or packed in shards of ``shard_size``), then
    version them; returns the DVC result and the shard layout (None for one file each)."""
    workspace = access.dvc_workspace(settings)
    # The dataset's folder, refused unless strictly inside the data folder (names are checked
    # at the flow's entry; this is the last line of defence before files are deleted).
    target = child_path(settings.dvc_repo / "data", *Path(access.dataset_rel_dir(dataset)).parts[1:])
    layout = None
    with workspace.exclusive():  # nobody checks another version out between staging and add
        workspace.init()
        if shard_size:
            layout = stage_shards(source, [(r.path, r.sha256) for r in scan_result.good], target, shard_size)
        else:
            stage_into_workspace(scan_result, source, target, root=settings.dvc_repo / "data")
        return workspace.add_and_push(access.dataset_rel_dir(dataset)), layout


@task(name="register-dataset-version", cache_policy=NO_CACHE)
def register_version(settings, dataset: str, manifest: dict, manifest_artifact, dvc, source: Path,
                     n_quarantined: int):
    with session_scope(settings) as session:
        ds = writes.get_or_create_dataset(session, dataset)
        return writes.add_dataset_version(
            session, dataset_id=ds.id, content_hash=manifest["content_hash"],
            manifest_uri=manifest_artifact.uri, manifest_sha256=manifest_artifact.sha256,
            dvc_md5=dvc.md5, dvc_file=dvc.dvc_file_text, n_images=manifest["n_images"],
            n_bytes=manifest["n_bytes"], n_quarantined=n_quarantined, source_path=str(source),
            flow_run_id=current_flow_run_id())


@flow(name="ingest", log_prints=True)
def ingest_flow(source: str, dataset: str, include: list[str] | None = None,
                exclude: list[str] | None = None) -> dict:
    """Version the images under `source` as a new version of `dataset` (none if unchanged).

    `include` / `exclude`: glob patterns choosing which files count (components/data/ingest.py,
    `matches_pattern`); a folder of more images than DLVM_SHARD_THRESHOLD is versioned as
    shards of DLVM_SHARD_SIZE images instead of one file per image."""
    check_dataset(dataset)  # before anything is read, written or recorded: the name becomes paths
    settings = get_settings()
    logger = get_run_logger()
    include, exclude = list(include or []), list(exclude or [])
    source_dir = Path(source).expanduser().resolve()
    if not source_dir.is_dir():
        raise NotADirectoryError(f"ingest source {source_dir} is not a directory")
    with recorded_run(settings, "ingest", {"source": str(source_dir), "dataset": dataset,
                                           "include": include, "exclude": exclude}):
        scan_result = scan(source_dir, include, exclude)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        quarantine_dir = child_path(settings.quarantine, dataset, stamp)
        if scan_result.bad and (same := unchanged_quarantine(scan_result, source_dir, quarantine_dir.parent)):
            quarantine_dir, bad = same, list(scan_result.bad)  # already there from an earlier ingest
        else:
            # quote(): Prefect would otherwise walk every record of a big scan or manifest looking
            # for futures, ~8 s per task at 50,000 images (measured), for nothing.
            bad = quarantine_bad(quote(scan_result), source_dir, quarantine_dir) if scan_result.bad else []
        if scan_result.hidden:
            logger.warning("skipped %d hidden files and folders (names starting with '.'): %s",
                           len(scan_result.hidden), ", ".join(scan_result.hidden[:5]))
        for item in scan_result.bad:
            logger.warning("quarantined %s: %s (%s)", item.path, item.reason, item.detail)
        if not scan_result.good:
            left_out = f", {len(scan_result.excluded)} left out by the patterns" if scan_result.excluded else ""
            raise ValueError(f"no valid images under {source_dir}: {len(scan_result.bad)} files quarantined{left_out}")
        manifest = build_manifest(scan_result, dataset)
        if include or exclude:
            manifest["selection"] = {"include": include, "exclude": exclude}
        sharded = len(scan_result.good) > settings.shard_threshold
        existing = find_existing(settings, dataset, manifest["content_hash"])
        if existing is not None:
            logger.info("unchanged: %s is already version %d of %s", source_dir, existing.version, dataset)
            version, created = existing, False
        else:
            if sharded:
                logger.info("%d images > DLVM_SHARD_THRESHOLD %d: versioning shards of %d",
                            len(scan_result.good), settings.shard_threshold, settings.shard_size)
            dvc, layout = dvc_add_and_push(settings, quote(scan_result), source_dir, dataset,
                                           settings.shard_size if sharded else None)
            if layout is not None:
                manifest["layout"] = layout
            manifest_bytes = json.dumps(manifest, sort_keys=True, indent=1).encode()
            stored = store_artifact(settings, manifest_bytes, "manifests", f"{dataset}.json")
            version = register_version(settings, dataset, quote(manifest), stored, dvc, source_dir, len(bad))
            created = True
    summary = {
        "dataset": dataset, "version": version.version, "dataset_version_id": version.id,
        "created": created, "n_images": manifest["n_images"], "content_hash": manifest["content_hash"],
        "quarantined": [{"path": b.path, "reason": b.reason, "detail": b.detail} for b in scan_result.bad],
        "quarantine_dir": str(quarantine_dir) if scan_result.bad else None,
        "excluded": len(scan_result.excluded), "folders": folder_counts(scan_result),
        "layout": _layout_text(manifest if created else None),
        "hidden": scan_result.hidden,
    }
    print(f"ingest: {dataset} v{version.version} ({manifest['n_images']} images, "
          f"{len(scan_result.bad)} quarantined, {len(scan_result.excluded)} left out by the patterns, "
          f"{'new version' if created else 'unchanged'}, {summary['layout']})")
    return summary


def _layout_text(manifest: dict | None) -> str:
    if manifest is None:  # unchanged: the existing version keeps the layout it was stored in
        return "stored as before"
    layout = manifest.get("layout")
    if layout:
        return f"{layout['n_shards']} shards of up to {layout['shard_size']} images"
    return "one file per image"
