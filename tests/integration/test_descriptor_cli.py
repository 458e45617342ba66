"""A descriptor backbone as a user makes and uses one: `dlvm pretrain --recipe tiny-descriptor`
fits its codebook (method codebook) on an ELPV subset, `dlvm adapt --method svm` trains the
classifier on it, `dlvm predict` and `dlvm export` use it like any other; fine-tuning it is
refused with the reason; `dlvm evaluate --methods svm` faces it with the sanity baselines."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

from clirun import dlvm, dlvm_env
from sqlmodel import select

from components.data.elpv import export_elpv
from components.registry.db import session_scope
from components.registry.tables import ModelVersion, RegisteredModel
from components.settings import Settings


def test_codebook_then_svm_registers_predicts_and_exports(tmp_path, prefect_api):
    images, export = export_elpv(tmp_path / "elpv", limit=60, binary=True)
    env = dlvm_env(tmp_path / "state", PREFECT_API_URL=prefect_api)
    dlvm(env, "ingest", str(images), "--dataset", "elpv")
    dlvm(env, "labels", str(export), "--dataset", "elpv", "--classes", "functional,defective")
    pre = dlvm(env, "pretrain", "--dataset", "elpv", "--recipe", "tiny-descriptor")
    log = pre.stdout + pre.stderr  # the flow's prints go through Prefect's logger
    assert "VLAD of 4 centres, RBF kernel map on 24 landmarks" in log and "pretraining codebook on flips" in log
    summary = tmp_path / "svm.json"
    adapted = dlvm(env, "adapt", "--dataset", "elpv", "--backbone", "elpv-codebook", "--method", "svm", "--recipe",
                   "tiny-descriptor", "--summary", str(summary))
    assert "24 of the kernel's 24 landmarks redrawn from the training images" in adapted.stdout + adapted.stderr
    assert 0 <= json.loads(summary.read_text())["metrics"]["accuracy"]["value"] <= 1
    with session_scope(Settings(home=tmp_path / "state")) as session:
        rows = session.exec(select(ModelVersion, RegisteredModel).join(RegisteredModel)
                            .order_by(ModelVersion.id)).all()
    (backbone, backbone_model), (classifier, classifier_model) = rows
    assert backbone_model.name == "elpv-codebook" and backbone.params["family"] == "descriptor"
    assert backbone.params["recipe"]["method"] == "codebook" and backbone.metrics["final_loss"] > 0
    assert classifier.params["method"] == "svm" and classifier.parent_id == backbone.id

    predicted = tmp_path / "predict.json"
    dlvm(env, "predict", str(images), "--model", f"{classifier_model.name}:{classifier.version}", "--summary", str(predicted))
    assert json.loads(predicted.read_text())["n_images"] == 60
    exported = dlvm(env, "export", f"{classifier_model.name}:{classifier.version}", "--output", str(tmp_path / "m.onnx"))
    assert (tmp_path / "m.onnx").stat().st_size > 0 and "parity" in (exported.stdout + exported.stderr).lower()

    dlvm(env, "evaluate", "--dataset", "elpv", "--backbone", "elpv-codebook", "--no-scratch", "--methods", "svm",
         "--fractions", "1.0", "--seeds", "0", "--recipe", "tiny-descriptor", "--summary", str(tmp_path / "sweep.json"))
    report = Path(urlparse(json.loads((tmp_path / "sweep.json").read_text())["report_uri"]).path).read_text()
    assert "| elpv-codebook / svm |" in report and "svm-hog" in report and "majority" in report

    bad = dlvm(env, "adapt", "--dataset", "elpv", "--backbone", "elpv-codebook", "--method", "finetune", "--recipe",
               "tiny-descriptor", check=False)
    assert bad.returncode == 1 and "fitted, not trained" in bad.stdout
