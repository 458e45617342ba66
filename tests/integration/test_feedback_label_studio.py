"""The labeling team's loop against a real Label Studio server (installed and started by
components/stack/label_studio.sh) and a real Prefect server: project set-up, task import without
duplicates, images served, pre-annotations, the uncertainty + diversity queue, an
annotation made through the API landing in the next snapshot, the webhook starting a
retrain run (and refusing a wrong secret), and Label Studio down or refusing."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from clirun import (
    deployment_runs,
    dlvm,
    dlvm_env,
    dlvm_in_process,
    serve_until_a_run_completes,
)
from sqlmodel import select

from components.data.access import dataset_images
from components.data.elpv import (
    CLASS_NAMES_4,
    class_name,
    elpv_labels,
    elpv_root,
    export_elpv,
    write_label_studio_export,
)
from components.labeling import label_studio as ls
from components.labeling.feedback import plan_preannotations
from components.labeling.snapshots import from_json_bytes
from components.models.checkpoint import load_checkpoint
from components.registry import queries, refs
from components.registry.db import session_scope
from components.registry.promotion import record_promotion
from components.registry.tables import LabelSnapshot, ModelVersion
from components.settings import Settings
from components.storage import open_store
from components.training.adapt import Classifier, predict_with_features
from flows.adapt import adapt_flow
from flows.feedback import feedback_flow
from flows.ingest import ingest_flow
from flows.labels import labels_flow
from flows.pretrain import pretrain_flow

pytestmark = pytest.mark.label_studio
N_IMAGES, N_FILE_LABELS, QUEUE = 40, 16, 10


def feedback_round(env: dict) -> dict:
    """One `dlvm feedback run --dataset elpv --queue-size QUEUE` round, in this process (the
    command line itself is under test where it refuses a server)."""
    with dlvm_in_process(env):
        return json.loads(json.dumps(feedback_flow("elpv", queue_size=QUEUE), default=str))
TRUTH = {Path(r.path).name: class_name(r.probability) for r in elpv_labels()}


def _snapshot(settings: Settings, snapshot_id: int):
    with session_scope(settings) as session:
        row = session.get(LabelSnapshot, snapshot_id)
    return row, from_json_bytes(open_store(settings).get_bytes(row.artifact_uri, row.sha256))


@pytest.fixture(scope="module")
def loop(tmp_path_factory, prefect_api, label_studio_server):
    """40 ELPV images ingested, 16 labeled by a file export, a classifier trained on them
    and made `production`, then one feedback round against Label Studio."""
    root = tmp_path_factory.mktemp("feedback")
    images_dir, _ = export_elpv(root / "elpv", limit=N_IMAGES, seed=5)
    names = sorted(p.name for p in images_dir.glob("*.png"))
    labels = [TRUTH[n] if i < N_FILE_LABELS else None for i, n in enumerate(names)]
    export = write_label_studio_export(root / "partial.json", [f"images/{n}" for n in names], labels)
    home = root / "state"
    env = dlvm_env(home, PREFECT_API_URL=prefect_api, DLVM_LABEL_STUDIO_URL=label_studio_server.url,
                   DLVM_LABEL_STUDIO_TOKEN=label_studio_server.token, DLVM_RETRAIN_AFTER_LABELS="1000",
                   DLVM_LABEL_STUDIO_FILES_ROOT=str(label_studio_server.document_root))
    with dlvm_in_process(env):  # dlvm ingest, labels, pretrain --recipe tiny, adapt --recipe tiny
        ingest_flow(str(images_dir.parent), "elpv")
        labels_flow(str(export), "elpv", classes=list(CLASS_NAMES_4))
        pretrain_flow("elpv", recipe="tiny")
        adapt_flow("elpv", backbone="elpv-mae", recipe="tiny")
    settings = Settings(home=home, label_studio_url=label_studio_server.url,
                        label_studio_token=label_studio_server.token,
                        label_studio_files_root=label_studio_server.document_root)
    with session_scope(settings) as session:
        classifier = session.exec(select(ModelVersion).where(ModelVersion.parent_id.is_not(None))).one()
        record_promotion(session, model_name="elpv-classifier", alias="production", decision="promoted",
                         candidate_version_id=classifier.id, evidence={"test": "fixture"}, actor="test")
    round1 = feedback_round(env)
    return {"root": root, "env": env, "settings": settings, "cfg": ls.LabelStudioConfig(label_studio_server.url,
            label_studio_server.token), "round1": round1,
            "server": label_studio_server}


def test_project_has_the_dataset_classes_and_setup_is_idempotent(loop):
    cfg, project_id = loop["cfg"], loop["round1"]["project_id"]
    project = ls.client(cfg).projects.get(id=project_id)
    assert project.title == "dlvm: elpv"
    for cls in CLASS_NAMES_4:
        assert f'<Choice value="{cls}"/>' in project.label_config
    again = ls.ensure_project(cfg, "elpv", 1, list(CLASS_NAMES_4))
    assert (again.id, again.created, again.updated) == (project_id, False, False)
    assert [p.id for p in ls.client(cfg).projects.list() if p.title == "dlvm: elpv"] == [project_id]
    # A class added later updates the config in place; a box-labeling project gets rectangles.
    grown = ls.ensure_project(cfg, "elpv", 1, [*CLASS_NAMES_4, "cracked"])
    assert (grown.id, grown.updated) == (project_id, True)
    assert '<Choice value="cracked"/>' in ls.client(cfg).projects.get(id=project_id).label_config
    ls.ensure_project(cfg, "elpv", 1, list(CLASS_NAMES_4))
    boxes = ls.ensure_project(cfg, "elpv-boxes", 1, ["crack", "finger"], kind="localization")
    assert '<RectangleLabels name="label" toName="image">' in ls.client(cfg).projects.get(id=boxes.id).label_config


def test_every_image_is_one_task_and_a_resync_imports_nothing(loop):
    cfg, project_id, settings = loop["cfg"], loop["round1"]["project_id"], loop["settings"]
    assert loop["round1"]["imported"] == N_IMAGES
    tasks = list(ls.iter_tasks(cfg, project_id))
    assert len(tasks) == N_IMAGES and len({t["data"]["dlvm_sha256"] for t in tasks}) == N_IMAGES
    manifest_images = [{"path": t["data"]["dlvm_path"], "sha256": t["data"]["dlvm_sha256"]} for t in tasks]
    again = ls.sync_tasks(cfg, project_id, manifest_images, lambda rec: ("unused", None))
    assert (again.imported, again.already_present) == (0, N_IMAGES)
    assert len(list(ls.iter_tasks(cfg, project_id))) == N_IMAGES


def test_task_images_are_served_by_label_studio(loop):
    cfg, project_id = loop["cfg"], loop["round1"]["project_id"]
    task = next(ls.iter_tasks(cfg, project_id))
    assert task["data"]["image"].startswith("/data/local-files/?d=")
    response = httpx.get(cfg.url + task["data"]["image"], headers={"Authorization": f"Token {cfg.token}"},
                         timeout=30)
    assert response.status_code == 200, response.text[:300]
    assert hashlib.sha256(response.content).hexdigest() == task["data"]["dlvm_sha256"]


def test_predictions_of_the_production_model_are_on_the_tasks(loop):
    cfg, project_id = loop["cfg"], loop["round1"]["project_id"]
    # Every image without a label gets one; the file export's 16 labels count as labels.
    assert loop["round1"]["preannotated"] == N_IMAGES - N_FILE_LABELS
    for task in ls.iter_tasks(cfg, project_id):
        if not task["predictions"]:
            continue
        preds = task["predictions"]
        assert [p["model_version"] for p in preds] == ["elpv-classifier:1"]
        assert 0.25 <= preds[0]["score"] <= 1.0  # max of 4 class probabilities
        assert preds[0]["result"][0]["value"]["choices"][0] in TRUTH.values()
    assert ls.client(cfg).projects.get(id=project_id).model_version == "elpv-classifier:1"


def test_queue_is_ordered_by_uncertainty_and_diversity(loop):
    cfg, project_id, settings = loop["cfg"], loop["round1"]["project_id"], loop["settings"]
    queue = loop["round1"]["queue"]
    assert len(queue) == QUEUE
    assert [t["id"] for t in ls.queue_order(cfg, project_id)] == queue  # what the 'dlvm queue' tab shows
    views = ls.client(cfg).views.list(project=project_id)
    assert [v.data["title"] for v in views if v.data.get("title") == ls.QUEUE_TAB] == [ls.QUEUE_TAB]
    # Recompute the queue from the production model's outputs: same order.
    with session_scope(settings) as session:
        version = refs.resolve_dataset_version(session, "elpv", None)
        model_version = queries.get_alias_version(session, "elpv-classifier", "production")
    checkpoint = load_checkpoint(open_store(settings).get_bytes(model_version.artifact_uri, model_version.sha256))
    classifier = Classifier.from_state(checkpoint["classifier"])
    manifest, images = dataset_images(settings, "elpv", version, classifier.vit_cfg.img_size, progress=False)
    probs, features = predict_with_features(classifier, images)
    sha_index = {rec["sha256"]: i for i, rec in enumerate(manifest["images"])}
    with session_scope(settings) as session:
        snapshot_row = queries.latest_label_snapshot(session, version.id)
    _, snapshot = _snapshot(settings, snapshot_row.id)
    labeled = {it["sha256"] for it in snapshot.items}
    tasks = list(ls.iter_tasks(cfg, project_id))
    plan = plan_preannotations(tasks, sha_index, probs, features, checkpoint["classes"], "x", QUEUE,
                               labeled_shas=labeled)
    assert plan.queue == queue
    # Already labeled images (the file export's) never enter the queue.
    sha_of = {t["id"]: t["data"]["dlvm_sha256"] for t in tasks}
    assert not {sha_of[t] for t in queue} & labeled
    assert len(plan.predictions) == N_IMAGES - len(labeled)


def test_annotations_made_through_the_api_land_in_the_next_snapshot(loop):
    cfg, project_id, settings, env = loop["cfg"], loop["round1"]["project_id"], loop["settings"], loop["env"]
    sdk = ls.client(cfg)
    queued = [sdk.tasks.get(id=tid) for tid in loop["round1"]["queue"][:3]]
    first, second, disputed = queued
    name = lambda task: Path(task.data["dlvm_path"]).name  # noqa: E731

    def annotate(task, label):
        sdk.annotations.create(id=task.id, result=[{"from_name": "label", "to_name": "image", "type": "choices",
                                                    "value": {"choices": [label]}}])

    annotate(first, TRUTH[name(first)])
    annotate(second, TRUTH[name(second)])
    annotate(disputed, "functional")
    annotate(disputed, "defective")
    round2 = feedback_round(env)
    assert round2["changed_tasks"] == 3 and round2["snapshot_created"]
    _, snap = _snapshot(settings, round2["snapshot_id"])
    items = {Path(it["path"]).name: it for it in snap.items}
    for task in (first, second):
        assert items[name(task)]["label"] == TRUTH[name(task)]
        assert items[name(task)]["annotator"] == "admin@dlvm.local" and items[name(task)]["created_at"]
    assert name(disputed) not in items
    assert any(i["kind"] == "conflict" and i["image"].endswith(name(disputed)) for i in snap.issues)
    # The file export's labels are kept: the project simply had none for those images.
    assert len(snap.items) == len({*list(items)}) >= N_FILE_LABELS
    assert not {first.id, second.id, disputed.id} & set(round2["queue"])
    assert round2["preannotated"] == 0  # every unlabeled task already has this model's prediction

    # Nothing changed since: the pull reads nothing and registers nothing new.
    round3 = feedback_round(env)
    assert round3["changed_tasks"] == 0 and not round3["snapshot_created"]
    assert round3["snapshot_id"] == round2["snapshot_id"]


def test_dashboard_labeling_progress_comes_from_the_project(loop):
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    progress = TestClient(create_app(loop["settings"])).get("/api/datasets/elpv/labeling").json()
    project = progress["project"]
    assert progress["configured"] and progress["error"] is None
    assert project["project_id"] == loop["round1"]["project_id"] and project["title"] == "dlvm: elpv"
    # 40 tasks; the previous test annotated 3 of them (one twice, in conflict).
    assert (project["n_tasks"], project["n_labeled"], project["n_annotations"]) == (N_IMAGES, 3, 4)
    assert project["n_predictions"] >= N_IMAGES - N_FILE_LABELS
    refused = loop["settings"].model_copy(update={"label_studio_token": loop["settings"].label_studio_token.__class__("bad")})
    progress = TestClient(create_app(refused)).get("/api/datasets/elpv/labeling").json()
    assert progress["project"] is None and "refused the token" in progress["error"]


def test_label_studio_down_fails_clearly_and_registers_nothing(loop, tmp_path):
    from components.stack.services import free_port

    settings, env = loop["settings"], loop["env"]
    with session_scope(settings) as session:
        before = len(session.exec(select(LabelSnapshot)).all())
    # The round's Label Studio calls are retried twice, as always, but 0.2 s apart instead of 2 and 5 s.
    env = dict(env, DLVM_LABEL_STUDIO_RETRY_DELAYS="0.2,0.2")
    down = dict(env, DLVM_LABEL_STUDIO_URL=f"http://127.0.0.1:{free_port()}")
    out = dlvm(down, "feedback", "run", "--dataset", "elpv", check=False, timeout=300)
    assert out.returncode == 1
    assert "is unreachable" in out.stdout and "Label Studio at http://127.0.0.1:" in out.stdout
    refused = dict(env, DLVM_LABEL_STUDIO_TOKEN="0" * 40)
    out = dlvm(refused, "feedback", "run", "--dataset", "elpv", check=False, timeout=300)
    assert out.returncode == 1 and "refused the token (HTTP 401)" in out.stdout
    with session_scope(settings) as session:
        assert len(session.exec(select(LabelSnapshot)).all()) == before


def test_webhook_from_label_studio_starts_the_retrain_deployment(loop, prefect_api, tmp_path):
    """Label Studio -> webhook receiver (secret checked) -> a retrain flow run in Prefect."""
    import uvicorn
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.labeling.webhook import RetrainTrigger, create_app
    from components.orchestration.triggers import start_deployment
    from components.stack.services import free_port
    from flows.retrain import retrain_flow

    cfg, project_id = loop["cfg"], loop["round1"]["project_id"]
    secret = "s3cret-for-tests"
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        deployment_id = retrain_flow.to_deployment(name="webhook-test", parameters={"dataset": "elpv"}).apply()
        trigger = RetrainTrigger(tmp_path / "trigger.json", threshold=2,
                                 start=start_deployment("retrain/webhook-test", {"dataset": "elpv"}, prefect_api),
                                 min_interval_s=0)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(secret, trigger), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            while not server.started:
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port}/webhooks/label-studio"
            wrong = httpx.post(url, json={"action": "ANNOTATION_CREATED", "annotation": {"id": 1}},
                               headers={"X-Dlvm-Webhook-Secret": "nope"})
            assert wrong.status_code == 401 and "wrong or missing" in wrong.text
            assert httpx.post(url, json={"action": "ANNOTATION_CREATED"}).status_code == 401
            assert json.loads((tmp_path / "trigger.json").read_text() if (tmp_path / "trigger.json").exists()
                              else '{"pending": 0}')["pending"] == 0

            ls.ensure_webhook(cfg, project_id, url, secret)
            ls.ensure_webhook(cfg, project_id, url, secret)  # idempotent
            assert [h.url for h in ls.client(cfg).webhooks.list(project=project_id)] == [url]
            sdk = ls.client(cfg)
            unlabeled = [t for t in ls.iter_tasks(cfg, project_id) if not t["annotations"]][:2]
            for task in unlabeled:
                sdk.annotations.create(id=task["id"], result=[{"from_name": "label", "to_name": "image",
                                       "type": "choices", "value": {"choices": ["functional"]}}])
            deadline = time.monotonic() + 60
            state = {}
            while time.monotonic() < deadline:
                state = json.loads((tmp_path / "trigger.json").read_text()) if (tmp_path / "trigger.json").exists() else {}
                if state.get("last_run"):
                    break
                time.sleep(0.5)
            assert state.get("last_run"), f"no retrain run started; trigger state {state}"
            assert state["pending"] == 0

            async def read_run():
                async with get_client() as client:
                    return await client.read_flow_run(state["last_run"])
            import asyncio
            run = asyncio.run(read_run())
            assert run.deployment_id == deployment_id and run.parameters == {"dataset": "elpv"}
            assert "label-trigger" in run.tags
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def test_labeling_campaign_benchmark_runs_through_label_studio(label_studio_server, tmp_path):
    """The campaign script end to end on a few images (the measured run is in docs/BENCHMARKS.md)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.labeling_campaign", "--backbone", "scratch",
                           "--pool", "40", "--seeds", "1", "--rounds", "1", "--per-round", "4", "--seed-labels", "8",
                           "--label-studio-url", label_studio_server.url, "--label-studio-token", label_studio_server.token,
                           "--files-root", str(label_studio_server.document_root), "--work-dir", str(tmp_path),
                           "--cache", str(tmp_path / "cache"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    arms = {c["arm"] for c in results["curves"]}
    assert arms == {"random", "uncertainty", "uncertainty+diversity"}
    assert {(c["arm"], c["round"]): c["labels"] for c in results["curves"]} == \
        {(arm, r): 8 + 4 * r for arm in arms for r in (0, 1)}
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in results["curves"])
    assert (out / "curve.png").stat().st_size > 1000 and "| labels |" in (out / "report.md").read_text()


