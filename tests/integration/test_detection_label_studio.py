"""Boxes through the whole labeling loop on a few real DeepPCB images, against a real Label Studio
server and a real Prefect server: a localization project; DeepPCB's boxes drawn in it as a
labeler would (rectangles in percent); the project's box export -> a box snapshot -> a detector
(a few steps) with its mAP report -> gated promotion to production (and a weaker detector
refused against it) -> the production detector's boxes as pre-annotations and a queue by
detection uncertainty, read back through the SDK; a box drawn after that pulled into the next
box snapshot by the round; the round on a schedule. Wrong models, kinds and labels fail with one
line and change nothing. The steps that are not under test as commands run as their flows in this
process (tests/clirun.py, dlvm_in_process); `labels`, `promote`, a refused `feedback run` and
`feedback serve` run as the real command line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from clirun import dlvm, dlvm_env, dlvm_in_process, serve_until_a_run_completes
from deeppcb_files import copy_first_images
from sqlmodel import select

from components.data.access import dataset_images
from components.evaluation.gate import describe
from components.labeling import label_studio as ls
from components.labeling.boxes import corners_to_percent
from components.labeling.feedback import plan_box_preannotations
from components.models.checkpoint import load_checkpoint
from components.registry import queries, refs
from components.registry.db import session_scope
from components.registry.tables import PromotionEvent
from components.settings import Settings
from components.storage import open_store
from components.training.detect import Detector
from flows.detection import detection_flow
from flows.feedback import feedback_flow
from flows.ingest import ingest_flow
from flows.promote import promote_flow

pytestmark = pytest.mark.label_studio
N_IMAGES, N_LABELED, QUEUE = 30, 24, 4
CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
SIZE = 640  # DeepPCB images


def as_summary(out: dict) -> dict:
    """A flow's result as the command's --summary file holds it."""
    return json.loads(json.dumps(out, default=str))


def box_round(env: dict, **params) -> dict:
    """One `dlvm feedback run --kind localization` round, in this process."""
    with dlvm_in_process(env):
        return as_summary(feedback_flow("pcb", kind="localization", **{"classes": CLASSES, **params}))


@pytest.fixture(scope="module")
def box_loop(tmp_path_factory, prefect_api, label_studio_server, deeppcb):
    root = tmp_path_factory.mktemp("box-loop")
    raw = root / "pcb"
    names, rows = copy_first_images(deeppcb, raw, N_IMAGES)
    truth = {n: [r for r in rows if Path(r["image"]).name == n] for n in names}
    home = root / "state"
    env = dlvm_env(home, PREFECT_API_URL=prefect_api, DLVM_LABEL_STUDIO_URL=label_studio_server.url,
                   DLVM_LABEL_STUDIO_TOKEN=label_studio_server.token, DLVM_RETRAIN_AFTER_LABELS="1000",
                   DLVM_LABEL_STUDIO_FILES_ROOT=str(label_studio_server.document_root))
    settings = Settings(home=home, label_studio_url=label_studio_server.url,
                        label_studio_token=label_studio_server.token,
                        label_studio_files_root=label_studio_server.document_root)
    cfg = ls.LabelStudioConfig(label_studio_server.url, label_studio_server.token)
    with dlvm_in_process(env):
        ingest_flow(str(raw), "pcb")
    # round 0: the localization project and its tasks; no detector yet, so nothing is predicted
    round0 = box_round(env)
    sdk = ls.client(cfg)
    tasks = {Path(t["data"]["dlvm_path"]).name: t for t in ls.iter_tasks(cfg, round0["project_id"])}
    for name in names[:N_LABELED]:  # the labeling team draws DeepPCB's boxes
        result = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": SIZE,
                   "original_height": SIZE, "value": {**corners_to_percent(float(r["x1"]), float(r["y1"]),
                                                                           float(r["x2"]), float(r["y2"]), SIZE, SIZE),
                                                      "rotation": 0, "rectanglelabels": [r["defect"]]}}
                  for r in truth[name]]
        sdk.annotations.create(id=tasks[name]["id"], result=result)
    export = root / "export.json"
    export.write_bytes(b"".join(sdk.projects.exports.download_sync(id=round0["project_id"], export_type="JSON")))
    labels = dlvm(env, "labels", str(export), "--dataset", "pcb", "--boxes", "--classes", ",".join(CLASSES),
                  "--allow-empty-classes")
    with dlvm_in_process(env):  # `dlvm adapt --task detection --labels 1 --backbone scratch ...`
        detector = as_summary(detection_flow("pcb", backbone="scratch", snapshot_version=1, img_size=128, crop=64,
                                             steps=150, batch_size=4))
    promoted = dlvm(env, "promote", "pcb-detector:1", "--summary", str(root / "promote1.json"))
    # round 1: the production detector's boxes on the unlabeled tasks, and the queue
    round1 = box_round(env, queue_size=QUEUE)
    return {"root": root, "env": env, "settings": settings, "cfg": cfg, "names": names, "truth": truth,
            "tasks": tasks, "export": export, "labels": labels, "promoted": promoted, "detector": detector,
            "promote1": json.loads((root / "promote1.json").read_text()), "round0": round0, "round1": round1}


def test_the_project_box_export_becomes_a_box_snapshot_with_the_drawn_boxes(box_loop):
    assert box_loop["round0"]["imported"] == N_IMAGES and box_loop["round0"]["preannotated"] == 0
    project = ls.client(box_loop["cfg"]).projects.get(id=box_loop["round0"]["project_id"])
    assert '<RectangleLabels name="label" toName="image">' in project.label_config
    assert f"snapshot v1 of pcb v1: {N_LABELED} labels" in box_loop["labels"].stdout
    settings = box_loop["settings"]
    with session_scope(settings) as session:
        version, snapshot = refs.resolve_label_snapshot(session, "pcb", None, 1)
    snap = json.loads(open_store(settings).get_bytes(snapshot.artifact_uri, snapshot.sha256))
    assert snap["format"] == "dlvm-box-snapshot/1" and not snap["issues"]
    for item in snap["items"]:  # percent there and back: the same pixel corners within rounding
        want = sorted((r["defect"], float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"]))
                      for r in box_loop["truth"][Path(item["path"]).name])
        got = sorted((b["label"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in item["boxes"])
        assert [g[0] for g in got] == [w[0] for w in want]
        assert np.allclose([g[1:] for g in got], [w[1:] for w in want], atol=0.01)


def test_the_detector_is_promoted_by_its_map_gate_and_a_weaker_one_is_refused(box_loop):
    promote1, metrics = box_loop["promote1"], box_loop["detector"]["metrics"]
    assert promote1["decision"] == "promoted" and promote1["gate"]["metric"] == "map50"
    nothing = promote1["gate"]["comparisons"]["majority: no boxes"]
    assert nothing["passed"] and nothing["other"] == 0.0 and nothing["ci_low"] > 0
    assert nothing["candidate"] == pytest.approx(metrics["map50"]["value"])  # the same test split as its report
    assert "PASS  majority: no boxes: map50" in box_loop["promoted"].stdout
    # a detector of three steps, gated against the holder on the same test images: refused
    env, settings = box_loop["env"], box_loop["settings"]
    with dlvm_in_process(env):  # `dlvm adapt ... --img-size 96 --steps 3`, then `dlvm promote pcb-detector:2`
        detection_flow("pcb", backbone="scratch", snapshot_version=1, img_size=96, steps=3, batch_size=2)
        promote2 = as_summary(promote_flow("pcb-detector:2", actor="cli"))
    holder = promote2["gate"]["comparisons"]["holder: production v1"]
    assert promote2["decision"] == "rejected" and not holder["passed"]
    assert holder["other"] == pytest.approx(metrics["map50"]["value"], abs=0.02)  # the holder at 96 px scaled boxes
    assert describe("holder: production v1", holder, promote2["gate"]["confidence"]).startswith(
        "FAIL  holder: production v1: map50")  # the line the command prints
    with session_scope(settings) as session:
        assert queries.get_alias_version(session, "pcb-detector", "production").version == 1
        events = session.exec(select(PromotionEvent).order_by(PromotionEvent.id)).all()
    assert [(e.decision, e.evaluation_id) for e in events] == [("promoted", None), ("rejected", None)]
    assert events[0].evidence["gate"]["comparisons"]["majority: no boxes"]["passed"]


def test_production_detector_boxes_are_pre_annotations_in_label_studio(box_loop):
    cfg, round1 = box_loop["cfg"], box_loop["round1"]
    project_id = round1["project_id"]
    assert round1["preannotated"] == N_IMAGES - N_LABELED
    project = ls.client(cfg).projects.get(id=project_id)
    assert project.model_version == "pcb-detector:1"
    n_boxes = 0
    for task in ls.iter_tasks(cfg, project_id):
        labeled = Path(task["data"]["dlvm_path"]).name in box_loop["names"][:N_LABELED]
        if labeled:
            assert not task["predictions"]  # the team's boxes are not overwritten by guesses
            continue
        (pred,) = task["predictions"]
        assert pred["model_version"] == "pcb-detector:1" and 0 <= pred["score"] <= 1
        for region in pred["result"]:
            v = region["value"]
            assert region["type"] == "rectanglelabels" and region["from_name"] == "label"
            assert v["rectanglelabels"][0] in CLASSES and len(v["rectanglelabels"]) == 1
            assert 0 <= v["x"] and 0 <= v["y"] and v["width"] > 0 and v["height"] > 0
            assert v["x"] + v["width"] <= 100 + 1e-6 and v["y"] + v["height"] <= 100 + 1e-6
            assert 0.3 <= region["score"] <= 1  # only boxes at or above the reported threshold
            n_boxes += 1
    assert n_boxes > 0  # a detector that learned something finds defects on defect images


def test_box_queue_is_the_detection_uncertainty_order(box_loop):
    cfg, round1, settings = box_loop["cfg"], box_loop["round1"], box_loop["settings"]
    project_id = round1["project_id"]
    queue = round1["queue"]
    assert len(queue) == QUEUE
    assert [t["id"] for t in ls.queue_order(cfg, project_id)] == queue  # what the 'dlvm queue' tab shows
    labeled_ids = {box_loop["tasks"][n]["id"] for n in box_loop["names"][:N_LABELED]}
    assert not set(queue) & labeled_ids and len(set(queue)) == QUEUE
    # recompute from the production detector: the same queue, from the largest entropy of each image's box scores
    with session_scope(settings) as session:
        version, snapshot = refs.resolve_label_snapshot(session, "pcb", None, 1)
        holder = queries.get_alias_version(session, "pcb-detector", "production")
    store = open_store(settings)
    detector = Detector.from_state(load_checkpoint(store.get_bytes(holder.artifact_uri, holder.sha256)))
    manifest, images = dataset_images(settings, "pcb", version, detector.img_size, progress=False)
    found, features = detector.detect(images, with_features=True)
    p = [np.clip(d["scores"].astype(np.float64), 1e-12, 1 - 1e-12) for d in found]
    by_hand = np.array([(-(s * np.log2(s) + (1 - s) * np.log2(1 - s))).max() if len(s) else 0.0 for s in p])
    row_of = {box_loop["tasks"][Path(rec["path"]).name]["id"]: i for i, rec in enumerate(manifest["images"])}
    for d in found:
        d["boxes"] = d["boxes"] / detector.img_size
    tasks = list(ls.iter_tasks(cfg, project_id))
    labeled = {it["sha256"] for it in json.loads(store.get_bytes(snapshot.artifact_uri, snapshot.sha256))["items"]}
    sha_index = {rec["sha256"]: i for i, rec in enumerate(manifest["images"])}
    plan = plan_box_preannotations(tasks, sha_index, found, features, CLASSES, "recomputed", QUEUE,
                                   detector.show_threshold, labeled_shas=labeled)
    assert plan.queue == queue
    assert [plan.uncertainty[t] for t in queue] == pytest.approx([by_hand[row_of[t]] for t in queue], abs=1e-6)
    # without the diversity step the queue is plain uncertainty order
    plain = plan_box_preannotations(tasks, sha_index, found, features, CLASSES, "recomputed", QUEUE,
                                    detector.show_threshold, diversity=False, labeled_shas=labeled)
    unlabeled = sorted((t for t in row_of if t not in labeled_ids), key=lambda t: (-by_hand[row_of[t]], t))
    assert [by_hand[row_of[t]] for t in plain.queue] == pytest.approx([by_hand[row_of[t]] for t in unlabeled[:QUEUE]])
    # each pre-annotation's score is 1 - that image's uncertainty
    for task in tasks:
        if task["predictions"]:
            assert task["predictions"][0]["score"] == pytest.approx(1 - by_hand[row_of[task["id"]]], abs=1e-5)


def test_wrong_model_kind_or_labels_fail_in_one_line_and_change_nothing(box_loop):
    env, cfg, project_id = box_loop["env"], box_loop["cfg"], box_loop["round1"]["project_id"]
    before = ls.client(cfg).projects.get(id=project_id)
    # the detector named for a classification project
    wrong_kind = dlvm(env, "feedback", "run", "--dataset", "pcb", "--model", "pcb-detector", check=False)
    out = (wrong_kind.stdout + wrong_kind.stderr).strip()
    assert wrong_kind.returncode != 0
    assert "pcb-detector@production is a detector; a classification project takes a classifier's " \
           "pre-annotations (use --kind localization" in out and "Traceback" not in out
    # a project whose labels lack classes the detector finds (the same one-line error path as above)
    with pytest.raises(ValueError, match=re.escape("detects labels ['mousebite', 'spur', 'copper', 'pin-hole'] that "
                                                   "the project's labels ['open', 'short'] do not offer")):
        box_round(env, classes=["open", "short"])
    after = ls.client(cfg).projects.get(id=project_id)
    assert after.label_config == before.label_config  # neither touched the project
    assert after.total_predictions_number == before.total_predictions_number
    assert [p.id for p in ls.client(cfg).projects.list() if p.title == "dlvm: pcb"] == [project_id]


def test_boxes_drawn_in_the_project_are_pulled_into_the_next_box_snapshot(box_loop):
    """(Runs last: it labels a queued task.) The round pulls boxes like image classes: the first
    pull from the project starts from the export's snapshot (same boxes: nothing new in round 1),
    a box drawn since lands in a new snapshot, and the next round reads nothing."""
    env, cfg, settings = box_loop["env"], box_loop["cfg"], box_loop["settings"]
    round1 = box_loop["round1"]
    assert round1["snapshot_version"] == 1 and not round1["snapshot_created"]
    assert round1["changed_tasks"] == N_LABELED and round1["n_labeled"] == N_LABELED
    task = ls.client(cfg).tasks.get(id=round1["queue"][0])
    name = Path(task.data["dlvm_path"]).name
    drawn = box_loop["truth"][name]
    ls.client(cfg).annotations.create(id=task.id, result=[
        {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": SIZE,
         "original_height": SIZE, "value": {**corners_to_percent(float(r["x1"]), float(r["y1"]), float(r["x2"]),
                                                                 float(r["y2"]), SIZE, SIZE),
                                            "rotation": 0, "rectanglelabels": [r["defect"]]}} for r in drawn])
    round2 = box_round(env, queue_size=QUEUE)
    assert round2["snapshot_created"] and round2["snapshot_version"] == 2 and round2["n_labeled"] == N_LABELED + 1
    assert task.id not in round2["queue"] and round2["preannotated"] == 0  # the rest already have v1's boxes
    with session_scope(settings) as session:
        row = queries.get_label_snapshot(session, round2["snapshot_id"])
    snap = json.loads(open_store(settings).get_bytes(row.artifact_uri, row.sha256))
    assert snap["format"] == "dlvm-box-snapshot/1" and snap["source"]["project"] == round2["project_id"]
    (item,) = [it for it in snap["items"] if Path(it["path"]).name == name]
    got = sorted((b["label"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in item["boxes"])
    want = sorted((r["defect"], float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"])) for r in drawn)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert np.allclose([g[1:] for g in got], [w[1:] for w in want], atol=0.01)
    assert item["annotator"] == "admin@dlvm.local"
    round3 = box_round(env, queue_size=QUEUE)
    assert round3["changed_tasks"] == 0 and not round3["snapshot_created"] and round3["snapshot_version"] == 2


def test_feedback_serve_runs_box_rounds_on_its_schedule(box_loop, prefect_api):
    """`dlvm feedback serve --kind localization` schedules the box round; a scheduled run completes."""
    watched, _, done = serve_until_a_run_completes(
        ["feedback", "serve", "--dataset", "pcb", "--kind", "localization", "--classes", ",".join(CLASSES),
         "--interval", "5", "--queue-size", str(QUEUE)], box_loop["env"], box_loop["root"] / "serve.log", prefect_api,
        watch=lambda ds: next((d for d in ds if d.name == "pcb" and d.parameters.get("kind") == "localization"), None))
    assert watched.schedules and watched.parameters["classes"] == CLASSES
    assert done[0].parameters["kind"] == "localization" and done[0].auto_scheduled
