"""A descriptor backbone as a user makes and uses one: `dlvm pipeline --recipe tiny-descriptor
--good-class functional` fits its codebook (method codebook) on an ELPV subset, sweeps the recipe's
own method (svm, with a novelty bank of the functional training cells) beside the sanity baselines
with no from-scratch row (an unfitted descriptor backbone is no baseline), adapts and gates the
candidate; `dlvm predict` and `dlvm export` use the classifier, bank and all, like any other;
fine-tuning the backbone and a good class that is not one are refused with the reason. One
pipeline command rather than a command per step: each command pays seconds of imports."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

from clirun import dlvm, dlvm_env
from sqlmodel import select

from components.data.elpv import export_elpv
from components.registry.db import session_scope
from components.registry.tables import Dataset, DatasetVersion, Evaluation, ModelVersion, RegisteredModel
from components.settings import Settings


def test_descriptor_pipeline_registers_predicts_and_exports(tmp_path, prefect_api):
    images, export = export_elpv(tmp_path / "elpv", limit=60, binary=True)
    env = dlvm_env(tmp_path / "state", PREFECT_API_URL=prefect_api)
    ran = dlvm(env, "pipeline", str(images), "--dataset", "elpv", "--labels", str(export),
               "--classes", "functional,defective", "--recipe", "tiny-descriptor", "--fractions", "1.0",
               "--seeds", "0", "--good-class", "functional")
    log = ran.stdout + ran.stderr  # the flows' prints go through Prefect's logger
    assert "intensity patches (4, 8 px blocks), VLAD of 4 centres, RBF kernel map on 24 landmarks" in log
    assert "pretraining codebook on flips" in log
    assert "no from-scratch row" in log  # and the recipe's method, svm, swept without --methods:
    assert "candidate elpv-codebook:1 / svm" in log
    n_functional = int(sum(1 for item in json.loads(export.read_text())
                           if item["annotations"][0]["result"][0]["value"]["choices"] == ["functional"]))
    assert "24 of the kernel's 24 landmarks redrawn from the training images; novelty bank of" in log
    # the candidate is the sweep's full-label svm, taken as it is; the folder that held it is gone
    assert "is taken as it is (not trained again)" in log
    assert not list((tmp_path / "state" / "cache").glob("kept-runs-*"))
    with session_scope(Settings(home=tmp_path / "state")) as session:
        rows = session.exec(select(ModelVersion, RegisteredModel).join(RegisteredModel)
                            .order_by(ModelVersion.id)).all()
        (evaluation,) = session.exec(select(Evaluation)).all()
    (backbone, backbone_model), (classifier, classifier_model) = rows
    assert backbone_model.name == "elpv-codebook" and backbone.params["family"] == "descriptor"
    assert backbone.params["recipe"]["method"] == "codebook" and backbone.metrics["final_loss"] > 0
    assert classifier.params["method"] == "svm" and classifier.parent_id == backbone.id
    assert classifier.params["good_class"] == "functional" and classifier.params["adapt"]["novelty_class"] == 0
    assert classifier.params["reused_sweep_run"] is True and classifier.params["preprocess"]["size"] == 48
    # the bank: the functional cells of the training pool (the test split's are never in it)
    assert 0 < classifier.params["training"]["novelty_bank"] < n_functional
    assert 0 <= classifier.metrics["accuracy"]["value"] <= 1
    report = Path(urlparse(evaluation.report_uri).path).read_text()
    assert "| elpv-codebook:1 / svm |" in report and "svm-hog" in report and "majority" in report
    assert "| scratch /" not in report and "svm novelty bank" in report

    predicted = tmp_path / "predict.json"
    dlvm(env, "predict", str(images), "--model", f"{classifier_model.name}:{classifier.version}", "--summary", str(predicted))
    assert json.loads(predicted.read_text())["n_images"] == 60
    exported = dlvm(env, "export", f"{classifier_model.name}:{classifier.version}", "--output", str(tmp_path / "m.onnx"))
    assert (tmp_path / "m.onnx").stat().st_size > 0 and "parity" in (exported.stdout + exported.stderr).lower()

    bad = dlvm(env, "adapt", "--dataset", "elpv", "--backbone", "elpv-codebook", "--method", "finetune", "--recipe",
               "tiny-descriptor", check=False)
    assert bad.returncode == 1 and "fitted, not trained" in bad.stdout
    bad = dlvm(env, "adapt", "--dataset", "elpv", "--backbone", "elpv-codebook", "--method", "svm", "--recipe",
               "tiny-descriptor", "--good-class", "fine", check=False)
    assert bad.returncode == 1 and "good class 'fine' is not a class of the labels (classes: functional, defective)" \
        in bad.stdout
    # the pipeline checks it against --classes before it ingests anything
    bad = dlvm(env, "pipeline", str(images), "--dataset", "cells", "--labels", str(export), "--classes",
               "functional,defective", "--recipe", "tiny-descriptor", "--good-class", "fine", check=False)
    assert bad.returncode == 1 and "good class 'fine' is not a class of the labels" in bad.stdout
    with session_scope(Settings(home=tmp_path / "state")) as session:
        assert session.exec(select(DatasetVersion).join(Dataset).where(Dataset.name == "cells")).all() == []
