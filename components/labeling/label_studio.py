"""Everything dlvm does in a Label Studio server, through label-studio-sdk 2.x.

One project per dataset (title ``dlvm: <dataset>``), set up idempotently:

* **Labeling config** from the dataset's classes: image classification (``Choices``
  named ``label``) or localization (``RectangleLabels``).
* **Tasks**, one per image, keyed by the image's content hash (``data.dlvm_sha256``): a
  re-sync imports only images the project does not hold yet, in batches. ``data.image``
  is what Label Studio displays: a local-files URL served by Label Studio itself (the
  embedded default; its document root must hold dlvm's DVC workspace) or a presigned URL
  from the S3 artifact store, renewed by each sync before it expires.
* **Pull**: the tasks changed since a cursor (task ``updated_at``; an annotation created,
  updated or deleted touches its task), page by page.
* **Pre-annotations**: predictions with ``model_version`` and a score (the model's
  confidence): a class choice, or rectangles in percent of the image with a score each;
  imported in batches; the project shows that model version's predictions.
* **Queue**: rank ``data.dlvm_queue`` (1 = label first) on the tasks to label next, and
  a Data Manager tab ``dlvm queue`` that lists exactly those tasks in that order.

Every failure of the server (down, 4xx/5xx, timeout) is raised as
:class:`LabelStudioError` naming the URL and what was being done; flows retry on it.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import escape
from urllib.parse import quote

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from components.labeling.webhook import SECRET_HEADER

FROM_NAME = "label"      # control tag name of the class choice (and of the boxes)
TO_NAME = "image"        # object tag name; its value is $image
QUEUE_FIELD = "dlvm_queue"
QUEUE_TAB = "dlvm queue"
TASK_KINDS = ("classification", "localization")
# The queue as Data Manager sees it: ranked tasks that nobody has labeled yet, rank 1 first.
QUEUE_QUERY = {"ordering": [f"tasks:data.{QUEUE_FIELD}"],
               "filters": {"conjunction": "and", "items": [
                   {"filter": f"filter:tasks:data.{QUEUE_FIELD}", "operator": "greater", "type": "Number", "value": 0},
                   {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}]}}


class LabelStudioError(RuntimeError):
    """Label Studio is unreachable or refused a request (the message says which and why)."""


@dataclass(frozen=True)
class LabelStudioConfig:
    url: str
    token: str
    timeout_s: float = 60.0
    page_size: int = 500       # tasks per page when listing
    batch_size: int = 500      # tasks / predictions per import request

    def __post_init__(self) -> None:
        if not self.url:
            raise LabelStudioError("Label Studio is not configured: set DLVM_LABEL_STUDIO_URL "
                                   "(and DLVM_LABEL_STUDIO_TOKEN); `dlvm stack up` starts one")
        if not self.token:
            raise LabelStudioError(f"DLVM_LABEL_STUDIO_TOKEN is empty: the API of {self.url} needs a token")


def client(cfg: LabelStudioConfig) -> LabelStudio:
    return LabelStudio(base_url=cfg.url.rstrip("/"), api_key=cfg.token, timeout=cfg.timeout_s)


@contextmanager
def _calling(cfg: LabelStudioConfig, doing: str):
    """Turn the SDK's and httpx's exceptions into one LabelStudioError with context."""
    try:
        yield
    except ApiError as exc:
        body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)
        if exc.status_code == 401:
            raise LabelStudioError(f"Label Studio at {cfg.url} refused the token (HTTP 401) trying to {doing}: "
                                   "check DLVM_LABEL_STUDIO_TOKEN") from exc
        raise LabelStudioError(f"Label Studio at {cfg.url} refused to {doing}: HTTP {exc.status_code}: "
                               f"{body[:500]}") from exc
    except httpx.TimeoutException as exc:
        raise LabelStudioError(f"Label Studio at {cfg.url} timed out ({cfg.timeout_s:g} s) trying to {doing}") from exc
    except httpx.HTTPError as exc:
        raise LabelStudioError(f"Label Studio at {cfg.url} is unreachable trying to {doing}: "
                               f"{type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- project


def project_title(dataset: str) -> str:
    return f"dlvm: {dataset}"


def label_config(classes: list[str], kind: str = "classification") -> str:
    """Label Studio XML for single-label image classification or box localization."""
    if not classes:
        raise ValueError("a labeling config needs at least one class")
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate class names in {classes}")
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown labeling task {kind!r} (choose from {', '.join(TASK_KINDS)})")
    if kind == "classification":
        options = "".join(f'<Choice value="{escape(c, quote=True)}"/>' for c in classes)
        control = f'<Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">{options}</Choices>'
    else:
        options = "".join(f'<Label value="{escape(c, quote=True)}"/>' for c in classes)
        control = f'<RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">{options}</RectangleLabels>'
    return f'<View><Image name="{TO_NAME}" value="${TO_NAME}" zoom="true"/>{control}</View>'


def _projects_titled(cfg: LabelStudioConfig, ls: LabelStudio, title: str) -> list:
    with _calling(cfg, f"list projects to find {title!r}"):
        return [p for p in ls.projects.list(page_size=100) if p.title == title]


@dataclass
class ProjectInfo:
    id: int
    title: str
    created: bool
    updated: bool


def ensure_project(cfg: LabelStudioConfig, dataset: str, dataset_version: int, classes: list[str],
                   kind: str = "classification") -> ProjectInfo:
    """Create the dataset's project, or bring its labeling config and description up to date."""
    ls = client(cfg)
    title = project_title(dataset)
    config = label_config(classes, kind)
    description = f"dlvm dataset {dataset} v{dataset_version}; classes: {', '.join(classes)}"
    existing = _projects_titled(cfg, ls, title)
    if len(existing) > 1:
        raise LabelStudioError(f"Label Studio at {cfg.url} holds {len(existing)} projects titled {title!r} "
                               f"(ids {[p.id for p in existing]}): rename or delete all but one")
    if not existing:
        with _calling(cfg, f"create project {title!r}"):
            project = ls.projects.create(title=title, label_config=config, description=description)
        return ProjectInfo(project.id, title, created=True, updated=False)
    project = existing[0]
    if (project.label_config or "").strip() == config and project.description == description:
        return ProjectInfo(project.id, title, created=False, updated=False)
    # Label Studio refuses a config that drops a class already used in annotations (HTTP 400): keep that error.
    with _calling(cfg, f"update the labeling config of project {project.id} ({title!r})"):
        ls.projects.update(id=project.id, label_config=config, description=description)
    return ProjectInfo(project.id, title, created=False, updated=True)