def test_feedback_serve_runs_the_loop_on_its_schedule(loop, prefect_api):
    """`dlvm feedback serve` registers the scheduled `feedback` and the `retrain` deployments;
    a scheduled feedback run completes."""
    _, deployments, done = serve_until_a_run_completes(
        ["feedback", "serve", "--dataset", "elpv", "--interval", "5", "--queue-size", "5"], loop["env"],
        loop["root"] / "serve.log", prefect_api,
        watch=lambda ds: next((d for d in ds if d.name == "elpv" and d.parameters.get("queue_size") == 5), None))
    by_name = {d.name: d for d in deployments}
    assert {"elpv", "retrain"} <= set(by_name)
    assert by_name["elpv"].schedules and by_name["elpv"].parameters["queue_size"] == 5
    assert by_name["retrain"].parameters == {"dataset": "elpv", "recipe": "demo"}  # the scheduled runs' recipe
    assert done[0].parameters["dataset"] == "elpv" and done[0].auto_scheduled
    # Rounds due every 5 s take longer than that: they ran one after another, never side by side.
    ran = sorted((r.start_time, r.end_time) for r in deployment_runs(prefect_api, by_name["elpv"].id) if r.start_time)
    assert all(end is not None and end <= next_start for (_, end), (next_start, _) in zip(ran, ran[1:])), ran


