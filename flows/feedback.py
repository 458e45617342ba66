"""Flow `feedback`: the labeling team's loop with Label Studio, run on a schedule.

set up the dataset's project -> import new images as tasks -> pull new labels into a
label snapshot -> post the production model's pre-annotations and order the queue by
uncertainty + diversity -> start the retrain deployment when enough new labels arrived
(the polling fallback of the webhook receiver, `dlvm feedback webhook`).

A localization project (`kind='localization'`, RectangleLabels) is pulled into box
snapshots the same way, gets the production detector's boxes
(`<dataset>-detector@production`) and a queue by detection uncertainty; it starts no
retrain (the retrain deployment is the classifiers')."""
from __future__ import annotations

import json

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.data import access
from components.labeling import label_studio as ls
from components.labeling.boxes import is_box_snapshot, merge_box_snapshot
from components.labeling.feedback import (
    MODEL_KIND_FOR,
    check_model_classes,
    image_url_function,
    label_studio_config,
    new_label_count,
    plan_box_preannotations,
    plan_preannotations,
)
from components.labeling.snapshots import from_json_bytes, merge_snapshot, to_json_bytes
from components.names import check_alias, check_dataset, check_model
from components.orchestration.lineage import recorded_run
from components.orchestration.triggers import start_deployment
from components.registry import queries
from components.registry.db import session_scope
from components.settings import get_settings, label_studio_retry_delays
from components.training.adapt import Classifier, predict_with_features
from components.training.detect import Detector
from flows.tasks import (
    load_artifact,
    load_model_checkpoint,
    register_label_snapshot,
    resolve_dataset_version,
    store_artifact,
)

# Label Studio calls: a server restarting or briefly overloaded gets a few more chances, one per
# delay of DLVM_LABEL_STUDIO_RETRY_DELAYS (default 2, 5 s), read once, here.
LS_RETRY_DELAYS = label_studio_retry_delays()
LS_RETRIES = dict(retries=len(LS_RETRY_DELAYS), retry_delay_seconds=LS_RETRY_DELAYS, cache_policy=NO_CACHE)


@task(name="label-studio-project", **LS_RETRIES)
def setup_project(cfg, dataset: str, version: int, classes: list[str], kind: str):
    # The first request: a server that is down or refuses the token fails here, clearly.
    return ls.ensure_project(cfg, dataset, version, classes, kind)


@task(name="label-studio-sync-tasks", **LS_RETRIES)
def sync_images(settings, cfg, project_id: int, dataset: str, dataset_version, manifest: dict):
    # The files Label Studio shows: the DVC workspace checked out to this version, or for a
    # sharded version its members extracted once.
    image_dir = access.dataset_files(settings, dataset, dataset_version, manifest)
    if settings.label_studio_images == "local-files":
        ls.connect_local_files(cfg, project_id, str(image_dir.resolve()))
    logger = get_run_logger()
    return ls.sync_tasks(cfg, project_id, manifest["images"], image_url_function(settings, image_dir),
                         progress=lambda done, total: logger.info("imported %d/%d tasks", done, total))


@task(name="label-studio-pull", **LS_RETRIES)
def pull_changed_tasks(cfg, project_id: int, since: str | None, labeled: set[str]) -> list[dict]:
    return ls.changed_tasks(cfg, project_id, since, watch_unlabeled=labeled)


@task(name="previous-label-snapshot", cache_policy=NO_CACHE)
def previous_snapshot(settings, dataset_version_id: int, url: str, project_id: int, boxes: bool = False):
    """(latest snapshot of the dataset version holding image classes, or with ``boxes`` boxes;
    None when there is none; cursor of the pull that made it).

    A snapshot pulled from this project is continued from its cursor; one from a file
    export or another server is the base a full pull merges onto, so its labels are kept
    wherever the project has none for the image."""
    with session_scope(settings) as session:
        rows = queries.label_snapshots_newest_first(session, dataset_version_id)
    for row in rows:
        snap = from_json_bytes(load_artifact(settings, row.artifact_uri, row.sha256))
        if is_box_snapshot(snap) != boxes:
            continue  # the other kind of labels: not what this project's pull continues
        same_project = snap.source.get("label_studio") == url and snap.source.get("project") == project_id
        return snap, snap.source.get("cursor") if same_project else None
    return None, None