def labeling_progress(cfg: LabelStudioConfig, dataset: str) -> dict | None:
    """How far the labeling team is on the dataset's project, or None when it has no project:
    {project_id, title, url, n_tasks, n_labeled (tasks with an annotation), n_annotations,
    n_skipped, n_predictions}."""
    ls = client(cfg)
    title = project_title(dataset)
    found = _projects_titled(cfg, ls, title)
    if not found:
        return None
    with _calling(cfg, f"read project {found[0].id} ({title!r})"):
        project = ls.projects.get(id=found[0].id)
    return {"project_id": project.id, "title": title, "url": f"{cfg.url.rstrip('/')}/projects/{project.id}",
            "n_tasks": project.task_number or 0, "n_labeled": project.num_tasks_with_annotations or 0,
            "n_annotations": project.total_annotations_number or 0,
            "n_skipped": project.skipped_annotations_number or 0,
            "n_predictions": project.total_predictions_number or 0}


def connect_local_files(cfg: LabelStudioConfig, project_id: int, directory: str) -> None:
    """Allow the project to show files under ``directory`` (an absolute path inside Label
    Studio's LOCAL_FILES_DOCUMENT_ROOT) through its local-files URLs. Idempotent."""
    ls = client(cfg)
    with _calling(cfg, f"list local storages of project {project_id}"):
        storages = ls.import_storage.local.list(project=project_id)
    if any(s.path == directory for s in storages):
        return
    with _calling(cfg, f"connect local files {directory} to project {project_id} "
                       "(is LOCAL_FILES_SERVING_ENABLED=true and the folder under LOCAL_FILES_DOCUMENT_ROOT?)"):
        ls.import_storage.local.create(project=project_id, path=directory, title="dlvm images",
                                       use_blob_urls=True, description="images of dlvm's DVC workspace")


