"""The labeling-team feedback loop's decisions, apart from the I/O that flows/feedback.py orchestrates:
which URL a task shows, what a pull merges into, which predictions to post (a classifier's
class or a detector's boxes, through one :func:`plan_round`), what the queue is, and whether
enough new labels arrived to retrain."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.labeling.label_studio import LabelStudioConfig, local_files_url
from components.labeling.boxes import corners_to_percent
from components.labeling.queue import detection_uncertainty, select_by_uncertainty, uncertainty
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


# The model kind whose pre-annotations each kind of Label Studio project takes.
MODEL_KIND_FOR = {"classification": "classifier", "localization": "detector"}


def check_model_classes(model_ref: str, kind: str, model_classes: list[str], project_classes: list[str]) -> None:
    """A classifier must predict exactly the project's classes (in order: they are its output
    indices); a detector's boxes may only carry labels the project's RectangleLabels offer."""
    if kind == "classification":
        if list(model_classes or []) != list(project_classes):
            raise ValueError(f"{model_ref} predicts classes {list(model_classes or [])}, "
                             f"the project labels {list(project_classes)}")
        return
    unknown = [c for c in model_classes if c not in project_classes]
    if unknown:
        raise ValueError(f"{model_ref} detects labels {unknown} that the project's labels {list(project_classes)} "
                         "do not offer (pass --classes with them)")


@dataclass
class Preannotations:
    predictions: list[dict]      # {task, score, label or boxes}: unlabeled tasks without this model's prediction
    queue: list[int]             # task ids, label first to last
    uncertainty: dict[int, float]  # task id -> uncertainty of the queued tasks


def plan_preannotations(tasks: list[dict], sha_index: dict[str, int], probs: np.ndarray, features: np.ndarray,
                        classes: list[str], model_version: str, queue_size: int, kind: str = "margin",
                        diversity: bool = True, labeled_shas: set[str] | None = None) -> Preannotations:
    """A classifier's predictions to post (its top class and that class's probability) and the
    labeling queue by ``kind`` of uncertainty (components/labeling/queue.py); see :func:`plan_round`."""
    def predict(row: int) -> dict:
        p = probs[row]
        return {"label": classes[int(p.argmax())], "score": float(p.max())}
    return plan_round(tasks, sha_index, uncertainty(probs, kind), features, predict, model_version, queue_size,
                      diversity, labeled_shas)


def plan_box_preannotations(tasks: list[dict], sha_index: dict[str, int], detections: list[dict],
                            features: np.ndarray, classes: list[str], model_version: str, queue_size: int,
                            show_threshold: float, diversity: bool = True,
                            labeled_shas: set[str] | None = None) -> Preannotations:
    """A detector's boxes to post and the labeling queue by detection uncertainty (the largest
    binary entropy of an image's box scores: :func:`detection_uncertainty` says why).

    ``detections[row]``: ``boxes`` ``[n, 4]`` as fractions of the image's width and height
    (x1, y1, x2, y2 in 0..1: the detector sees a resized image, Label Studio shows the
    original), ``scores`` ``[n]``, ``labels`` ``[n]`` class indices; every candidate's score
    counts for the queue, boxes scoring at least ``show_threshold`` are posted. A task's
    score is ``1 - uncertainty``: how sure the detector is of its least sure box."""
    u = detection_uncertainty([d["scores"] for d in detections])

    def predict(row: int) -> dict:
        d = detections[row]
        shown = [{"label": classes[int(k)], "score": float(s), **corners_to_percent(*map(float, box), 1.0, 1.0)}
                 for box, s, k in zip(d["boxes"], d["scores"], d["labels"]) if s >= show_threshold]
        return {"boxes": shown, "score": 1.0 - float(u[row])}
    return plan_round(tasks, sha_index, u, features, predict, model_version, queue_size, diversity, labeled_shas)


def plan_round(tasks: list[dict], sha_index: dict[str, int], u: np.ndarray, features: np.ndarray,
               predict: Callable[[int], dict], model_version: str, queue_size: int, diversity: bool = True,
               labeled_shas: set[str] | None = None) -> Preannotations:
    """Predictions to post and the labeling queue for the project's tasks, for any model.

    ``sha_index`` maps an image's sha256 to its row in ``u`` (the model's uncertainty per
    image, in [0, 1]), ``features`` and ``predict(row)`` (the prediction body: ``label`` or
    ``boxes``, and ``score``) over the dataset version's images. Unlabeled = no annotation in
    the project and not labeled in the current snapshot (``labeled_shas``, e.g. labels from
    a file export); labeled images' features keep the queue away from what the team already
    labeled (:func:`select_by_uncertainty`)."""
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
            predictions.append({"task": task["id"], **predict(row)})
    if not unlabeled_rows:
        return Preannotations(predictions, [], {})
    pool_u = np.asarray(u, dtype=np.float64)[unlabeled_rows]
    picked = select_by_uncertainty(pool_u, features[unlabeled_rows], queue_size,
                                   labeled_features=features[labeled_rows] if labeled_rows else None,
                                   diversity=diversity)
    return Preannotations(predictions, [unlabeled_ids[i] for i in picked],
                          {unlabeled_ids[i]: float(pool_u[i]) for i in picked})


def new_label_count(current_items: list[dict], trained_items: list[dict] | None) -> int:
    """Labels in the current snapshot that the production model was not trained on
    (new images, or images whose label, or for box snapshots whose boxes, changed)."""
    def label(it: dict):
        return it["label"] if "label" in it else it["boxes"]
    trained = {it["path"]: label(it) for it in trained_items or []}
    return sum(1 for it in current_items if trained.get(it["path"]) != label(it))
