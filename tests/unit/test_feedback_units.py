"""The feedback loop's decisions without a server: uncertainty, the diverse queue,
incremental snapshot merges, labeling configs, webhook payloads and the debounced trigger."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from components.labeling.feedback import new_label_count, plan_preannotations
from components.labeling.label_studio import (
    LabelStudioConfig,
    LabelStudioError,
    SyncResult,
    label_config,
    local_files_url,
    tasks_after_pull,
)
from components.labeling.queue import select_queue, uncertainty
from components.labeling.snapshots import build_label_snapshot, merge_snapshot
from components.labeling.webhook import RetrainTrigger, create_app, labels_in_event


def test_uncertainty_kinds_rank_a_coin_flip_above_a_sure_call():
    probs = np.array([[0.98, 0.01, 0.01], [0.5, 0.49, 0.01], [1 / 3, 1 / 3, 1 / 3]])
    for kind in ("least_confidence", "margin", "entropy"):
        u = uncertainty(probs, kind)
        assert u[0] < u[1] and u[0] < u[2] and np.all((u >= 0) & (u <= 1 + 1e-9)), kind
    assert uncertainty(probs, "margin")[1] == pytest.approx(0.99)
    assert uncertainty(probs, "entropy")[2] == pytest.approx(1.0)
    assert uncertainty(probs, "least_confidence")[2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown uncertainty 'bald'"):
        uncertainty(probs, "bald")
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        uncertainty(np.ones(3), "margin")


def _pool(seed: int = 0):
    """Two tight clusters of near-duplicates, all uncertain, plus confident singletons."""
    rng = np.random.default_rng(seed)
    a = np.array([1.0, 0, 0, 0]) + rng.normal(0, 1e-3, (10, 4))
    b = np.array([0, 1.0, 0, 0]) + rng.normal(0, 1e-3, (10, 4))
    c = np.eye(4)[2:] + rng.normal(0, 1e-3, (2, 4))
    feats = np.vstack([a, b, c]).astype(np.float32)
    probs = np.vstack([np.tile([0.52, 0.48], (10, 1)), np.tile([0.55, 0.45], (10, 1)), np.tile([0.9, 0.1], (2, 1))])
    return probs, feats


def test_plain_uncertainty_order_fills_the_queue_with_near_duplicates():
    probs, feats = _pool()
    queue = select_queue(probs, feats, 4, diversity=False)
    assert queue == [0, 1, 2, 3]  # all from cluster a


def test_diverse_queue_takes_one_per_cluster_before_repeating():
    probs, feats = _pool()
    queue = select_queue(probs, feats, 4, pool_factor=6)
    assert queue[0] == 0  # the most uncertain image leads
    assert queue[1] in range(10, 20)  # then the other cluster, not a duplicate of the first
    assert {q // 10 for q in queue[:2]} == {0, 1}
    assert len(set(queue)) == 4


def test_labeled_images_push_the_queue_elsewhere():
    probs, feats = _pool()
    queue = select_queue(probs, feats, 2, labeled_features=feats[:1], pool_factor=6)
    assert all(q >= 10 for q in queue[:1])  # cluster a is already labeled


def test_queue_edge_cases():
    probs, feats = _pool()
    assert select_queue(probs, feats, 0) == []
    assert sorted(select_queue(probs[:3], feats[:3], 10)) == [0, 1, 2]
    with pytest.raises(ValueError, match="feature rows"):
        select_queue(probs, feats[:3], 2)
    # Exact duplicates only: the queue still fills, by uncertainty.
    same = np.ones((5, 4), np.float32)
    assert len(select_queue(np.tile([0.5, 0.5], (5, 1)), same, 5)) == 5


def _task(tid, path, labels, sha=None, who=7, updated="2026-01-01T00:00:00Z"):
    return {"id": tid, "updated_at": updated, "data": {"dlvm_path": path, "dlvm_sha256": sha or f"sha-{path}"},
            "annotations": [{"id": tid * 10 + i, "completed_by": {"id": who, "email": "ann@x.org"},
                             "created_at": "2026-01-01T00:00:00Z",
                             "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                         "value": {"choices": [lab]}}]} for i, lab in enumerate(labels)]}


MANIFEST = {"content_hash": "m", "images": [{"path": f"img{i}.png", "sha256": f"sha-img{i}.png"} for i in range(6)]}


def test_merge_replaces_only_the_images_the_pull_touched():
    base = build_label_snapshot([_task(1, "img0.png", ["a"]), _task(2, "img1.png", ["b"])], MANIFEST, ["a", "b"],
                                image_key="dlvm_path")
    pulled = merge_snapshot(base, [_task(2, "img1.png", ["a"]), _task(3, "img2.png", ["b"])], MANIFEST, ["a", "b"],
                            image_key="dlvm_path", source={"cursor": "t1"}, origin="ls#1")
    labels = {it["path"]: it["label"] for it in pulled.items}
    assert labels == {"img0.png": "a", "img1.png": "a", "img2.png": "b"}
    assert [it.get("origin") for it in pulled.items] == [None, "ls#1", "ls#1"]
    assert pulled.source == {"cursor": "t1"} and pulled.n_tasks == 2
    # An annotation deleted (task now without annotations) removes the label; a conflict flags it.
    again = merge_snapshot(pulled, [{**_task(2, "img1.png", []), "annotations": []}, _task(3, "img2.png", ["a", "b"])],
                           MANIFEST, ["a", "b"], image_key="dlvm_path")
    assert {it["path"] for it in again.items} == {"img0.png"}
    assert [(i["image"], i["kind"]) for i in again.issues] == [("img2.png", "conflict")]
    # Nothing changed: same content hash as before (the registry then keeps the old snapshot).
    assert merge_snapshot(pulled, [], MANIFEST, ["a", "b"], image_key="dlvm_path").content_hash == pulled.content_hash


def test_plan_preannotations_posts_once_per_model_version_and_skips_labeled_tasks():
    probs, feats = _pool()
    tasks = [_task(100 + i, f"img{i}.png", [], sha=f"s{i}") for i in range(len(probs))]
    for t in tasks:
        t["annotations"], t["total_annotations"], t["predictions"] = [], 0, []
    tasks[0]["total_annotations"] = 1
    tasks[1]["predictions"] = [{"model_version": "m:1"}]
    sha_index = {f"s{i}": i for i in range(len(probs))}
    plan = plan_preannotations(tasks, sha_index, probs, feats, ["a", "b"], "m:1", queue_size=3)
    posted = {p["task"] for p in plan.predictions}
    assert 100 not in posted and 101 not in posted and len(posted) == len(tasks) - 2
    assert all(p["label"] == "a" and 0.5 <= p["score"] <= 1 for p in plan.predictions)
    assert len(plan.queue) == 3 and 100 not in plan.queue and set(plan.uncertainty) == set(plan.queue)


def test_tasks_after_pull_puts_the_re_read_tasks_in_place_of_the_sync_listing():
    listed = {i: {"id": i, "data": {"dlvm_sha256": f"s{i}"}, "annotations": [], "total_annotations": 0} for i in range(4)}
    synced = SyncResult(imported=0, already_present=4, renewed_urls=0, task_ids={}, tasks=listed)
    labeled = {"id": 2, "data": {"dlvm_sha256": "s2"}, "annotations": [{"id": 9}], "total_annotations": 1}
    tasks = tasks_after_pull(synced, [labeled])
    assert [t["id"] for t in tasks] == [0, 1, 2, 3]
    assert tasks[2] is labeled and tasks[1] is listed[1]
    probs, feats = _pool()
    plan = plan_preannotations(tasks, {f"s{i}": i for i in range(4)}, probs, feats, ["a", "b"], "m:1", queue_size=4)
    assert 2 not in plan.queue and 2 not in {p["task"] for p in plan.predictions}


def test_new_label_count():
    trained = [{"path": "a", "label": "x"}, {"path": "b", "label": "y"}]
    current = [{"path": "a", "label": "x"}, {"path": "b", "label": "x"}, {"path": "c", "label": "y"}]
    assert new_label_count(current, trained) == 2 and new_label_count(current, None) == 3


def test_label_configs():
    xml = label_config(["ok", 'cra"ck'])
    assert '<Choices name="label" toName="image" choice="single"' in xml and 'value="cra&quot;ck"' in xml
    assert "<RectangleLabels" in label_config(["crack"], "localization")
    for bad, msg in (([], "at least one class"), (["a", "a"], "duplicate"),):
        with pytest.raises(ValueError, match=msg):
            label_config(bad)
    with pytest.raises(ValueError, match="unknown labeling task"):
        label_config(["a"], "segmentation")
    assert local_files_url("/dvc repo/data/x.png") == "/data/local-files/?d=dvc%20repo/data/x.png"


def test_label_studio_config_names_what_is_missing():
    with pytest.raises(LabelStudioError, match="DLVM_LABEL_STUDIO_URL"):
        LabelStudioConfig("", "t")
    with pytest.raises(LabelStudioError, match="DLVM_LABEL_STUDIO_TOKEN"):
        LabelStudioConfig("http://x", "")


def test_labels_in_event():
    assert labels_in_event({"action": "ANNOTATION_CREATED", "annotation": {"id": 1}}) == 1
    assert labels_in_event({"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "was_cancelled": True}}) == 0
    assert labels_in_event({"action": "ANNOTATIONS_CREATED", "annotation": [{"id": 1}, {"id": 2}]}) == 2
    assert labels_in_event({"action": "ANNOTATION_UPDATED", "annotation": {"id": 1}}) == 1
    assert labels_in_event({"action": "PROJECT_UPDATED"}) == 0
    with pytest.raises(ValueError):
        labels_in_event([1, 2])


def test_trigger_starts_once_per_threshold_and_respects_the_interval(tmp_path):
    started = []
    trigger = RetrainTrigger(tmp_path / "t.json", threshold=3, start=lambda: started.append(1) or f"run-{len(started)}",
                             min_interval_s=3600)
    assert not trigger.add(2)["due"]
    state = trigger.add(2)
    assert state["due"] and state["taken"] == 4 and state["pending"] == 0
    assert trigger.start_run(state["taken"]) == "run-1"
    # Within the interval: labels keep counting, no second start.
    assert not trigger.add(5)["due"] and json.loads((tmp_path / "t.json").read_text())["pending"] == 5
    # A restarted receiver reads the count back.
    again = RetrainTrigger(tmp_path / "t.json", threshold=3, start=lambda: "x", min_interval_s=0)
    assert again.add(0)["due"]


def test_a_failed_start_gives_the_labels_back(tmp_path):
    def broken():
        raise RuntimeError("deployment 'retrain/retrain' not found")
    trigger = RetrainTrigger(tmp_path / "t.json", threshold=2, start=broken, min_interval_s=0)
    state = trigger.add(2)
    assert trigger.start_run(state["taken"]) is None
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["pending"] == 2 and "not found" in saved["last_error"]


def test_webhook_checks_the_secret_and_the_payload(tmp_path):
    started = []
    trigger = RetrainTrigger(tmp_path / "t.json", threshold=2, start=lambda: started.append(1) or "run-1",
                             min_interval_s=0)
    client = TestClient(create_app("sekret", trigger))
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1}}
    assert client.post("/webhooks/label-studio", json=event).status_code == 401
    assert client.post("/webhooks/label-studio", json=event, headers={"X-Dlvm-Webhook-Secret": "sekreT"}).status_code == 401
    assert client.post("/webhooks/label-studio", content=b"not json",
                       headers={"X-Dlvm-Webhook-Secret": "sekret"}).status_code in (400, 422)
    ok = client.post("/webhooks/label-studio", json=event, headers={"X-Dlvm-Webhook-Secret": "sekret"})
    assert ok.status_code == 200 and ok.json() == {"labels": 1, "pending": 1, "threshold": 2, "starting_retrain": False}
    second = client.post("/webhooks/label-studio", json=event, headers={"X-Dlvm-Webhook-Secret": "sekret"})
    assert second.json()["starting_retrain"] and started == [1]
    assert json.loads((tmp_path / "t.json").read_text())["last_run"] == "run-1"
    assert TestClient(create_app("", trigger)).post("/webhooks/label-studio", json=event).status_code == 503
