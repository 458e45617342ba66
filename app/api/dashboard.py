"""The ops dashboard: server-rendered pages over the same registry queries as the API.
Panels that ask other services (Prefect flow runs, Label Studio progress) load from the
API in the browser, so a slow service never holds up the page."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.templating import Jinja2Templates

from app.api.auth import bearer, check_read
from app.api.deps import Name, alert_rules, settings_dep
from components.registry import monitoring, queries, usage, views
from components.registry.db import read_session
from components.settings import Settings

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["tojson_pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True, default=str)
templates.env.filters["megabytes"] = lambda n: f"{(n or 0) / 1e6:,.1f} MB"


def _metric(metrics: dict[str, Any] | None, name: str = "accuracy") -> str:
    value = (metrics or {}).get(name)
    if isinstance(value, dict) and "value" in value:
        ci = f" [{value['ci_low']:.3f}, {value['ci_high']:.3f}]" if "ci_low" in value else ""
        return f"{value['value']:.3f}{ci}"
    return "-" if value is None else str(value)


templates.env.filters["metric"] = _metric


def _page(request: Request, template: str, settings: Settings,
          credentials: Optional[HTTPAuthorizationCredentials], context_of) -> HTMLResponse:
    try:
        check_read(settings, request, credentials)
    except HTTPException as exc:
        return templates.TemplateResponse(request, "login.html", {"detail": exc.detail}, status_code=exc.status_code)
    with read_session(settings) as session:
        try:
            context = context_of(session)
        except queries.NotFound as exc:
            return templates.TemplateResponse(request, "not_found.html", {"detail": str(exc)}, status_code=404)
    return templates.TemplateResponse(request, template, {**context, "alerts_count": len(context.get("alerts", []))})


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, settings: Settings = Depends(settings_dep),
             credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
    def context(session):
        return {"models": views.list_models(session), "datasets": views.list_datasets(session),
                "alerts": monitoring.alerts(session, alert_rules(settings)),
                "promotions": monitoring.recent_promotions(session, 10),
                "runs": monitoring.recent_runs(session, 10)}
    return _page(request, "overview.html", settings, credentials, context)


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(name: Name, request: Request, settings: Settings = Depends(settings_dep),
               credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
    def context(session):
        detail = views.model_detail(session, name)
        versions = {v["version"]: v for v in detail["versions"]}
        shown = detail["aliases"].get(monitoring.PRODUCTION) or (detail["versions"][0]["version"]
                                                                if detail["versions"] else None)
        evaluation_id = monitoring.model_evaluation_id(session, name)
        datasets = sorted({v["dataset"]["name"] for v in detail["versions"] if v["dataset"]})
        return {
            "model": detail,
            "production": versions.get(detail["aliases"].get(monitoring.PRODUCTION)),
            "staging": versions.get(detail["aliases"].get(monitoring.STAGING)),
            "lineage_version": shown,
            "lineage": monitoring.lineage(session, name, shown) if shown else [],
            "evaluation": views.evaluation_detail(session, evaluation_id) if evaluation_id else None,
            "datasets": [monitoring.dataset_history(session, d) for d in datasets],
            "alerts": [a for a in monitoring.alerts(session, alert_rules(settings))
                       if a["model"] in (None, name)],
            "samples": usage.newest_samples(session, name),
            "examples": usage.newest_example_drawing(session, name),
            "sequential": any((v["params"] or {}).get("family") == "sequential" for v in detail["versions"]),
            **_usage_context(session, settings, name, detail["kind"]),
        }
    return _page(request, "model.html", settings, credentials, context)


def _usage_context(session, settings: Settings, name: str, kind: str) -> dict[str, Any]:
    """The model page's prediction batches (models that predict) and model card (classifiers only)."""
    if kind in ("anomaly", "detector"):
        return {"batches": usage.prediction_batches(session, name, limit=10), "card_html": None, "card_error": None}
    if kind != "classifier" or not views.model_detail(session, name)["versions"]:
        return {"batches": [], "card_html": None, "card_error": None}
    from markdown_it import MarkdownIt

    from components.inference.card import model_card
    from components.storage import ArtifactError, open_store
    try:
        card = model_card(session, name, open_store(settings).get_bytes)
        card_html, card_error = MarkdownIt("commonmark", {"html": False}).enable("table").render(card), None
    except (ArtifactError, ValueError) as exc:  # the page still shows everything else
        card_html, card_error = None, str(exc)
    return {"batches": usage.prediction_batches(session, name, limit=10), "card_html": card_html,
            "card_error": card_error}