@pytest.mark.s3
def test_presigned_image_urls_come_from_the_s3_artifact_store(s3_server, s3_bucket, tmp_path):
    """DLVM_LABEL_STUDIO_IMAGES=presigned: each image stored once in the artifact store,
    shown through a presigned URL that serves exactly its bytes and expires as configured."""
    from components.labeling.feedback import image_url_function

    images = tmp_path / "images"
    images.mkdir()
    data = (elpv_root() / elpv_labels()[0].path).read_bytes()
    (images / "a.png").write_bytes(data)
    settings = Settings(home=tmp_path / "state", artifacts=f"s3://{s3_bucket}/art", s3_endpoint=s3_server.endpoint,
                        s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key,
                        label_studio_images="presigned", label_studio_url_expiry_s=3600)
    url_of = image_url_function(settings, images)
    record = {"path": "a.png", "sha256": hashlib.sha256(data).hexdigest()}
    before = time.time()
    url, expires = url_of(record)
    assert "X-Amz-Expires=3600" in url and before + 3590 <= expires <= time.time() + 3600
    assert httpx.get(url, timeout=30).content == data
    assert url_of(record)[0] != "" and len(list(s3_server.client().list_objects(s3_bucket, recursive=True))) == 1
    with pytest.raises(ValueError, match="changed on disk"):
        url_of({"path": "a.png", "sha256": "0" * 64})
    with pytest.raises(ValueError, match="needs the S3 artifact store"):
        Settings(home=tmp_path / "s2", label_studio_images="presigned")