def local_files_url(path_under_root: str) -> str:
    """Label Studio's URL for a file served from its local-files document root."""
    return "/data/local-files/?d=" + quote(path_under_root.lstrip("/"), safe="/")


# ----------------------------------------------------------------------------- tasks


def iter_tasks(cfg: LabelStudioConfig, project_id: int, *, fields: str = "all", query: dict | None = None,
               doing: str = "list tasks") -> Iterator[dict]:
    """Tasks of a project as plain dicts, fetched page by page (``page_size`` per request)."""
    ls = client(cfg)
    kwargs = {"project": project_id, "fields": fields, "page_size": cfg.page_size}
    if query is not None:
        kwargs["query"] = json.dumps(query)
    with _calling(cfg, f"{doing} of project {project_id}"):
        for task in ls.tasks.list(**kwargs):
            yield task.model_dump(mode="json")


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass
class SyncResult:
    imported: int
    already_present: int
    renewed_urls: int
    task_ids: dict[str, int]  # sha256 -> task id, every image of the manifest
    # Every task of the project after the sync, by id: the listing the sync made, with the
    # imported tasks and renewed URLs in it, so a round lists the project once.
    tasks: dict[int, dict]


def sync_tasks(cfg: LabelStudioConfig, project_id: int, images: list[dict], image_url: Callable[[dict], tuple[str, float | None]],
               renew_before_s: float = 86400.0, progress: Callable[[int, int], None] | None = None) -> SyncResult:
    """Import one task per manifest image not yet in the project (keyed by ``sha256``).

    ``image_url(record) -> (url, expires_at or None)``. Tasks whose URL expires within
    ``renew_before_s`` get a fresh one. Tasks of images no longer in ``images`` are kept
    (their annotations are history), and reported by the snapshot when annotated."""
    existing: dict[str, dict] = {}
    listed: dict[int, dict] = {}
    for task in iter_tasks(cfg, project_id, fields="all", doing="list existing tasks"):
        listed[task["id"]] = task
        sha = task["data"].get("dlvm_sha256")
        if sha:
            existing.setdefault(sha, task)
    new = [rec for rec in images if rec["sha256"] not in existing]
    ls = client(cfg)
    task_ids = {sha: t["id"] for sha, t in existing.items()}
    done = 0
    for batch in _batches(new, cfg.batch_size):
        payload = []
        for rec in batch:
            url, expires = image_url(rec)
            data = {TO_NAME: url, "dlvm_path": rec["path"], "dlvm_sha256": rec["sha256"]}
            if expires is not None:
                data["dlvm_url_expires"] = int(expires)
            payload.append({"data": data})
        with _calling(cfg, f"import {len(batch)} tasks into project {project_id}"):
            response = ls.projects.import_tasks(id=project_id, request=payload, return_task_ids=True)
        ids = list(response.task_ids or [])
        if len(ids) != len(batch):
            raise LabelStudioError(f"Label Studio at {cfg.url} imported {len(ids)} of {len(batch)} tasks "
                                   f"into project {project_id}: rerun the sync (already imported images are skipped)")
        task_ids.update({rec["sha256"]: tid for rec, tid in zip(batch, ids)})
        listed.update({tid: {"id": tid, "data": item["data"], "annotations": [], "total_annotations": 0,
                             "predictions": []} for item, tid in zip(payload, ids)})
        done += len(batch)
        if progress:
            progress(done, len(new))
    renewed = 0
    deadline = time.time() + renew_before_s
    wanted = {rec["sha256"]: rec for rec in images}
    for sha, task in existing.items():
        expires = task["data"].get("dlvm_url_expires")
        if expires is None or sha not in wanted or float(expires) > deadline:
            continue
        url, new_expiry = image_url(wanted[sha])
        data = dict(task["data"], **{TO_NAME: url})
        if new_expiry is not None:
            data["dlvm_url_expires"] = int(new_expiry)
        update_task_data(cfg, task["id"], data)
        task["data"] = data
        renewed += 1
    return SyncResult(imported=len(new), already_present=len(images) - len(new), renewed_urls=renewed,
                      task_ids={rec["sha256"]: task_ids[rec["sha256"]] for rec in images if rec["sha256"] in task_ids},
                      tasks=listed)


