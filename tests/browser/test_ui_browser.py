"""The dashboard in headless Chromium (Debian's `chromium`, driven by Playwright) against the
registry the end-to-end pipeline filled (tests/e2e_demo.py): a new classifier version is
promoted through the API with the token, the pages show it with its curve, evidence,
lineage and Prefect runs, and the rollback button (wrong token refused, right token
accepted) moves production back, as a recorded event. Screenshots are saved under
test-artifacts/ (or $DLVM_TEST_ARTIFACTS)."""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from clirun import dlvm

from components.stack.services import ui_server

pytestmark = pytest.mark.e2e
CHROMIUM = os.environ.get("DLVM_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("DLVM_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
TOKEN = "dashboard-test-token"
MODEL = "elpv-classifier"
# As root in a sandbox without a network: no sandbox, no GPU, none of Chromium's own calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def call(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def ui(demo, tmp_path_factory):
    """`dlvm ui` on the pipeline's registry, with one more classifier version to promote."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium "
                    "(or point DLVM_TEST_CHROMIUM at one)")
    home, env, _ = demo
    dlvm(env, "adapt", "--dataset", "elpv", "--fraction", "0.25", "--recipe", "tiny")
    with ui_server({**env, "DLVM_API_TOKEN": TOKEN}, tmp_path_factory.mktemp("ui") / "ui.log") as server:
        yield server.url


def move_alias_unless_promoted(home, decision: dict, version: int) -> None:
    """The gate decides on the model's quality and no margin lowers its majority-class floor: a
    120-image tiny-recipe model may well be refused. The pages and the rollback checked here do
    not depend on that decision, so a refused version is put under production the way the
    promote flow does (record_promotion), with the refused gate as its evidence."""
    if decision["decision"] == "promoted":
        return
    from sqlmodel import select

    from components.registry.db import session_scope
    from components.registry.promotion import record_promotion
    from components.registry.tables import ModelVersion, RegisteredModel
    from components.settings import Settings

    with session_scope(Settings(home=home)) as session:
        candidate = session.exec(select(ModelVersion).join(RegisteredModel).where(
            RegisteredModel.name == MODEL, ModelVersion.version == version)).one()
        record_promotion(session, model_name=MODEL, alias="production", decision="promoted",
                         candidate_version_id=candidate.id, actor="browser-test", reason="alias mechanics",
                         evidence={"gate": decision["gate"], "test": "alias moved by the test after a refusal"})


@pytest.fixture(scope="module")
def promoted(ui, demo):
    """Gate the newest version through the API; returns (new version, the version it replaced)."""
    status, detail = call(f"{ui}/api/models/{MODEL}")
    assert status == 200, detail
    newest, before = detail["versions"][0]["version"], detail["aliases"].get("production")
    if before is None:  # the demo's gate kept v1 out: put it in, so that a rollback has somewhere to go
        status, decision = call(f"{ui}/api/models/{MODEL}/promote", {"version": 1}, TOKEN)
        assert status == 200, decision
        move_alias_unless_promoted(demo[0], decision, 1)
        before = 1
    assert call(f"{ui}/api/models/{MODEL}/promote", {"version": newest})[0] == 401  # no token, no write
    # A negative margin loosens the comparisons with the generic backbone and the holder only.
    status, decision = call(f"{ui}/api/models/{MODEL}/promote", {"version": newest, "margin": -1,
                                                                 "actor": "browser-test"}, TOKEN)
    assert status == 200, decision
    assert decision["version"] == newest and decision["gate"]["metric"] == "macro_f1"
    assert decision["gate"]["comparisons"]["majority: majority"]["threshold"] == 0.0
    move_alias_unless_promoted(demo[0], decision, newest)
    return newest, before


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_dashboard_shows_production_curve_evidence_lineage_and_runs(ui, promoted, browser):
    newest, before = promoted
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(ui + "/")
    row = page.locator(f'tr[data-model="{MODEL}"]')
    assert row.locator("td.production").inner_text() == f"v{newest}"
    page.click(f'a[href="/models/{MODEL}"]')
    assert page.locator("#production .version").inner_text() == f"v{newest}"
    # The label-efficiency curve is the evaluation's PNG, really loaded by the browser.
    page.wait_for_function("() => { const i = document.querySelector('#curve'); return i && i.complete && i.naturalWidth > 0 }")
    assert page.locator("#curve").evaluate("i => i.naturalWidth") >= 400
    # The promotion just made is the newest event, with its gate evidence.
    event = page.locator("#history tr.promotion").first
    assert "promoted" in event.inner_text() and "browser-test" in event.inner_text()
    event.locator("summary").click()
    assert '"comparisons"' in event.locator("pre").inner_text()
    lineage = page.locator("#lineage").inner_text()
    assert "elpv v1" in lineage and "elpv-mae:1" in lineage and f"{MODEL}:{newest}" in lineage
    # Prefect's runs load in the page (the embedded API here: no UI to link to, says so).
    page.wait_for_selector("#flow-runs table.flow-runs", timeout=180_000)
    runs = page.locator("#flow-runs").inner_text()
    assert "promote" in runs and "Completed" in runs and "Embedded Prefect API" in runs
    page.wait_for_selector(".labeling:has-text('Label Studio is not configured')")
    page.screenshot(path=str(ARTIFACTS / "dashboard-model.png"), full_page=True)
    page.close()


def test_rollback_button_needs_the_token_and_is_recorded(ui, promoted, browser):
    newest, before = promoted
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{ui}/models/{MODEL}")
    page.fill("#rollback-form input[name=token]", "not-the-token")
    page.click("#rollback-button")
    page.wait_for_selector("#rollback-result:has-text('Refused')")
    assert "HTTP 401" in page.locator("#rollback-result").inner_text()
    assert page.locator("#production .version").inner_text() == f"v{newest}"

    page.fill("#rollback-form input[name=token]", TOKEN)
    page.fill("#rollback-form input[name=reason]", "browser test rollback")
    with page.expect_navigation():  # the page reloads after a rollback
        page.click("#rollback-button")
    assert page.locator("#production .version").inner_text() == f"v{before}"
    event = page.locator("#history tr.promotion").first.inner_text()
    assert "rollback" in event and "browser test rollback" in event and "dashboard" in event
    assert re.search(rf"v{newest}\s*→\s*v{before}", event)
    page.screenshot(path=str(ARTIFACTS / "dashboard-after-rollback.png"), full_page=True)
    page.close()
    status, detail = call(f"{ui}/api/models/{MODEL}")
    assert detail["aliases"]["production"] == before and detail["promotions"][0]["actor"] == "dashboard"


def test_dashboard_shows_a_drift_alert_and_the_model_card(ui, promoted, browser, demo, tmp_path):
    """A batch of inverted ELPV cells drifts: the overview and the model page say so, and the
    model page shows the model card."""
    import numpy as np
    from PIL import Image
    home, env, _ = demo
    inverted = tmp_path / "inverted"
    inverted.mkdir()
    for path in sorted((home / "demo" / "elpv" / "images").iterdir())[:40]:
        with Image.open(path) as img:
            Image.fromarray(255 - np.asarray(img.convert("L"))).save(inverted / path.name)
    dlvm(env, "predict", str(inverted), "--model", MODEL)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(ui + "/")
    assert "drift" in page.locator('#alerts li[data-kind="drift"]').first.inner_text()
    page.goto(ui + f"/models/{MODEL}")
    assert "differs from the training data" in page.locator('#alerts li[data-kind="drift"]').inner_text()
    assert "alert" in page.locator("#predictions tr.drift").first.inner_text()
    card = page.locator("#model-card .card-body")
    assert f"Model card: {MODEL}:" in card.locator("h1").inner_text() and card.locator("table").count() >= 3
    page.screenshot(path=str(ARTIFACTS / "dashboard-drift.png"), full_page=True)
    page.close()



def test_a_sequential_backbone_page_shows_its_generated_samples(browser, tmp_path):
    """The model page of a sequential backbone shows the newest grid `dlvm generate` drew, really
    loaded by the browser from the API, with its Fréchet distances (a small registry of its own,
    not the pipeline's: no sequential backbone is trained here)."""
    import io

    from clirun import dlvm_env
    from generated_samples import FRECHET, SEQUENTIAL, register_sequential_samples
    from PIL import Image

    from benchmarks.registry_api import fill_registry
    from components.settings import Settings

    home = tmp_path / "state"
    fill_registry(Settings(home=home))
    png = register_sequential_samples(Settings(home=home))
    with ui_server(dlvm_env(home), tmp_path / "ui.log") as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server.url + f"/models/{SEQUENTIAL}")
        page.wait_for_function("() => { const i = document.querySelector('#samples-grid'); "
                               "return i && i.complete && i.naturalWidth > 0 }")
        assert page.locator("#samples-grid").evaluate("i => [i.naturalWidth, i.naturalHeight]") == list(
            Image.open(io.BytesIO(png)).size)
        table = page.locator("#samples table.frechet").inner_text()
        assert all(f"{v:.3f}" in table for v in FRECHET.values()) and "shuffled tokens (baseline)" in table
        page.screenshot(path=str(ARTIFACTS / "dashboard-samples.png"), full_page=True)
        page.close()


def test_detector_and_anomaly_pages_show_their_example_drawings(browser, tmp_path):
    """The model page of a detector shows its evaluation's box drawing, and an anomaly model's
    its heat maps, really loaded by the browser from the API (a small registry of its own)."""
    import io

    from clirun import dlvm_env
    from example_drawings import ANOMALY, DETECTOR, register_example_drawings
    from PIL import Image

    from benchmarks.registry_api import fill_registry
    from components.settings import Settings

    home = tmp_path / "state"
    fill_registry(Settings(home=home))
    pngs = register_example_drawings(Settings(home=home))
    with ui_server(dlvm_env(home), tmp_path / "ui.log") as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for name in (DETECTOR, ANOMALY):
            page.goto(server.url + f"/models/{name}")
            page.wait_for_function("() => { const i = document.querySelector('#examples-image'); "
                                   "return i && i.complete && i.naturalWidth > 0 }")
            assert page.locator("#examples-image").evaluate("i => [i.naturalWidth, i.naturalHeight]") == list(
                Image.open(io.BytesIO(pngs[name])).size)
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)
        page.close()