def test_expiring_image_urls_are_renewed_by_the_next_sync(label_studio_server):
    cfg = ls.LabelStudioConfig(label_studio_server.url, label_studio_server.token)
    project = ls.ensure_project(cfg, "renewal", 1, ["a", "b"])
    records = [{"path": f"x{i}.png", "sha256": f"{i:064d}"} for i in range(3)]
    soon = lambda rec: (f"http://s3.example/{rec['path']}?v=1", time.time() + 60)  # noqa: E731
    later = lambda rec: (f"http://s3.example/{rec['path']}?v=2", time.time() + 7 * 86400)  # noqa: E731
    first = ls.sync_tasks(cfg, project.id, records, soon)
    assert first.imported == 3
    # The sync's own view of the project (what a round plans with) is what Label Studio lists.
    listed = {t["id"]: t["data"] for t in ls.iter_tasks(cfg, project.id)}
    assert {tid: t["data"] for tid, t in first.tasks.items()} == listed
    renewed = ls.sync_tasks(cfg, project.id, records, later)
    assert (renewed.imported, renewed.renewed_urls) == (0, 3)
    assert {t["data"]["image"].split("?")[1] for t in ls.iter_tasks(cfg, project.id)} == {"v=2"}
    assert {t["data"]["image"].split("?")[1] for t in renewed.tasks.values()} == {"v=2"}
    assert ls.sync_tasks(cfg, project.id, records, later).renewed_urls == 0  # fresh URLs stay


