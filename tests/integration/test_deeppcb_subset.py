"""DeepPCB's boxes and good images on a handful of real images: ingested, with a good/defect label
snapshot (as flows: the data steps' commands are tested in test_cli_steps.py); then through the
CLI: a box snapshot from a CSV (bad rows reported one line each, nothing wrong registered);
`dlvm adapt --task anomaly` fitted on the good class only, its evaluation on the test split, the
heat-map artifact and the registry lineage; `dlvm evaluate --task anomaly` comparing a
pretrained backbone with random features."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
from backbone_sweeps import checked_sweep, pretrain_resnet_and_vit
from clirun import dlvm, dlvm_env, ingest_in_process
from sqlmodel import select

from components.anomaly.patchcore import PatchCore
from components.data.elpv import write_label_studio_export
from components.models.checkpoint import load_checkpoint
from components.registry.db import session_scope
from components.registry.tables import (
    LabelSnapshot,
    ModelVersion,
    PredictionBatch,
    RegisteredModel,
    Run,
)
from components.settings import Settings
from components.storage import open_store

IDS = ["20085000", "20085001", "20085002", "20085003", "20085004", "20085005", "20085006", "20085007",
       "20085008", "20085009", "20085010", "20085011", "20085012", "20085013", "20085014", "20085015"]


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory, prefect_api, deeppcb):
    root = tmp_path_factory.mktemp("anomaly")
    raw = root / "pcb"
    raw.mkdir()
    names, labels = [], []
    for i, pcb_id in enumerate(IDS):
        for kind, label in (("temp", "good"), ("test", "defect")):
            if kind == "test" and i % 2:  # 16 good templates, 8 tested images with defects
                continue
            shutil.copyfile(deeppcb / "images" / f"{pcb_id}_{kind}.png", raw / f"{pcb_id}_{kind}.png")
            names.append(f"{pcb_id}_{kind}.png")
            labels.append(label)
    export = write_label_studio_export(root / "export.json", [f"/data/local-files/?d=pcb/{n}" for n in names], labels)
    env = dlvm_env(root / "state", PREFECT_API_URL=prefect_api)
    ingest_in_process(env, raw, "pcb", export)
    out = dlvm(env, "adapt", "--task", "anomaly", "--dataset", "pcb", "--backbone", "scratch", "--good-class", "good",
               "--img-size", "96", "--false-alarm-rate", "0.05", "--summary", str(root / "anomaly.json"))
    return root, env, out, json.loads((root / "anomaly.json").read_text())


def test_anomaly_model_is_registered_with_lineage_and_metrics(anomaly_run):
    root, env, out, summary = anomaly_run
    assert "registered pcb-anomaly v1 (anomaly" in out.stdout and "image AUROC" in out.stdout
    settings = Settings(home=root / "state")
    with session_scope(settings) as session:
        model = session.exec(select(RegisteredModel).where(RegisteredModel.name == "pcb-anomaly")).one()
        version = session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id)).one()
        snapshot = session.exec(select(LabelSnapshot).where(LabelSnapshot.version == 1)).one()
    assert model.kind == "anomaly"  # its own registry kind (migration 0003): never gated as a classifier
    assert version.params["task"] == "anomaly" and version.params["good_class"] == "good"
    assert version.label_snapshot_id == snapshot.id and version.run_id and version.code_revision
    m = version.metrics
    assert m["n_fit"] + m["n_calibration"] <= 16 and m["n_calibration"] >= 1
    assert m["n_test_anomalous"] >= 1 and m["n_test_good"] >= 1
    assert 0 <= m["image_auroc"]["ci_low"] <= m["image_auroc"]["value"] <= m["image_auroc"]["ci_high"] <= 1
    assert m["false_alarm_rate"]["n"] == m["n_test_good"] and m["threshold"] == summary["metrics"]["threshold"]
    # the checkpoint is a working anomaly model; the heat maps and the report are stored artifacts
    store = open_store(settings)
    model = PatchCore.from_state(load_checkpoint(store.get_bytes(version.artifact_uri, version.sha256)))
    assert model.threshold == m["threshold"] and model.img_size == 96
    heat = version.params["artifacts"]["heatmaps"]
    assert store.get_bytes(heat["uri"], heat["sha256"]).startswith(b"\x89PNG")
    report = version.params["artifacts"]["report"]
    assert b"image auroc" in store.get_bytes(report["uri"], report["sha256"])
    refused = dlvm(env, "promote", "pcb-anomaly:1", check=False)
    assert refused.returncode != 0 and "only classifiers and detectors are promoted" in refused.stdout + refused.stderr


def test_box_csv_becomes_a_box_snapshot_and_bad_rows_are_reported(anomaly_run, deeppcb, tmp_path):
    root, env, out, summary = anomaly_run
    rows = [r for r in csv.DictReader(open(deeppcb / "boxes.csv")) if r["image"][7:15] in IDS[::2]]
    lines = ["image,x1,y1,x2,y2,label"] + [f"{r['image']},{r['x1']},{r['y1']},{r['x2']},{r['y2']},{r['defect']}"
                                          for r in rows]
    good = tmp_path / "boxes.csv"
    good.write_text("\n".join(lines) + "\n")
    done = dlvm(env, "labels", str(good), "--dataset", "pcb", "--summary", str(tmp_path / "s.json"))
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["n_labeled"] == 8 and s["issues"] == [] and sum(s["class_counts"].values()) == len(rows)
    assert "snapshot v2" in done.stdout
    # a bad row: the image it names is left out, the problem is one line, the rest is registered
    bad = tmp_path / "bad.csv"
    first = rows[0]
    bad.write_text("\n".join(lines + [f"{first['image']},600,600,700,700,open",
                                       "images/nothing.png,1,1,5,5,open"]) + "\n")
    done = dlvm(env, "labels", str(bad), "--dataset", "pcb", "--summary", str(tmp_path / "b.json"))
    s = json.loads((tmp_path / "b.json").read_text())
    assert s["n_labeled"] == 7 and sorted(i["kind"] for i in s["issues"]) == ["outside_image", "unknown_image"]
    assert "outside_image: 20085000_test.png (line " in done.stdout and "lies outside the 640x640 image" in done.stdout
    with session_scope(Settings(home=root / "state")) as session:
        snaps = session.exec(select(LabelSnapshot)).all()
    assert [x.version for x in snaps] == [1, 2, 3] and snaps[1].source.startswith("box export")
    # the box snapshot's boxes are the defect regions of the anomaly model's heat maps
    regions = dlvm(env, "adapt", "--task", "anomaly", "--dataset", "pcb", "--backbone", "scratch", "--good-class",
                   "good", "--snapshot", "1", "--regions-snapshot", "2", "--img-size", "96",
                   "--summary", str(tmp_path / "r.json"))
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert "pixel AUROC" in regions.stdout and 0 <= m["pixel_auroc"]["ci_low"] <= m["pixel_auroc"]["ci_high"] <= 1
    assert m["n_pixel_images"] == m["n_test_good"] + m["n_test_anomalous"]


def test_predict_scores_and_decides_writes_heat_maps_and_the_dashboard_shows_the_examples(anomaly_run, tmp_path):
    """`dlvm predict` with the anomaly model (chosen by its registered kind): a score and the
    decision at the threshold per image, a heat-map PNG per image; the prediction endpoint
    answers the same for one image; the model page shows the evaluation's heat-map drawing."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    root, env, out, summary = anomaly_run
    line = tmp_path / "line"
    line.mkdir()
    for name in (f"{IDS[0]}_temp.png", f"{IDS[0]}_test.png", f"{IDS[2]}_test.png"):
        shutil.copyfile(root / "pcb" / name, line / name)
    heat = tmp_path / "heat"
    done = dlvm(env, "predict", str(line), "--model", "pcb-anomaly:1", "--heatmap-dir", str(heat),
                "--summary", str(tmp_path / "p.json"))
    s = json.loads((tmp_path / "p.json").read_text())
    threshold = summary["metrics"]["threshold"]
    assert s["kind"] == "anomaly" and s["n_images"] == 3 and s["threshold"] == threshold
    assert s["false_alarm_rate"] == 0.05 and s["drift"]["tested"] is False
    settings = Settings(home=root / "state")
    store = open_store(settings)
    with session_scope(settings) as session:
        batch = session.get(PredictionBatch, s["batch_id"])
        model = session.exec(select(RegisteredModel).where(RegisteredModel.name == "pcb-anomaly")).one()
        version = session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                          ModelVersion.version == 1)).one()
    rows = list(csv.DictReader(store.get_bytes(batch.predictions_uri, batch.predictions_sha256).decode().splitlines()))
    assert [r["image"] for r in rows] == sorted(p.name for p in line.iterdir())
    for r in rows:
        assert r["decision"] == ("anomalous" if float(r["score"]) > threshold else "normal")
        assert f"{r['image']}: score " in done.stdout
    assert batch.class_counts == {"anomalous": sum(r["decision"] == "anomalous" for r in rows),
                                  "normal": sum(r["decision"] == "normal" for r in rows)}
    assert sorted(p.name for p in heat.iterdir()) == sorted(p.stem + ".heatmap.png" for p in line.iterdir())
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in heat.iterdir())
    assert "threshold" in done.stdout and "false-alarm rate" in done.stdout
    # options of another kind are refused in one line, before any image is read
    wrong = dlvm(env, "predict", str(line), "--model", "pcb-anomaly:1", "--min-score", "0.5", check=False)
    assert wrong.returncode != 0
    assert "--min-score is for detectors; pcb-anomaly:1 is of kind anomaly" in wrong.stdout + wrong.stderr

    client = TestClient(create_app(settings))
    image = (line / rows[1]["image"]).read_bytes()
    answer = client.post("/api/models/pcb-anomaly/predict?version=1", content=image,
                         headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["kind"] == "anomaly" and body["version"] == 1 and "class" not in body
    assert body["score"] == pytest.approx(float(rows[1]["score"]), rel=1e-4)
    assert body["anomalous"] == (rows[1]["decision"] == "anomalous") and body["threshold"] == threshold
    no_alias = client.post("/api/models/pcb-anomaly/predict", content=image)
    assert no_alias.status_code == 404 and "no version with alias 'production'" in no_alias.json()["detail"]
    drawing = client.get("/api/models/pcb-anomaly/versions/1/examples")
    assert drawing.status_code == 200 and drawing.headers["content-type"] == "image/png"
    heat_artifact = version.params["artifacts"]["heatmaps"]
    assert heat_artifact["uri"] == summary["heatmaps_uri"]
    assert drawing.content == store.get_bytes(heat_artifact["uri"], heat_artifact["sha256"])
    newest = client.get("/api/models/pcb-anomaly").json()["versions"][0]["version"]  # the page shows the newest
    page = client.get("/models/pcb-anomaly").text
    assert f'<img id="examples-image" src="/api/models/pcb-anomaly/versions/{newest}/examples"' in page
    assert "Heat maps on test images" in page and f'data-batch="{s["batch_id"]}"' in page


def test_evaluate_anomaly_compares_backbones_on_fractions_of_the_good_images(anomaly_run, tmp_path):
    """`dlvm evaluate --task anomaly`: the same memory-bank recipe on a registered backbone's
    features and on random ones, fitted on nested fractions of the good training images, one
    evaluation with a row per model (image AUROC, false-alarm and detection rates), a report
    and a plot. Backbones of different input sizes are refused before anything is fitted."""
    from components.registry.tables import Evaluation

    root, env, *_ = anomaly_run
    pretrain_resnet_and_vit(env)
    settings = Settings(home=root / "state")
    common = ["evaluate", "--task", "anomaly", "--dataset", "pcb", "--labels", "1", "--good-class", "good",
              "--false-alarm-rate", "0.1"]
    refused = dlvm(env, *common, "--backbone", "pcb-mae", check=False)  # a 32 px ViT beside a 128 px ResNet
    assert refused.returncode != 0 and "the backbones take different input sizes (pcb-mae: 32 px, scratch: 128 px)" \
        in refused.stdout + refused.stderr
    with session_scope(settings) as session:
        assert not session.exec(select(Evaluation)).all()

    out = dlvm(env, *common, "--backbone", "pcb-simclr", "--img-size", "64", "--fractions", "0.5,1.0",
               "--stages", "1", "--dihedral", "--image-coreset", "0.5", "--regions-snapshot", "2",
               "--summary", str(tmp_path / "sweep.json"))
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert f"evaluation {summary['evaluation_id']} (anomaly): best image AUROC " in out.stdout
    n_fit = anomaly_run[3]["metrics"]["n_fit"]  # the adapt run fitted every good training image but the calibration ones
    evaluation, cells = checked_sweep(settings, "anomaly", "image_auroc", "pcb-simclr", n_fit)
    for r in cells.values():
        assert r.method == "patchcore" and {"image_auroc", "false_alarm_rate", "detection_rate"} <= set(r.metrics)
        p = r.metrics["pixel_auroc"]  # the box snapshot of the test above: its boxes are the defect regions
        assert 0 <= p["ci_low"] <= p["value"] <= p["ci_high"] <= 1
    assert "image AUROC" in open_store(settings).get_bytes(evaluation.report_uri, evaluation.report_sha256).decode()
    with session_scope(settings) as session:  # the bank options reached the models
        bank = session.get(Run, evaluation.run_id).params["patchcore"]
    assert bank["features"]["cnn_stages"] == [1] and bank["fit_dihedral"] and bank["image_coreset_fraction"] == 0.5