@task(name="load-production-model", cache_policy=NO_CACHE)
def production_model(settings, model: str, alias: str, kind: str):
    """(version, Classifier or Detector, the items it was trained on), or Nones when the alias is
    unset; a model of the wrong kind for the project (a detector for a classification project,
    a classifier for boxes) is refused before anything is done in Label Studio."""
    with session_scope(settings) as session:
        version = queries.find_alias_version(session, model, alias)
        if version is None:
            return None, None, None
        model_kind = queries.get_model(session, model).kind
        trained = queries.get_label_snapshot(session, version.label_snapshot_id) if version.label_snapshot_id else None
    wanted = MODEL_KIND_FOR[kind]
    if model_kind != wanted:
        other = {v: k for k, v in MODEL_KIND_FOR.items()}.get(model_kind)
        raise ValueError(f"{model}@{alias} is a {model_kind}; a {kind} project takes a {wanted}'s pre-annotations"
                         + (f" (use --kind {other}, or --model a {wanted})" if other else f" (--model a {wanted})"))
    checkpoint = load_model_checkpoint(settings, version)
    trained_items = from_json_bytes(load_artifact(settings, trained.artifact_uri, trained.sha256)).items if trained else []
    if model_kind == "detector":
        return version, Detector.from_state(checkpoint), trained_items
    classifier = Classifier.from_state(checkpoint["classifier"])
    classifier.classes = classifier.classes or list(checkpoint.get("classes") or [])
    return version, classifier, trained_items


@task(name="predict-dataset", cache_policy=NO_CACHE)
def predict_dataset(settings, dataset: str, dataset_version, classifier):
    manifest, images = access.dataset_images(settings, dataset, dataset_version, classifier.input_spec)
    probs, features = predict_with_features(classifier, images)
    return {rec["sha256"]: i for i, rec in enumerate(manifest["images"])}, probs, features


@task(name="detect-dataset", cache_policy=NO_CACHE)
def detect_dataset(settings, dataset: str, dataset_version, detector: Detector):
    """The detector's boxes on every image of the version, as fractions of the image (it sees
    them stretched to its square input, so a fraction of its input is a fraction of the
    original), with every image's embedding."""
    manifest, images = access.dataset_images(settings, dataset, dataset_version, detector.img_size)
    found, features = detector.detect(images, with_features=True)
    for d in found:
        d["boxes"] = d["boxes"] / float(detector.img_size)
    return {rec["sha256"]: i for i, rec in enumerate(manifest["images"])}, found, features


@task(name="label-studio-preannotate", **LS_RETRIES)
def publish_preannotations(cfg, project_id: int, plan, model_version: str, tasks: list[dict]) -> int:
    ls.post_predictions(cfg, project_id, plan.predictions, model_version)
    return ls.set_queue(cfg, project_id, plan.queue, {t["id"]: t for t in tasks})


