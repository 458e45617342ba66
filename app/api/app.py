"""The registry API: thin routes over ``components.registry`` queries, with token-checked
writes (promote runs the same statistical gate as ``dlvm promote``; rollback is recorded
as a promotion event). ``create_app`` also mounts the dashboard pages."""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import anyio
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlmodel import Session

from app.api import schemas
from app.api.cache import ResponseCache
from app.api.dashboard import router as dashboard_router
from app.api.deps import (
    AliasQuery,
    Id,
    Limit,
    Name,
    ReadAccess,
    Version,
    Writer,
    alert_rules,
)
from app.api.guards import RequestGuard, validation_problem
from components.registry import monitoring, queries, usage, views
from components.registry.db import current_revision, read_session, session_scope
from components.registry.promotion import PromotionError, rollback
from components.registry.tables import ModelVersion
from components.settings import Settings, get_settings
from components.storage import ArtifactError, open_store

THREADS = 4  # worker threads per process for the (synchronous) registry routes
# Calls that wait on other services (Prefect, Label Studio, a promotion's gate) get threads
# of their own, so that a slow service never holds up registry reads.
SLOW_CALLS = anyio.CapacityLimiter(8)
NOT_FOUND = {404: {"model": schemas.Problem, "description": "no such model, version, dataset or evaluation"}}
UNAUTHORIZED = {401: {"model": schemas.Problem, "description": "missing or refused token"},
                403: {"model": schemas.Problem, "description": "writes are disabled (no DLVM_API_TOKEN)"}}



