"""The registry API of `dlvm ui` on a filled SQLite registry: reads, 404s, 422s, token-checked
writes (rollback, promote), read protection, alerts, lineage, the response cache staying
exact across writes, a schemathesis run over the OpenAPI spec, and the dashboard pages'
server-rendered content (the browser tests drive them in Chromium)."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
import schemathesis
from example_drawings import ANOMALY, DETECTOR, register_example_drawings
from fastapi.testclient import TestClient
from generated_samples import FRECHET, SEQUENTIAL, register_sequential_samples
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from sqlmodel import SQLModel, select

from app.api.app import create_app, recent_flow_runs
from benchmarks.registry_api import fill_registry
from components.registry import db, monitoring, queries, writes
from components.registry.db import session_scope
from components.registry.promotion import record_promotion
from components.registry.tables import Run, utcnow
from components.settings import Settings

TOKEN = "write-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "elpv-classifier"


_PLOTS: dict[str, bytes] = {}  # PNG bytes by plot_curves' arguments


@pytest.fixture(autouse=True)
def plots_drawn_once(monkeypatch):
    """Each registry below is filled with the same two label-efficiency plots: matplotlib draws
    each once for the file (about 0.3 s a plot, 81 registries) and every registry stores those
    same bytes, as it would after drawing them again. Nothing here tests the drawing
    (tests/unit/test_evaluation.py does)."""
    from components.evaluation import report

    draw = report.plot_curves

    def plot_curves(rows, *args, **kwargs) -> bytes:
        key = json.dumps([rows, args, kwargs], sort_keys=True, default=str)
        if key not in _PLOTS:
            _PLOTS[key] = draw(rows, *args, **kwargs)
        return _PLOTS[key]

    monkeypatch.setattr(report, "plot_curves", plot_curves)


def _filled(request, tmp_path, backend: str) -> Settings:
    url = ""
    if backend == "postgres":
        url = request.getfixturevalue("postgres_database")
        db.upgrade(url)
        with db.engine_for(url).begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {', '.join(SQLModel.metadata.tables)} RESTART IDENTITY CASCADE")
    settings = Settings(home=tmp_path / "state", api_token=TOKEN, database_url=url)
    fill_registry(settings)
    return settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry(request, tmp_path) -> Settings:
    """A filled registry (benchmarks/registry_api.py:fill_registry) on each backend."""
    return _filled(request, tmp_path, request.param)


@pytest.fixture
def sqlite_registry(request, tmp_path) -> Settings:
    return _filled(request, tmp_path, "sqlite")


@pytest.fixture
def client(registry) -> TestClient:
    return TestClient(create_app(registry))


def production(client) -> int:
    return client.get(f"/api/models/{MODEL}").json()["aliases"]["production"]


def test_models_list_and_detail(client):
    listing = {m["name"]: m for m in client.get("/api/models").json()}
    assert set(listing) == {MODEL, f"{MODEL}-1", f"{MODEL}-2", "elpv-mae", "generic-mae"}
    # v1..v6 promoted except v5 (rejected): production is v6, staging v1.
    assert listing[MODEL]["aliases"] == {"production": 6, "staging": 1}
    assert listing[MODEL]["n_versions"] == 6 and listing["generic-mae"]["aliases"] == {"baseline": 1}
    detail = client.get(f"/api/models/{MODEL}").json()
    assert [v["version"] for v in detail["versions"]] == [6, 5, 4, 3, 2, 1]
    assert detail["versions"][0]["parent"] == "elpv-mae:1" and detail["versions"][0]["aliases"] == ["production"]
    assert [p["decision"] for p in detail["promotions"]][:2] == ["promoted", "rejected"]
    version = client.get(f"/api/models/{MODEL}/versions/3").json()
    assert version["version"] == 3 and version["metrics"]["accuracy"]["value"] == pytest.approx(0.69)


def test_lineage_runs_from_dataset_through_labels_and_backbones(client):
    nodes = client.get(f"/api/models/{MODEL}/versions/6/lineage").json()
    # The backbone learned from images only; labels join at the classifier.
    assert [n["ref"] for n in nodes] == ["generic v1", "generic-mae:1", "elpv v1", "elpv-mae:1", "labels v1",
                                         f"{MODEL}:6"]
    assert nodes[2]["n_images"] == 2624 and nodes[4]["n_labeled"] == 2624


def test_datasets_snapshots_evaluations_and_the_plot(client):
    datasets = {d["name"]: d for d in client.get("/api/datasets").json()}
    assert datasets["elpv"]["n_versions"] == 2 and datasets["elpv"]["n_images"] == 2 * 2624
    history = client.get("/api/datasets/elpv").json()
    assert [v["version"] for v in history["versions"]] == [2, 1]
    assert history["versions"][1]["label_snapshots"][0]["n_labeled"] == 2624
    snapshot_id = history["versions"][1]["label_snapshots"][0]["id"]
    assert client.get(f"/api/label-snapshots/{snapshot_id}").json()["classes"][0] == "functional"
    evaluation = client.get(f"/api/models/{MODEL}/evaluation").json()
    assert evaluation["id"] == 2 and evaluation["summary"]["reference"] == "generic-mae:1"
    assert len(client.get("/api/evaluations").json()) == 2
    plot = client.get(f"/api/evaluations/{evaluation['id']}/plot")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content.startswith(b"\x89PNG")


def test_the_sample_grid_of_a_sequential_backbone_is_served_and_shown(registry):
    png = register_sequential_samples(registry)
    client = TestClient(create_app(registry))
    grid = client.get(f"/api/models/{SEQUENTIAL}/versions/1/samples")
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert grid.content == png  # the artifact's bytes, verified against its sha256 by the store
    missing = client.get(f"/api/models/{SEQUENTIAL}/versions/2/samples")  # v2 has none
    assert missing.status_code == 404 and f"dlvm generate {SEQUENTIAL}:2" in missing.json()["detail"]
    assert client.get(f"/api/models/{SEQUENTIAL}/versions/3/samples").status_code == 404
    page = client.get(f"/models/{SEQUENTIAL}").text
    assert f'<img id="samples-grid" src="/api/models/{SEQUENTIAL}/versions/1/samples"' in page  # the newest grid
    assert all(f"{v:.3f}" in page for v in FRECHET.values()) and "40 images of elpv v1" in page
    assert 'id="samples"' not in client.get(f"/models/{MODEL}").text  # a classifier has no samples section


def test_example_drawings_of_a_detector_and_an_anomaly_model_are_served_and_shown(registry):
    pngs = register_example_drawings(registry)
    client = TestClient(create_app(registry))
    for name in (DETECTOR, ANOMALY):
        drawing = client.get(f"/api/models/{name}/versions/1/examples")
        assert drawing.status_code == 200 and drawing.headers["content-type"] == "image/png"
        assert drawing.content == pngs[name]  # the stored drawing, verified against its sha256 by the store
    missing = client.get(f"/api/models/{DETECTOR}/versions/2/examples")  # v2 has none
    assert missing.status_code == 404 and "dlvm adapt --task detection|anomaly" in missing.json()["detail"]
    page = client.get(f"/models/{DETECTOR}").text  # the newest version with a drawing
    assert f'<img id="examples-image" src="/api/models/{DETECTOR}/versions/1/examples"' in page
    assert "Boxes on test images" in page and f"dlvm predict FOLDER --model {DETECTOR}:2" in page  # no aliases
    assert "Heat maps on test images" in client.get(f"/models/{ANOMALY}").text


def test_prediction_refuses_a_kind_that_does_not_predict_naming_it(client):
    png = b"\x89PNG\r\n\x1a\n"  # refused on the model's kind, before the body is looked at
    refused = client.post("/api/models/elpv-mae/predict?version=1", content=png)
    assert refused.status_code == 409
    assert refused.json()["detail"] == ("elpv-mae:1 is a backbone: prediction takes a classifier, an anomaly "
                                        "model or a detector")
    missing = client.get(f"/api/models/{MODEL}/versions/1/examples")  # a classifier has no example drawing
    assert missing.status_code == 404 and "this is a classifier" in missing.json()["detail"]
    assert 'id="examples"' not in client.get(f"/models/{MODEL}").text


@pytest.mark.parametrize("path", [
    "/api/models/no-such-model", f"/api/models/{MODEL}/versions/99", f"/api/models/{MODEL}/versions/99/lineage",
    "/api/models/no-such-model/evaluation", "/api/models/no-such-model/promotions", "/api/datasets/nope",
    "/api/datasets/nope/labeling", "/api/label-snapshots/999", "/api/evaluations/999", "/api/evaluations/999/plot",
    f"/api/models/{MODEL}/versions/99/samples", f"/api/models/{MODEL}/versions/1/samples",
    f"/api/models/{MODEL}/versions/1/examples", f"/api/models/{MODEL}/versions/99/examples",
])
def test_unknown_ids_give_404_naming_them(client, path):
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert "not found" in response.json()["detail"] or "no version" in response.json()["detail"]


def test_unknown_model_in_a_write_gives_404(client):
    response = client.post("/api/models/no-such-model/rollback", json={}, headers=AUTH)
    assert response.status_code == 404 and "no-such-model" in response.json()["detail"]
    response = client.post(f"/api/models/{MODEL}/promote", json={"version": 42}, headers=AUTH)
    assert response.status_code == 404 and "no version 42" in response.json()["detail"]


@pytest.mark.parametrize("path, body", [
    (f"/api/models/{MODEL}/rollback", {"alias": 5}),
    (f"/api/models/{MODEL}/rollback", {"alias": "production", "unexpected": True}),
    (f"/api/models/{MODEL}/rollback", {"alias": "no spaces allowed"}),
    (f"/api/models/{MODEL}/promote", {}),
    (f"/api/models/{MODEL}/promote", {"version": 0}),
    (f"/api/models/{MODEL}/promote", {"version": "three"}),
    (f"/api/models/{MODEL}/promote", {"version": 2, "margin": 7}),
    (f"/api/models/{MODEL}/promote", [1, 2]),
])
def test_malformed_bodies_give_422_and_change_nothing(client, registry, path, body):
    before = production(client)
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]  # names the offending field
    assert production(client) == before


def test_malformed_paths_and_queries_give_422(client):
    assert client.get(f"/api/models/{MODEL}/versions/abc").status_code == 422
    assert client.get("/api/runs?status=exploded").status_code == 422
    assert client.get("/api/promotions?limit=0").status_code == 422
    assert client.post(f"/api/models/{MODEL}/rollback", content=b"{not json", headers={
        **AUTH, "Content-Type": "application/json"}).status_code == 422


def test_writes_need_the_token(client, registry):
    n_events = len(client.get("/api/promotions?limit=500").json())
    missing = client.post(f"/api/models/{MODEL}/rollback", json={})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["detail"]
    wrong = client.post(f"/api/models/{MODEL}/rollback", json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "the token was refused"
    promote = client.post(f"/api/models/{MODEL}/promote", json={"version": 2})
    assert promote.status_code == 401
    assert production(client) == 6 and len(client.get("/api/promotions?limit=500").json()) == n_events


def test_writes_are_disabled_without_a_server_token(registry):
    client = TestClient(create_app(registry.model_copy(update={"api_token": registry.api_token.__class__("")})))
    response = client.post(f"/api/models/{MODEL}/rollback", json={}, headers=AUTH)
    assert response.status_code == 403 and "DLVM_API_TOKEN" in response.json()["detail"]


def test_rollback_with_the_token_is_a_recorded_promotion_event(client):
    assert production(client) == 6
    response = client.post(f"/api/models/{MODEL}/rollback", json={"reason": "bad on line 3", "actor": "ops"},
                           headers=AUTH)
    assert response.status_code == 200, response.text
    # v6 replaced v4 (v5 was rejected and never held production).
    assert response.json()["decision"] == "rollback" and response.json()["version"] == 4
    assert production(client) == 4  # the cached model detail follows the write at once
    event = client.get(f"/api/models/{MODEL}/promotions?limit=1").json()[0]
    assert (event["decision"], event["actor"], event["reason"]) == ("rollback", "ops", "bad on line 3")
    assert event["evidence"]["from_version"] == 6 and event["evidence"]["to_version"] == 4
    # staging has no earlier holder: nothing to roll back is a 409 that says so.
    refused = client.post(f"/api/models/{MODEL}/rollback", json={"alias": "staging"}, headers=AUTH)
    assert refused.status_code == 409 and "nothing to roll back" in refused.json()["detail"]


def test_cached_reads_see_writes_from_other_processes(client, registry):
    assert client.get("/api/models").json()[1]["n_versions"] == 6
    with session_scope(registry) as session:  # as a flow in another process would
        writes.add_model_version(session, MODEL, artifact_uri="file:///c/new", sha256="9" * 64)
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models[MODEL]["n_versions"] == 7 and models[MODEL]["latest_version"] == 7
    with session_scope(registry) as session:
        run = session.exec(select(Run).where(Run.status == "completed")).first()
        started = writes.start_run(session, "evaluate")
    assert client.get("/api/runs?status=running").json()[0]["id"] == started.id
    with session_scope(registry) as session:
        writes.finish_run(session, started.id, status="failed", error="disk full")
    assert client.get("/api/runs?status=running").json() == []
    assert run is not None


def test_alerts_name_failed_runs_staleness_and_metric_drops(client, registry):
    kinds = {a["kind"]: a for a in client.get("/api/alerts").json()}
    assert set(kinds) == {"failed_run", "stale_production"}
    assert "CUDA out of memory" in kinds["failed_run"]["message"]
    assert "dataset version v2 (it used v1)" in kinds["stale_production"]["message"]
    client.post(f"/api/models/{MODEL}/rollback", json={}, headers=AUTH)  # v4: 0.70 after v6's 0.72
    drops = [a for a in client.get("/api/alerts").json() if a["kind"] == "metric_drop"]
    assert drops == []  # a 0.02 drop is at the default threshold's edge: not raised below it
    with session_scope(registry) as session:
        rows = monitoring.alerts(session, monitoring.AlertRules(metric_drop=0.015))
        stale = monitoring.alerts(session, monitoring.AlertRules(stale_after_days=1),
                                  now=utcnow() + timedelta(days=3))
    drop = next(a for a in rows if a["kind"] == "metric_drop")
    assert drop["model"] == MODEL and "v6 (0.720)" in drop["message"] and "0.700" in drop["message"]
    assert any(a["kind"] == "stale_production" and "days ago" in a["message"] for a in stale)
    # A production model trained on the newest data goes stale when new labels arrive.
    with session_scope(registry) as session:
        newest = queries.latest_dataset_version(session, "elpv")
        first = writes.add_label_snapshot(session, newest.id, content_hash="v2-labels-1", classes=["a", "b"],
                                           n_labeled=10, source="ls", artifact_uri="file:///l/21", sha256="5" * 64)
        writes.get_or_create_model(session, "fresh", "classifier")
        mv = writes.add_model_version(session, "fresh", dataset_version_id=newest.id, label_snapshot_id=first.id,
                                       artifact_uri="file:///c/fresh", sha256="6" * 64)
        record_promotion(session, model_name="fresh", alias="production", decision="promoted",
                         candidate_version_id=mv.id, evidence={}, actor="test")
    assert not [a for a in client.get("/api/alerts").json() if a["model"] == "fresh"]
    with session_scope(registry) as session:
        writes.add_label_snapshot(session, newest.id, content_hash="v2-labels-2", classes=["a", "b"],
                                   n_labeled=30, source="ls", artifact_uri="file:///l/22", sha256="7" * 64)
    fresh = [a for a in client.get("/api/alerts").json() if a["model"] == "fresh"]
    assert [a["kind"] for a in fresh] == ["stale_production"]
    assert "label snapshot v2 (30 labels; it used v1)" in fresh[0]["message"]


def test_open_reads_still_refuse_a_wrong_token(client):
    assert client.get("/api/models").status_code == 200
    assert client.get("/api/models", headers=AUTH).status_code == 200
    assert client.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_reads_can_be_protected_by_a_token(registry):
    protected = registry.model_copy(update={"api_read_token": registry.api_token.__class__("reader-token")})
    client = TestClient(create_app(protected))
    assert client.get("/api/models").status_code == 401
    assert client.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/models", headers={"Authorization": "Bearer reader-token"}).status_code == 200
    assert client.get("/api/models", headers=AUTH).status_code == 200  # the write token reads too
    page = client.get(f"/models/{MODEL}")
    assert page.status_code == 401 and "Token needed" in page.text and "elpv-classifier:6" not in page.text
    client.cookies.set("dlvm_token", "reader-token")
    assert client.get(f"/models/{MODEL}").status_code == 200


def test_labeling_progress_says_when_label_studio_is_not_configured(client):
    assert client.get("/api/datasets/elpv/labeling").json() == {
        "configured": False, "dataset": "elpv", "project": None, "error": None}


def test_flow_runs_report_an_unreachable_prefect_instead_of_failing(sqlite_registry):
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_TO_API_ENABLED,
        temporary_settings,
    )

    # Nothing listens on port 9; no log shipping there either.
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_LOGGING_TO_API_ENABLED: False}):
        body = recent_flow_runs(sqlite_registry, 5)
    assert body["runs"] == [] and body["error"].startswith("Prefect could not be read: ConnectError")
    assert body["prefect_ui"] == "http://127.0.0.1:9"


def test_flow_runs_link_into_the_prefect_ui(sqlite_registry, prefect_api):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow(name="dashboard-link-check")
    def tiny() -> int:
        return 1

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        state = tiny(return_state=True)
        body = recent_flow_runs(sqlite_registry, 50)
    run = next(r for r in body["runs"] if r["id"] == str(state.state_details.flow_run_id))
    assert body.get("error") is None and run["flow"] == "dashboard-link-check" and run["state"] == "Completed"
    ui = prefect_api.removesuffix("/api")
    assert body["prefect_ui"] == ui and run["url"] == f"{ui}/runs/flow-run/{run['id']}"
    configured = sqlite_registry.model_copy(update={"prefect_ui_url": "https://prefect.example.org/"})
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        assert recent_flow_runs(configured, 1)["prefect_ui"] == "https://prefect.example.org"


def test_dashboard_pages_render_the_registry(client):
    overview = client.get("/")
    assert overview.status_code == 200 and 'href="/models/elpv-classifier"' in overview.text
    assert "CUDA out of memory" in overview.text  # the failed-run alert
    page = client.get(f"/models/{MODEL}").text
    assert '<p class="version">v6</p>' in page and '<p class="version">v1</p>' in page  # production, staging
    assert 'src="/api/evaluations/2/plot"' in page and "generic-mae:1" in page
    assert page.count('class="promotion ') == 7  # 6 production decisions + the staging one
    assert "elpv v1" in page and "labels v1" in page  # lineage
    missing = client.get("/models/nope")
    assert missing.status_code == 404 and "not found" in missing.text


# --- schemathesis over the OpenAPI spec ----------------------------------------------


def test_openapi_spec_holds_and_no_server_errors(sqlite_registry):
    """Every operation, fuzzed from the spec: no 5xx, responses match their schemas,
    undocumented status codes and malformed-input acceptance are failures too. (The
    routes are the same on PostgreSQL, where the tests above run too.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(sqlite_registry))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 24  # + predict and the model card (issue 17), a backbone's samples (issue 18),
    # the example drawings of detectors and anomaly models (issue 19)
    for operation in operations:
        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=25, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))
        def check(case):
            # Rollbacks are fuzzed with the token (bodies, names, aliases). Promote is fuzzed
            # without it: with it, a valid body runs the real gate, which needs real
            # artifacts; tests/browser/test_ui_browser.py promotes through the API on the pipeline's registry.
            if operation.method.upper() == "POST" and operation.path.endswith("/rollback"):
                case.headers = {**(case.headers or {}), **AUTH}
            case.call_and_validate()

        check()