def test_retrain_pulls_the_new_labels_and_gates_a_new_classifier(loop):
    """The flow the webhook and the polling trigger start, run by hand."""
    from components.registry.tables import PromotionEvent

    settings, env, root = loop["settings"], loop["env"], loop["root"]
    dlvm(env, "feedback", "retrain", "--dataset", "elpv", "--recipe", "tiny", "--fractions", "1.0",
         "--summary", str(root / "retrain.json"), timeout=600)
    out = json.loads((root / "retrain.json").read_text())
    assert out["backbone"] == "elpv-mae:1"  # the production classifier's backbone
    assert out["candidate"]["model"] == "elpv-classifier" and out["candidate"]["version"] >= 2
    assert out["promotion"]["decision"] in ("promoted", "rejected")
    with session_scope(settings) as session:
        candidate = session.exec(select(ModelVersion).where(ModelVersion.id == out["candidate"]["model_version_id"])).one()
        latest = queries.latest_label_snapshot(session, candidate.dataset_version_id)
        events = session.exec(select(PromotionEvent).where(PromotionEvent.candidate_version_id == candidate.id)).all()
    # Trained on the newest pull from Label Studio, and the gate's decision is on record.
    assert candidate.label_snapshot_id == latest.id
    _, snap = _snapshot(settings, latest.id)
    assert snap.source.get("project") == loop["round1"]["project_id"]
    assert [e.actor for e in events] == ["retrain"]