@task(name="start-retrain", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def start_retrain(deployment: str, dataset: str) -> str:
    return start_deployment(deployment, {"dataset": dataset})()


@flow(name="feedback", log_prints=True)
def feedback_flow(dataset: str, classes: list[str] | None = None, kind: str = "classification",
                  model: str | None = None, alias: str = "production", queue_size: int = 100,
                  uncertainty: str = "margin", diversity: bool = True, retrain_after: int | None = None,
                  webhook_url: str | None = None) -> dict:
    """One round of the labeling loop for `dataset`'s latest version (see the module docstring).

    `classes` default to the production model's, else the latest label snapshot's. Without a
    `model`@`alias` version (default `<dataset>-classifier@production`, for `kind`
    localization `<dataset>-detector@production`) the round imports tasks and pulls labels
    only. `uncertainty` is the classifier queue's; a localization round ranks by detection
    uncertainty (components/labeling/queue.py: detection_uncertainty). `retrain_after`
    defaults to DLVM_RETRAIN_AFTER_LABELS; `webhook_url`, when given, is registered in the
    project with DLVM_WEBHOOK_SECRET."""
    check_dataset(dataset)
    check_alias(alias)
    if model is not None:
        check_model(model)
    if kind not in MODEL_KIND_FOR:
        raise ValueError(f"unknown labeling task {kind!r} (choose from {', '.join(MODEL_KIND_FOR)})")
    settings = get_settings()
    logger = get_run_logger()
    cfg = label_studio_config(settings)
    model = model or f"{dataset}-{MODEL_KIND_FOR[kind]}"
    retrain_after = retrain_after or settings.retrain_after_labels
    params = {"dataset": dataset, "classes": classes, "kind": kind, "model": model, "alias": alias,
              "queue_size": queue_size, "uncertainty": uncertainty, "diversity": diversity}
    with recorded_run(settings, "feedback", params):
        version = resolve_dataset_version(settings, dataset, None)
        manifest = json.loads(load_artifact(settings, version.manifest_uri, version.manifest_sha256))
        prod_version, predictor, trained_items = production_model(settings, model, alias, kind)
        classes = classes or _known_classes(settings, version.id, predictor)
        if predictor is not None:
            check_model_classes(f"{model}@{alias}", kind, predictor.classes, classes)
        project = setup_project(cfg, dataset, version.version, classes, kind)
        if webhook_url:
            if not settings.webhook_secret.get_secret_value():
                raise ValueError("webhook_url given but DLVM_WEBHOOK_SECRET is empty: set a shared secret first")
            ls.ensure_webhook(cfg, project.id, webhook_url, settings.webhook_secret.get_secret_value())
        synced = sync_images(settings, cfg, project.id, dataset, version, manifest)
        boxes = kind == "localization"
        previous, since = previous_snapshot(settings, version.id, cfg.url, project.id, boxes)
        # Images labeled in this project before (a file export's labels are not watched:
        # the project never had them, so "no annotation" there removes nothing).
        origin = f"{cfg.url}#project={project.id}"
        labeled_before = {it["path"] for it in previous.items if it.get("origin") == origin} \
            if previous is not None else set()
        changed = pull_changed_tasks(cfg, project.id, since, labeled_before)
        cursor = max([t["updated_at"] for t in changed if t.get("updated_at")] + ([since] if since else []), default=None)
        merge = merge_box_snapshot if boxes else merge_snapshot
        snapshot = merge(previous, changed, manifest, classes, image_key="dlvm_path",
                         source={"label_studio": cfg.url, "project": project.id, "cursor": cursor}, origin=origin)
        if snapshot.issues:  # counts and the first few: the full list is in the snapshot artifact
            logger.warning("label issues: %s", ", ".join(f"{n} {kind}" for kind, n in snapshot.issue_counts().items()))
        for issue in snapshot.issues[:10]:
            logger.warning("label issue: %s %s (%s)", issue["kind"], issue["image"], issue["detail"])
        row, created = None, False
        if snapshot.items:
            stored = store_artifact(settings, to_json_bytes(snapshot), "label-snapshots", f"{dataset}.json")
            row, created = register_label_snapshot(settings, version.id, snapshot, stored,
                                             f"label-studio {cfg.url} project {project.id}")

        preannotated, queue = 0, []
        if predictor is not None:
            tasks = ls.tasks_after_pull(synced, changed)
            model_version = f"{model}:{prod_version.version}"
            labeled = {it["sha256"] for it in snapshot.items}
            if boxes:
                sha_index, detections, features = detect_dataset(settings, dataset, version, predictor)
                plan = plan_box_preannotations(tasks, sha_index, detections, features, classes, model_version,
                                               queue_size, predictor.show_threshold, diversity=diversity,
                                               labeled_shas=labeled)
            else:
                sha_index, probs, features = predict_dataset(settings, dataset, version, predictor)
                plan = plan_preannotations(tasks, sha_index, probs, features, classes, model_version, queue_size,
                                           kind=uncertainty, diversity=diversity, labeled_shas=labeled)
            publish_preannotations(cfg, project.id, plan, model_version, tasks)
            preannotated, queue = len(plan.predictions), plan.queue
        else:
            logger.info("no %s@%s yet: no pre-annotations, the queue is Label Studio's default order", model, alias)

        n_new = new_label_count(snapshot.items, trained_items)
        retrain_run = None
        if boxes:
            # The retrain deployment adapts and gates a classifier: detectors are retrained by hand
            # (`dlvm adapt --task detection`, `dlvm promote`).
            logger.info("%d box labels new to %s@%s; detectors are not retrained by this round", n_new, model, alias)
        elif n_new >= retrain_after:
            retrain_run = start_retrain(settings.retrain_deployment, dataset)
    print(f"feedback: {dataset} v{version.version} -> Label Studio project {project.id}: "
          f"{synced.imported} tasks imported ({synced.already_present} already there), "
          f"{len(changed)} changed tasks pulled, {len(snapshot.items)} labels"
          f"{f' = snapshot {row.version}' if row else ''}{' (new)' if created else ''}, "
          f"{len(snapshot.issues)} issues, {preannotated} pre-annotations, queue of {len(queue)}; "
          f"{n_new} labels new to the production model"
          + (f" -> retrain run {retrain_run}" if retrain_run else f" (retrain at {retrain_after})"))
    return {"project_id": project.id, "imported": synced.imported, "already_present": synced.already_present,
            "changed_tasks": len(changed), "n_labeled": len(snapshot.items), "issues": snapshot.issues,
            "snapshot_id": row.id if row else None, "snapshot_version": row.version if row else None,
            "snapshot_created": created, "preannotated": preannotated, "queue": queue,
            "new_labels": n_new, "retrain_run": retrain_run}


def _known_classes(settings, dataset_version_id: int, predictor) -> list[str]:
    if predictor is not None and predictor.classes:
        return list(predictor.classes)
    with session_scope(settings) as session:
        row = queries.latest_label_snapshot(session, dataset_version_id)
    if row is None:
        raise ValueError("no classes known for this dataset yet: pass classes (e.g. --classes ok,defect)")
    return list(row.classes)
