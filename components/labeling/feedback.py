"""The labeling-team feedback loop's decisions, apart from the I/O that flows/feedback.py orchestrates:
which URL a task shows, what a pull merges into, which predictions to post, what the
queue is, and whether enough new labels arrived to retrain."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.labeling.label_studio import LabelStudioConfig, local_files_url
from components.labeling.queue import select_queue, uncertainty
from components.settings import Settings
from components.storage import open_store


def label_studio_config(settings: Settings) -> LabelStudioConfig:
    return LabelStudioConfig(url=settings.label_studio_url, token=settings.label_studio_token.get_secret_value())


def image_url_function(settings: Settings, image_dir: Path) -> Callable[[dict], tuple[str, float | None]]:
    """``record -> (url, expires_at)`` for a manifest record whose file is ``image_dir / path``.

    local-files: a path under Label Studio's document root (``label_studio_files_root``),
    served by Label Studio itself; presigned: the image is stored in the S3 artifact store
    (content-addressed, so stored once) and shown through a presigned GET URL."""
    if settings.label_studio_images == "local-files":
        root = settings.label_studio_files_root
        try:
            image_dir.resolve().relative_to(root)
        except ValueError:
            raise ValueError(f"images in {image_dir} are outside Label Studio's document root {root} "
                             "(DLVM_LABEL_STUDIO_FILES_ROOT must be Label Studio's LOCAL_FILES_DOCUMENT_ROOT "
                             "and contain DLVM_HOME); or use DLVM_LABEL_STUDIO_IMAGES=presigned") from None

        def local(record: dict) -> tuple[str, float | None]:
            return local_files_url(str((image_dir / record["path"]).resolve().relative_to(root))), None
        return local

    store = open_store(settings)
    expiry = settings.label_studio_url_expiry_s

    def presigned(record: dict) -> tuple[str, float | None]:
        stored = store.put_file(image_dir / record["path"], kind="images", name=Path(record["path"]).name)
        if stored.sha256 != record["sha256"]:
            raise ValueError(f"{record['path']} changed on disk since its dataset version was made "
                             f"(sha256 {stored.sha256[:12]}, manifest {record['sha256'][:12]})")
        return store.presigned_url(stored.uri, expiry), time.time() + expiry
    return presigned


@dataclass
class Preannotations:
    predictions: list[dict]      # {task, label, score} for unlabeled tasks without this model's prediction
    queue: list[int]             # task ids, label first to last
    uncertainty: dict[int, float]  # task id -> uncertainty of the queued tasks


def plan_preannotations(tasks: list[dict], sha_index: dict[str, int], probs: np.ndarray, features: np.ndarray,
                        classes: list[str], model_version: str, queue_size: int, kind: str = "margin",
                        diversity: bool = True, labeled_shas: set[str] | None = None) -> Preannotations:
    """Predictions to post and the labeling queue for the project's tasks.

    ``sha_index`` maps an image's sha256 to its row in ``probs``/``features`` (the
    dataset version's images). Unlabeled = no annotation in the project and not labeled in
    the current snapshot (``labeled_shas``, e.g. labels from a file export); labeled
    images' features keep the queue away from what the team already labeled."""
    unlabeled_ids, unlabeled_rows, labeled_rows = [], [], []
    predictions = []
    for task in tasks:
        row = sha_index.get(task["data"].get("dlvm_sha256", ""))
        if row is None:
            continue  # an image of another dataset version: nothing to predict with
        if task.get("total_annotations", 0) or task.get("annotations") or task["data"]["dlvm_sha256"] in (labeled_shas or ()):
            labeled_rows.append(row)
            continue
        unlabeled_ids.append(task["id"])
        unlabeled_rows.append(row)
        if not any(p.get("model_version") == model_version for p in task.get("predictions") or []):
            p = probs[row]
            predictions.append({"task": task["id"], "label": classes[int(p.argmax())], "score": float(p.max())})
    if not unlabeled_rows:
        return Preannotations(predictions, [], {})
    pool_probs, pool_feats = probs[unlabeled_rows], features[unlabeled_rows]
    picked = select_queue(pool_probs, pool_feats, queue_size, kind=kind,
                          labeled_features=features[labeled_rows] if labeled_rows else None, diversity=diversity)
    u = uncertainty(pool_probs, kind)
    return Preannotations(predictions, [unlabeled_ids[i] for i in picked],
                          {unlabeled_ids[i]: float(u[i]) for i in picked})


def new_label_count(current_items: list[dict], trained_items: list[dict] | None) -> int:
    """Labels in the current snapshot that the production model was not trained on
    (new images, or images whose label changed)."""
    trained = {it["path"]: it["label"] for it in trained_items or []}
    return sum(1 for it in current_items if trained.get(it["path"]) != it["label"])