def tasks_after_pull(synced: SyncResult, changed: list[dict]) -> list[dict]:
    """The project's tasks as the sync listed them, with the tasks the pull re-read since
    (fresh annotations, or annotations deleted) in their place: no second listing."""
    return list({**synced.tasks, **{task["id"]: task for task in changed}}.values())


def update_task_data(cfg: LabelStudioConfig, task_id: int, data: dict) -> None:
    with _calling(cfg, f"update task {task_id}"):
        client(cfg).tasks.update(id=task_id, data=data)


# ----------------------------------------------------------------------------- pull


def changed_tasks(cfg: LabelStudioConfig, project_id: int, since: str | None,
                  watch_unlabeled: set[str] | None = None) -> list[dict]:
    """Annotated tasks changed after ``since`` (ISO time; None = all annotated tasks),
    oldest first, with all their annotations.

    Pre-annotations touch tasks too, so unannotated tasks are not fetched in full; only
    those whose ``data.dlvm_path`` is in ``watch_unlabeled`` (images labeled before: their
    annotations were deleted or skipped since) are returned, so their labels are dropped.
    Everything is fetched before anything is returned: a failure part-way yields nothing."""
    def query(annotated: bool) -> dict:
        items = [{"filter": "filter:tasks:total_annotations", "operator": "greater" if annotated else "equal",
                  "type": "Number", "value": 0}]
        if since:
            items.append({"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
                          "value": since})
        return {"ordering": ["tasks:updated_at"], "filters": {"conjunction": "and", "items": items}}

    tasks = list(iter_tasks(cfg, project_id, fields="all", query=query(True), doing="export annotated tasks"))
    if since and watch_unlabeled:
        for task in iter_tasks(cfg, project_id, fields="all", query=query(False), doing="export unlabeled tasks"):
            if task["data"].get("dlvm_path") in watch_unlabeled:
                tasks.append(task)
    return _with_annotator_emails(cfg, tasks)


def _with_annotator_emails(cfg: LabelStudioConfig, tasks: list[dict]) -> list[dict]:
    """The task list gives annotators as user ids: name them by email, as exports do."""
    ids = {a.get("completed_by") for t in tasks for a in t.get("annotations") or []
           if isinstance(a.get("completed_by"), int)}
    if not ids:
        return tasks
    with _calling(cfg, "list users to name annotators"):
        emails = {u.id: u.email for u in client(cfg).users.list()}
    for task in tasks:
        for ann in task.get("annotations") or []:
            who = ann.get("completed_by")
            if isinstance(who, int):
                ann["completed_by"] = {"id": who, "email": emails.get(who, "")}
    return tasks


# ----------------------------------------------------------------------------- predictions and queue


def prediction_result(prediction: dict) -> list[dict]:
    """The Label Studio ``result`` of one prediction: a classifier's ``label`` as a choice, or a
    detector's ``boxes`` (``label``, ``score``, and ``x``, ``y``, ``width``, ``height`` in
    percent of the image) as rectangles, each with its own score; an empty list of boxes is
    the prediction "no defect here"."""
    if "boxes" in prediction:
        return [{"id": f"dlvm{i}", "from_name": FROM_NAME, "to_name": TO_NAME, "type": "rectanglelabels",
                 "score": float(b["score"]),
                 "value": {"x": float(b["x"]), "y": float(b["y"]), "width": float(b["width"]),
                           "height": float(b["height"]), "rotation": 0, "rectanglelabels": [b["label"]]}}
                for i, b in enumerate(prediction["boxes"])]
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
             "value": {"choices": [prediction["label"]]}}]