def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Reads take a millisecond or two of Python each: more threads than cores only
        # queue them on the GIL in each other's way, which shows as tail latency.
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        yield

    app = FastAPI(title="dlvm registry", version="1", lifespan=lifespan, description=(
        "Models, versions, aliases, lineage, evaluations, promotions, datasets and label snapshots "
        "of a dlvm registry. Writes (promote, rollback) need `Authorization: Bearer <DLVM_API_TOKEN>`; "
        "reads need DLVM_API_READ_TOKEN when the server sets one."))
    app.state.settings = settings
    app.state.cache = ResponseCache()
    from components.inference.serving import (
        ServedModels,  # torch loads on the first prediction, not here
    )
    app.state.served_models = ServedModels(settings)

    @app.exception_handler(queries.NotFound)
    async def not_found(_request: Request, exc: queries.NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    app.add_middleware(RequestGuard)
    app.add_exception_handler(RequestValidationError, validation_problem)

    @app.exception_handler(PromotionError)
    async def refused(_request: Request, exc: PromotionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    app.include_router(_api_routes())
    app.include_router(dashboard_router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return app


def _api_routes():
    from fastapi import APIRouter

    api = APIRouter(prefix="/api", responses={
        401: {"model": schemas.Problem, "description": "a token is needed, or the one sent was refused"}})

    @api.get("/health", response_model=schemas.Health, tags=["ops"])
    def health(reads: ReadAccess):
        return reads.value(_health, reads.settings.database_url)

    @api.get("/models", response_model=list[schemas.ModelSummary], tags=["models"])
    def models(reads: ReadAccess):
        return reads.json(list[schemas.ModelSummary], views.list_models)

    @api.get("/models/{name}", response_model=schemas.ModelDetail, responses=NOT_FOUND, tags=["models"])
    def model(name: Name, reads: ReadAccess):
        return reads.json(schemas.ModelDetail, views.model_detail, name)

    @api.get("/models/{name}/versions/{version}", response_model=schemas.ModelVersionOut, responses=NOT_FOUND,
             tags=["models"])
    def model_version(name: Name, version: Version, reads: ReadAccess):
        return reads.json(schemas.ModelVersionOut, _version_detail, name, version)

    @api.get("/models/{name}/versions/{version}/lineage", response_model=list[schemas.LineageNode],
             responses=NOT_FOUND, tags=["models"])
    def model_lineage(name: Name, version: Version, reads: ReadAccess):
        return reads.json(list[schemas.LineageNode], monitoring.lineage, name, version)

    @api.get("/models/{name}/evaluation", response_model=schemas.EvaluationDetail, responses=NOT_FOUND,
             tags=["models"])
    def model_evaluation(name: Name, reads: ReadAccess):
        """The evaluation behind the model's latest promotion decision (see monitoring.model_evaluation_id)."""
        return reads.json(schemas.EvaluationDetail, _model_evaluation, name)

    @api.get("/models/{name}/promotions", response_model=list[schemas.PromotionOut], responses=NOT_FOUND,
             tags=["promotions"])
    def model_promotions(name: Name, reads: ReadAccess, limit: Limit = 50):
        return reads.json(list[schemas.PromotionOut], monitoring.recent_promotions, limit, name)

    @api.post("/models/{name}/promote", response_model=schemas.PromotionDecision,
              responses={**NOT_FOUND, **UNAUTHORIZED, 409: {"model": schemas.Problem}}, tags=["promotions"])
    async def promote(name: Name, body: schemas.PromoteRequest, settings: Writer):
        """Gate version `version` for `alias` exactly like `dlvm promote` (paired bootstrap against
        the current holder and the evaluation's baselines); the decision is recorded either way."""
        return await anyio.to_thread.run_sync(_promote, settings, name, body, limiter=SLOW_CALLS)

    @api.post("/models/{name}/rollback", response_model=schemas.PromotionDecision,
              responses={**NOT_FOUND, **UNAUTHORIZED, 409: {"model": schemas.Problem}}, tags=["promotions"])
    def roll_back(name: Name, body: schemas.RollbackRequest, settings: Writer):
        """Point the alias back at the version it held before its last promotion (recorded as a
        'rollback' promotion event, like `dlvm promote --rollback`)."""
        with session_scope(settings) as session:
            event = rollback(session, name, body.alias, actor=body.actor, reason=body.reason)
            version = session.get(ModelVersion, event.new_version_id).version
        return {"model": name, "alias": body.alias, "decision": event.decision, "event_id": event.id,
                "version": version}

    @api.get("/promotions", response_model=list[schemas.PromotionOut], tags=["promotions"])
    def promotions(reads: ReadAccess, limit: Limit = 50):
        return reads.json(list[schemas.PromotionOut], monitoring.recent_promotions, limit)

    @api.get("/datasets", response_model=list[schemas.DatasetSummary], tags=["data"])
    def datasets(reads: ReadAccess):
        return reads.json(list[schemas.DatasetSummary], views.list_datasets)

    @api.get("/datasets/{name}", response_model=schemas.DatasetHistory, responses=NOT_FOUND, tags=["data"])
    def dataset(name: Name, reads: ReadAccess):
        return reads.json(schemas.DatasetHistory, monitoring.dataset_history, name)

    @api.get("/datasets/{name}/labeling", response_model=schemas.LabelingProgress, responses=NOT_FOUND,
             tags=["data"])
    async def labeling(name: Name, reads: ReadAccess):
        """Progress of the dataset's Label Studio project (asked live; not configured = says so)."""
        await anyio.to_thread.run_sync(reads.value, queries.get_dataset, name)  # 404 for an unknown dataset
        return await anyio.to_thread.run_sync(labeling_progress, reads.settings, name, limiter=SLOW_CALLS)

    @api.get("/label-snapshots/{snapshot_id}", response_model=schemas.LabelSnapshotOut, responses=NOT_FOUND,
             tags=["data"])
    def label_snapshot(snapshot_id: Id, reads: ReadAccess):
        return reads.json(schemas.LabelSnapshotOut, _snapshot_detail, snapshot_id)

    @api.get("/evaluations", response_model=list[schemas.EvaluationSummary], tags=["evaluations"])
    def evaluations(reads: ReadAccess, limit: Limit = 50):
        return reads.json(list[schemas.EvaluationSummary], views.list_evaluations, limit)

    @api.get("/evaluations/{evaluation_id}", response_model=schemas.EvaluationDetail, responses=NOT_FOUND,
             tags=["evaluations"])
    def evaluation(evaluation_id: Id, reads: ReadAccess):
        return reads.json(schemas.EvaluationDetail, views.evaluation_detail, evaluation_id)

    @api.get("/evaluations/{evaluation_id}/plot", response_class=Response, responses={
        **NOT_FOUND, 200: {"content": {"image/png": {}}, "description": "the label-efficiency curves"}},
        tags=["evaluations"])
    def evaluation_plot(evaluation_id: Id, reads: ReadAccess):
        e = reads.value(queries.get_evaluation, evaluation_id)
        if not e.plot_uri:
            raise queries.NotFound(f"evaluation {evaluation_id} has no plot")
        try:
            png = open_store(reads.settings).get_bytes(e.plot_uri, e.plot_sha256)
        except ArtifactError as exc:
            raise HTTPException(502, f"the artifact store could not give the plot: {exc}") from exc
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600, immutable"})

    @api.get("/models/{name}/versions/{version}/samples", response_class=Response, responses={
        **NOT_FOUND, 502: {"model": schemas.Problem, "description": "the artifact store could not give the grid"},
        200: {"content": {"image/png": {}}, "description": "the newest grid of samples drawn from this version"}},
        tags=["models"])
    def model_samples(name: Name, version: Version, reads: ReadAccess):
        """The newest grid of images `dlvm generate` drew from this version of a sequential backbone."""
        grid = reads.value(_samples_of, name, version)
        try:
            png = open_store(reads.settings).get_bytes(grid["artifact_uri"], grid["sha256"])
        except ArtifactError as exc:
            raise HTTPException(502, f"the artifact store could not give the samples: {exc}") from exc
        # A later `dlvm generate` replaces what this URL shows: revalidate, by the grid's hash.
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "no-cache", "ETag": f'"{grid["sha256"]}"'})

    @api.get("/models/{name}/versions/{version}/examples", response_class=Response, responses={
        **NOT_FOUND, 502: {"model": schemas.Problem, "description": "the artifact store could not give the drawing"},
        200: {"content": {"image/png": {}}, "description": "test images with a detector's boxes or an anomaly "
                                                           "model's heat maps"}},
        tags=["models"])
    def model_examples(name: Name, version: Version, reads: ReadAccess):
        """The drawing of test examples made when this detector (true and found boxes) or anomaly
        model (heat-map overlays) version was evaluated."""
        drawing = reads.value(usage.example_drawing, name, version)
        try:
            png = open_store(reads.settings).get_bytes(drawing["uri"], drawing["sha256"])
        except ArtifactError as exc:
            raise HTTPException(502, f"the artifact store could not give the drawing: {exc}") from exc
        # A version's evaluation drawing never changes: the URL can be kept.
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600, immutable"})

    @api.get("/runs", response_model=list[schemas.RunOut], tags=["ops"])
    def runs(reads: ReadAccess, limit: Limit = 50,
             status: Annotated[Optional[str], Query(pattern="^(running|completed|failed)$")] = None):
        return reads.json(list[schemas.RunOut], monitoring.recent_runs, limit, status)

    @api.get("/flow-runs", response_model=schemas.FlowRuns, tags=["ops"])
    async def flow_runs(reads: ReadAccess, limit: Limit = 20):
        """Prefect's newest flow runs (asked live); an unreachable Prefect is reported in `error`."""
        return await anyio.to_thread.run_sync(recent_flow_runs, reads.settings, limit, limiter=SLOW_CALLS)

    # --- using a model: predictions and the model card (issue 17) ---------------------

    @api.post("/models/{name}/predict", response_model=schemas.Prediction, response_model_exclude_none=True,
              response_model_by_alias=True, tags=["predict"],
              responses={**NOT_FOUND, 409: {"model": schemas.Problem,
                                            "description": "the model is of a kind that does not predict"},
                         413: {"model": schemas.Problem, "description": "the body is larger than DLVM_PREDICT_MAX_BYTES"},
                         422: {"model": schemas.Problem, "description": "the body is not an image dlvm can read"},
                         502: {"model": schemas.Problem, "description": "the model's checkpoint could not be read"}},
              openapi_extra={"requestBody": {"required": True, "description": "one encoded image (PNG, JPEG, TIFF, BMP)",
                                             "content": {"application/octet-stream": {"schema": {
                                                 "type": "string", "format": "binary"}}}}})
    async def predict(name: Name, request: Request, reads: ReadAccess, alias: AliasQuery = "production",
                      version: Annotated[Optional[int], Query(ge=1, le=2**31 - 1, description=(
                          "a version number instead of the alias (anomaly models and detectors have no "
                          "aliases)"))] = None,
                      min_score: Annotated[Optional[float], Query(ge=0, lt=1, description=(
                          "detector: the score a box needs to be reported (default: the one its evaluation "
                          "used)"))] = None):
        """Predict one image with the model `alias` (or `version`) points at (loaded once, reloaded
        only when the alias moves), by its kind: a classifier's class, its probability and every
        class's; an anomaly model's score and decision at its threshold; a detector's boxes."""
        body = await _bounded_body(request, reads.settings.predict_max_bytes)
        served = request.app.state.served_models
        return await anyio.to_thread.run_sync(_predict_one, served, name, alias, body, version, min_score)

    @api.get("/models/{name}/card", response_class=Response, tags=["models"], responses={
        **NOT_FOUND, 422: {"model": schemas.Problem, "description": "not a classifier, or a bad version"},
        200: {"content": {"text/markdown": {}}, "description": "the model card, markdown"}})
    def model_card(name: Name, reads: ReadAccess,
                   version: Annotated[Optional[int], Query(ge=1, le=2**31 - 1)] = None):
        """The model card of `version` (default: production, else the latest), from the registry only."""
        return Response(_card(reads.settings, name, version), media_type="text/markdown; charset=utf-8")

    @api.get("/alerts", response_model=list[schemas.Alert], tags=["ops"])
    def alerts(reads: ReadAccess):
        rules = alert_rules(reads.settings)
        # Staleness moves with the clock: a cached answer lives one minute at most.
        return reads.json(list[schemas.Alert], monitoring.alerts, rules, key=(int(time.time() // 60),))

    return api


def _promote(settings: Settings, name: str, body: schemas.PromoteRequest) -> dict:
    with read_session(settings) as session:
        queries.get_model_version(session, name, body.version)  # 404 before any work
    from flows.promote import promote_flow
    try:
        out = promote_flow(f"{name}:{body.version}", alias=body.alias, evaluation_id=body.evaluation_id,
                           margin=body.margin, actor=body.actor, reason=body.reason, metric=body.metric)
    except (PromotionError, queries.NotFound):
        raise
    except ValueError as exc:  # e.g. the evaluation used another test split
        raise HTTPException(409, str(exc)) from exc
    return {"model": out["model"], "alias": out["alias"], "decision": out["decision"],
            "event_id": out["event_id"], "version": out["version"], "gate": out["gate"]}


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes
    (from Content-Length before reading, or while streaming a chunked body)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the image is {int(declared):,} bytes; this server accepts at most {limit:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the image is larger than {limit:,} bytes, the most this server accepts")
    if not body:
        raise HTTPException(422, "empty body: send one encoded image as the request body")
    return bytes(body)


def _predict_one(served, name: str, alias: str, body: bytes, version: int | None, min_score: float | None) -> dict:
    from components.inference.inputs import UnreadableImage
    try:
        return served.predict(name, alias, body, version, min_score)
    except UnreadableImage as exc:
        raise HTTPException(422, f"not an image dlvm can read: {exc}") from exc
    except ArtifactError as exc:
        raise HTTPException(502, f"the artifact store could not give the model: {exc}") from exc
    except queries.NotFound:
        raise
    except ValueError as exc:  # e.g. the alias holds a backbone: the kind and what predicts, in one line
        raise HTTPException(409, str(exc)) from exc


def _card(settings: Settings, name: str, version: int | None) -> str:
    from components.inference.card import model_card
    store = open_store(settings)
    with read_session(settings) as session:
        try:
            return model_card(session, f"{name}:{version}" if version else name, store.get_bytes)
        except queries.NotFound:
            raise
        except ArtifactError as exc:
            raise HTTPException(502, f"the artifact store could not give the label snapshot: {exc}") from exc
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc


def _health(session: Session, database_url: str) -> dict:
    session.exec(text("SELECT 1"))
    return {"status": "ok", "database": session.get_bind().dialect.name,
            "schema_revision": current_revision(database_url)}


def _version_detail(session: Session, name: str, version: int) -> dict:
    found = next((v for v in views.model_detail(session, name)["versions"] if v["version"] == version), None)
    if found is None:
        raise queries.NotFound(f"model {name!r} has no version {version}")
    return found


def _samples_of(session: Session, name: str, version: int) -> dict:
    grid = usage.latest_samples(session, queries.get_model_version(session, name, version).id)
    if grid is None:
        raise queries.NotFound(f"samples of {name}:{version} not found: `dlvm generate {name}:{version}` draws them")
    return grid


def _model_evaluation(session: Session, name: str) -> dict:
    evaluation_id = monitoring.model_evaluation_id(session, name)
    if evaluation_id is None:
        raise queries.NotFound(f"model {name!r} has no evaluation yet")
    return views.evaluation_detail(session, evaluation_id)


def _snapshot_detail(session: Session, snapshot_id: int) -> dict:
    return monitoring.snapshot_dict(queries.get_label_snapshot(session, snapshot_id))


# --- reads from the other services (Prefect, Label Studio) -----------------------------


def recent_flow_runs(settings: Settings, limit: int) -> dict[str, Any]:
    """Prefect's newest flow runs with links into its UI; an unreachable Prefect is reported, not raised."""
    from components.orchestration.flow_runs import prefect_ui_url
    from components.orchestration.flow_runs import recent_flow_runs as read_runs

    ui = prefect_ui_url(settings)
    try:
        runs = read_runs(limit)
    except Exception as exc:  # any failure of another service is shown on the page, not a 500
        return {"prefect_ui": ui, "runs": [], "error": f"Prefect could not be read: {type(exc).__name__}: {exc}"}
    return {"prefect_ui": ui, "runs": [dict(r, url=f"{ui}/runs/flow-run/{r['id']}" if ui else None) for r in runs]}


def labeling_progress(settings: Settings, dataset: str) -> dict[str, Any]:
    if not settings.label_studio_url:
        return {"configured": False, "dataset": dataset}
    from components.labeling.label_studio import LabelStudioConfig, LabelStudioError
    from components.labeling.label_studio import labeling_progress as read_progress

    try:
        cfg = LabelStudioConfig(settings.label_studio_url, settings.label_studio_token.get_secret_value(),
                                timeout_s=10)
        return {"configured": True, "dataset": dataset, "project": read_progress(cfg, dataset)}
    except LabelStudioError as exc:
        return {"configured": True, "dataset": dataset, "error": str(exc)}
