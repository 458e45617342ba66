"""DeepPCB boxes through the CLI to a registered detector, on a few dozen real images: ingested,
with a box snapshot from a CSV (as flows: those commands are tested in test_cli_steps.py and
test_deeppcb_subset.py); `dlvm adapt --task detection` from scratch (a few steps at 128 px,
detecting in 96 px tiles); the detector's registry row (kind, lineage, mAP with its interval),
its checkpoint (loads and detects), its report and its PNG of boxes; a detector run that fails
mid-training resumes from its checkpoint when rerun; `dlvm evaluate --task detection` compares a
domain-pretrained backbone with scratch on fractions of the training images. (A classification
snapshot named for detection is refused: tests/unit/test_detection.py; promotion and Label
Studio pre-annotations: tests/integration/test_detection_label_studio.py.)"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from backbone_sweeps import checked_sweep, pretrain_resnet_and_vit
from clirun import dlvm, dlvm_env, dlvm_in_process, ingest_in_process
from deeppcb_files import copy_first_images
from sqlmodel import select

from components.models.checkpoint import load_checkpoint
from components.models.detection import detector_from_state
from components.registry.db import session_scope
from components.registry.tables import LabelSnapshot, ModelVersion, RegisteredModel
from components.settings import Settings
from components.storage import open_store
from components.training.detect import DetectConfig, predict_boxes

N_IMAGES = 24


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory, prefect_api, deeppcb):
    root = tmp_path_factory.mktemp("detection")
    raw = root / "pcb"
    _, rows = copy_first_images(deeppcb, raw, N_IMAGES)
    lines = ["image,x1,y1,x2,y2,label"] + [f"{Path(r['image']).name},{r['x1']},{r['y1']},{r['x2']},{r['y2']},"
                                          f"{r['defect']}" for r in rows]
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    env = dlvm_env(root / "state", PREFECT_API_URL=prefect_api)
    # `dlvm labels BOXES.csv` itself is tested in test_deeppcb_subset.py.
    ingest_in_process(env, raw, "pcb", root / "boxes.csv")
    out = dlvm(env, "adapt", "--task", "detection", "--dataset", "pcb", "--labels", "1", "--backbone", "scratch",
               "--img-size", "128", "--crop", "96", "--tile", "96", "--steps", "12", "--batch-size", "4", "--summary", str(root / "detector.json"))
    return root, env, out, json.loads((root / "detector.json").read_text()), len(lines) - 1


def test_detector_is_registered_with_lineage_metrics_and_report(detection_run):
    root, env, out, summary, n_boxes = detection_run
    assert "registered pcb-detector v1 (detector): mAP@0.5 " in out.stdout and "F-score (IoU > 0.33)" in out.stdout
    settings = Settings(home=root / "state")
    with session_scope(settings) as session:
        model = session.exec(select(RegisteredModel).where(RegisteredModel.name == "pcb-detector")).one()
        version = session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id)).one()
        snapshot = session.exec(select(LabelSnapshot).where(LabelSnapshot.version == 1)).one()
    assert model.kind == "detector"
    assert version.params["task"] == "detection" and version.params["backbone"] == "scratch"
    assert version.label_snapshot_id == snapshot.id and version.dataset_version_id == snapshot.dataset_version_id
    assert version.run_id and version.code_revision and version.parent_id is None
    m = version.metrics
    assert m["n_train"] + m["n_test_images"] == N_IMAGES and m["n_test_images"] >= 4
    assert 0 < m["n_test_boxes"] and m["n_train_boxes"] + m["n_test_boxes"] == n_boxes
    for name in ("map50", "map33", "fscore33", "precision33", "recall33"):
        assert 0 <= m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"] <= 1, name
    assert m["map33"]["value"] >= m["map50"]["value"]  # a looser overlap can only match more
    assert set(m["ap50_per_class"]) <= {"open", "short", "mousebite", "spur", "copper", "pin-hole"}
    assert m["final_loss"] < m["first_loss"]  # a dozen steps already learn the background
    assert summary["metrics"]["map50"] == m["map50"]
    # the checkpoint is a working detector; the boxes drawing and the report are stored artifacts
    store = open_store(settings)
    state = load_checkpoint(store.get_bytes(version.artifact_uri, version.sha256))
    detector = detector_from_state(state)
    assert state["img_size"] == 128 and state["classes"] == snapshot.classes and detector.stride == 4
    found = predict_boxes(detector, np.zeros((2, 128, 128), np.uint8), DetectConfig(score_threshold=0.0))
    assert len(found) == 2 and found[0]["boxes"].shape[1] == 4 and len(found[0]["scores"]) > 0
    drawing = version.params["artifacts"]["boxes"]
    assert store.get_bytes(drawing["uri"], drawing["sha256"]).startswith(b"\x89PNG")
    report = version.params["artifacts"]["report"]
    text = store.get_bytes(report["uri"], report["sha256"]).decode()
    assert "mAP@0.5 (VOC, all-point)" in text and f"{m['map50']['value']:.3f}" in text
    # a detector is gated on its box snapshot's test split, not on a classifier evaluation
    # (the gate itself: tests/integration/test_detection_label_studio.py)
    refused = dlvm(env, "promote", "pcb-detector:1", "--evaluation", "1", check=False)
    assert refused.returncode != 0 and "is a detector: its gate runs on its box snapshot's test split" in \
        refused.stdout + refused.stderr
    assert version.params["detect"]["crop"] == 96 and version.params["detect"]["tile"] == 96
    assert state["decoding"]["tile"] == 96 and m["resumed_from_step"] == 0
    assert not list((root / "state" / "resume").glob("detector-*"))  # registered: nothing left to resume



def test_predict_reports_boxes_above_a_minimum_score_and_the_dashboard_shows_the_examples(detection_run, tmp_path):
    """`dlvm predict` with the detector (chosen by its registered kind): its boxes scoring at least
    --min-score, in the original 640 px image's pixels, one CSV row per box; the endpoint answers
    the same boxes for one image; the model page shows the evaluation's box drawing."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from components.registry.tables import PredictionBatch

    root, env, out, summary, n_boxes = detection_run
    line = tmp_path / "line"
    line.mkdir()
    for path in sorted((root / "pcb").iterdir())[:3]:
        shutil.copyfile(path, line / path.name)
    done = dlvm(env, "predict", str(line), "--model", "pcb-detector:1", "--min-score", "0.05",
                "--summary", str(tmp_path / "p.json"))
    s = json.loads((tmp_path / "p.json").read_text())
    assert s["kind"] == "detector" and s["n_images"] == 3 and s["min_score"] == 0.05
    settings = Settings(home=root / "state")
    store = open_store(settings)
    with session_scope(settings) as session:
        batch = session.get(PredictionBatch, s["batch_id"])
    rows = list(csv.DictReader(store.get_bytes(batch.predictions_uri, batch.predictions_sha256).decode().splitlines()))
    boxes = [r for r in rows if r["class"]]
    assert {r["image"] for r in rows} == {p.name for p in line.iterdir()}
    assert sum(batch.class_counts.values()) == len(boxes) > 0  # 12 steps: weak, but peaks above 0.05 exist
    for r in boxes:
        assert float(r["score"]) >= 0.05 and (r["width"], r["height"]) == ("640", "640")
        assert 0 <= float(r["x1"]) <= float(r["x2"]) <= 640 and 0 <= float(r["y1"]) <= float(r["y2"]) <= 640
    assert "boxes scoring at least 0.05 are reported" in done.stdout and f"{rows[0]['image']}: " in done.stdout

    client = TestClient(create_app(settings))
    name = rows[0]["image"]
    answer = client.post("/api/models/pcb-detector/predict?version=1&min_score=0.05",
                         content=(line / name).read_bytes(), headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["kind"] == "detector" and (body["width"], body["height"]) == (640, 640) and body["min_score"] == 0.05
    expected = [r for r in boxes if r["image"] == name]  # best first, like the answer
    assert len(body["boxes"]) == len(expected)
    for b, r in zip(body["boxes"], expected):
        assert b["class"] == r["class"] and b["score"] == pytest.approx(float(r["score"]), abs=1e-4)
        assert (b["x1"], b["y2"]) == pytest.approx((float(r["x1"]), float(r["y2"])), abs=0.06)
    wrong = client.post("/api/models/pcb-detector/predict?version=1&min_score=1.5", content=(line / name).read_bytes())
    assert wrong.status_code == 422
    drawing = client.get("/api/models/pcb-detector/versions/1/examples")
    assert drawing.status_code == 200 and drawing.headers["content-type"] == "image/png"
    assert drawing.content == store.get_bytes(summary["boxes_uri"], summary_sha(settings, "boxes"))
    page = client.get("/models/pcb-detector").text
    assert '<img id="examples-image" src="/api/models/pcb-detector/versions/1/examples"' in page
    assert "Boxes on test images" in page and f'data-batch="{s["batch_id"]}"' in page


def summary_sha(settings: Settings, drawing: str) -> str:
    with session_scope(settings) as session:
        version = session.exec(select(ModelVersion)).one()
    return version.params["artifacts"][drawing]["sha256"]


@pytest.mark.parametrize("arch", ["resnet-tiny", "vit-tiny"])
def test_benchmark_script_runs_on_a_sliver_of_deeppcb(tmp_path, deeppcb, monkeypatch, arch):
    from benchmarks.deeppcb_detection import main

    monkeypatch.setattr("benchmarks.device_bundle.DEEPPCB", deeppcb)
    out = tmp_path / "bench.json"
    result = main(["--arch", arch, "--size", "64", "--fraction", "0.008", "--n-test", "4", "--steps", "2",
                   "--batch-size", "2", "--crop", "32", "--tile", "32", "--n-boot", "20", "--no-progress", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["n_train_images"] == 8 and saved["metrics"]["n_test_images"] == 4
    assert saved["metrics"]["n_test_boxes"] > 0 and 0 <= saved["metrics"]["map50"]["value"] <= 1
    assert saved["threads"] == 1 and result["detect"]["crop"] == 32
    assert saved["backbone"]["family"] == arch.split("-")[0]
    assert saved["metrics_tiled"]["n_test_images"] == 4 and 0 <= saved["metrics_tiled"]["map50"]["value"] <= 1


def test_a_detector_run_that_dies_mid_training_resumes_from_its_checkpoint(detection_run, monkeypatch):
    """The flow keeps its training state under the state directory (keyed by snapshot, size,
    recipe and starting weights): a run that fails at step 8 leaves the step-5 checkpoint; the
    same run again starts there, registers, and removes it."""
    import functools

    import components.training.detect as detect
    import flows.detection as flow_module

    root, env, *_ = detection_run
    monkeypatch.setattr(flow_module, "DetectConfig", functools.partial(DetectConfig, checkpoint_every=5))
    real_lr = detect.cosine_lr

    def failing_lr(step, *rest):
        if step == 8:
            raise RuntimeError("the machine went away at step 8")
        return real_lr(step, *rest)

    args = dict(backbone="scratch", snapshot_version=1, img_size=96, steps=12, batch_size=2,
                model_name="pcb-detector-resumed")
    with dlvm_in_process(env):
        monkeypatch.setattr(detect, "cosine_lr", failing_lr)
        with pytest.raises(RuntimeError, match="step 8"):
            flow_module.detection_flow("pcb", **args)
        left = list((root / "state" / "resume").glob("detector-*"))
        assert len(left) == 1 and load_checkpoint(left[0].read_bytes())["step"] == 5
        monkeypatch.setattr(detect, "cosine_lr", real_lr)
        out = flow_module.detection_flow("pcb", **args)
    assert out["metrics"]["resumed_from_step"] == 5 and out["model"] == "pcb-detector-resumed"
    assert not left[0].exists()


def test_evaluate_detection_compares_backbones_on_fractions_of_the_training_images(detection_run, tmp_path):
    """`dlvm evaluate --task detection`: the same recipe from a registered ResNet backbone and from
    scratch on nested fractions of the box snapshot's training images, one evaluation with a
    row per detector (the backbone's version linked), a report and a plot; the backbone's page
    shows mAP@0.5. A ViT backbone trains a detector too (`adapt`: on crops, tested on whole
    images); an image size its patches do not divide is refused in one line before anything is trained."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from components.registry.tables import Evaluation

    root, env, *_ = detection_run
    pretrain_resnet_and_vit(env)
    settings = Settings(home=root / "state")
    common = ["evaluate", "--task", "detection", "--dataset", "pcb", "--labels", "1", "--steps", "3",
              "--batch-size", "2", "--seeds", "0"]
    refused = dlvm(env, *common, "--img-size", "92", "--backbone", "pcb-mae", "--fractions", "1.0", check=False)
    assert refused.returncode != 0 and "backbone pcb-mae is a ViT with 8 px patches: --img-size must be a multiple " \
        "of 8, got 92" in refused.stdout + refused.stderr
    with session_scope(settings) as session:
        assert not session.exec(select(Evaluation)).all()

    vit = dlvm(env, "adapt", "--task", "detection", "--dataset", "pcb", "--labels", "1", "--backbone", "pcb-mae",
               "--img-size", "96", "--crop", "64", "--steps", "3", "--batch-size", "2",
               "--summary", str(tmp_path / "vit.json"))
    assert "registered pcb-detector v2 (detector)" in vit.stdout
    with session_scope(settings) as session:
        detector = session.exec(select(ModelVersion).join(RegisteredModel).where(
            RegisteredModel.name == "pcb-detector", ModelVersion.version == 2)).one()
        mae = session.exec(select(ModelVersion).join(RegisteredModel).where(RegisteredModel.name == "pcb-mae")).one()
    assert detector.parent_id == mae.id and detector.params["backbone"] == "pcb-mae"
    state = load_checkpoint(open_store(settings).get_bytes(detector.artifact_uri, detector.sha256))
    assert state["backbone_config"]["family"] == "vit" and state["img_size"] == 96
    found = predict_boxes(detector_from_state(state), np.zeros((2, 96, 96), np.uint8), DetectConfig(score_threshold=0))
    assert len(found) == 2 and len(found[0]["scores"]) > 0

    out = dlvm(env, *common, "--img-size", "96", "--backbone", "pcb-simclr", "--fractions", "0.5,1.0", "--summary",
               str(tmp_path / "sweep.json"))
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert f"evaluation {summary['evaluation_id']} (detection): best mAP@0.5 " in out.stdout
    full = N_IMAGES - json.loads((root / "detector.json").read_text())["metrics"]["n_test_images"]
    evaluation, cells = checked_sweep(settings, "detection", "map50", "pcb-simclr", full)
    for r in cells.values():
        assert r.method == "centernet" and set(r.metrics) == {"map50", "map33", "fscore33"}
    page = TestClient(create_app(settings)).get("/models/pcb-simclr").text
    assert f"evaluation {evaluation.id} (" in page and "<th>mAP@0.5</th>" in page
    assert f"{cells[('pcb-simclr', 1.0)].metrics['map50']['value']:.3f}" in page