def post_predictions(cfg: LabelStudioConfig, project_id: int, predictions: list[dict], model_version: str,
                     progress: Callable[[int, int], None] | None = None) -> int:
    """Import ``[{task, score, label or boxes}]`` (:func:`prediction_result`) as pre-annotations
    of ``model_version`` and make the project show that version. Returns how many were posted."""
    ls = client(cfg)
    rows = [{"task": int(p["task"]), "model_version": model_version, "score": float(p["score"]),
             "result": prediction_result(p)} for p in predictions]
    done = 0
    for batch in _batches(rows, cfg.batch_size):
        with _calling(cfg, f"import {len(batch)} predictions into project {project_id}"):
            ls.projects.import_predictions(id=project_id, request=batch)
        done += len(batch)
        if progress:
            progress(done, len(rows))
    with _calling(cfg, f"set model version {model_version!r} on project {project_id}"):
        ls.projects.update(id=project_id, model_version=model_version, show_collab_predictions=True)
    return done


def set_queue(cfg: LabelStudioConfig, project_id: int, ranked_task_ids: list[int], tasks_by_id: dict[int, dict]) -> int:
    """Rank ``ranked_task_ids`` 1, 2, ... in ``data.dlvm_queue`` and clear the rank of
    tasks that left the queue; ensure the ``dlvm queue`` tab. Returns tasks updated."""
    wanted = {tid: rank for rank, tid in enumerate(ranked_task_ids, start=1)}
    updated = 0
    for tid, task in tasks_by_id.items():
        data = task["data"]
        current = data.get(QUEUE_FIELD)
        rank = wanted.get(tid)
        if current == rank or (rank is None and current is None):
            continue
        if rank is None and (task.get("total_annotations") or task.get("annotations")):
            # The tab hides labeled tasks anyway; touching them would make the next pull re-read them.
            continue
        new = {k: v for k, v in data.items() if k != QUEUE_FIELD}
        if rank is not None:
            new[QUEUE_FIELD] = rank
        update_task_data(cfg, tid, new)
        task["data"] = new
        updated += 1
    ensure_queue_tab(cfg, project_id)
    return updated


def ensure_queue_tab(cfg: LabelStudioConfig, project_id: int) -> None:
    """A Data Manager tab listing the queued, still unlabeled tasks, most informative first."""
    ls = client(cfg)
    data = {"title": QUEUE_TAB, **QUEUE_QUERY}
    with _calling(cfg, f"list Data Manager tabs of project {project_id}"):
        views = ls.views.list(project=project_id)
    if any((v.data or {}).get("title") == QUEUE_TAB for v in views):
        return
    with _calling(cfg, f"create the {QUEUE_TAB!r} tab in project {project_id}"):
        ls.views.create(project=project_id, data=data)


def queue_order(cfg: LabelStudioConfig, project_id: int) -> list[dict]:
    """The unlabeled queued tasks in the order labelers see them in the ``dlvm queue`` tab."""
    return list(iter_tasks(cfg, project_id, fields="all", query=QUEUE_QUERY, doing="read the labeling queue"))


# ----------------------------------------------------------------------------- webhook


def ensure_webhook(cfg: LabelStudioConfig, project_id: int, url: str, secret: str) -> None:
    """Label Studio calls ``url`` on annotation events, with the shared secret in a header."""
    ls = client(cfg)
    with _calling(cfg, f"list webhooks of project {project_id}"):
        hooks = ls.webhooks.list(project=project_id)
    headers = {SECRET_HEADER: secret}
    actions = ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
    for hook in hooks:
        if hook.url == url:
            if (hook.headers or {}) != headers:
                with _calling(cfg, f"update webhook {hook.id}"):
                    ls.webhooks.update(id=hook.id, url=url, headers=headers, actions=actions,
                                       send_for_all_actions=False, send_payload=True, is_active=True)
            return
    with _calling(cfg, f"register webhook {url} on project {project_id}"):
        ls.webhooks.create(url=url, project=project_id, headers=headers, actions=actions,
                           send_for_all_actions=False, send_payload=True, is_active=True)
