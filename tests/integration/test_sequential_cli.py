"""`dlvm tokenizer train`, `dlvm pretrain --method sequential`, `dlvm adapt --method probe` on
the sequential backbone, an evaluation sweep with it and `dlvm generate` from it, as a user runs
them: a small ELPV subset, the tiny recipe, registered versions whose lineage and metrics say
what they are."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from urllib.parse import urlparse

from clirun import dlvm, dlvm_env, ingest_in_process
from PIL import Image
from sqlmodel import select

from components.data.elpv import export_elpv
from components.registry.db import session_scope
from components.registry.tables import (
    Evaluation,
    ModelArtifact,
    ModelVersion,
    RegisteredModel,
    Run,
)
from components.settings import Settings


def test_tokenizer_then_sequential_pretraining_then_a_probe(tmp_path, prefect_api):
    images, export = export_elpv(tmp_path / "elpv", limit=40, binary=True)
    env = dlvm_env(tmp_path / "state", PREFECT_API_URL=prefect_api)
    ingest_in_process(env, images, "elpv", export, classes=["functional", "defective"])

    tok = dlvm(env, "tokenizer", "train", "--dataset", "elpv", "--recipe", "tiny", "--summary",
               str(tmp_path / "tok.json"))
    assert "PSNR" in tok.stdout and "codebook usage" in tok.stdout
    dlvm(env, "pretrain", "--dataset", "elpv", "--method", "sequential", "--tokenizer", "elpv-tokenizer",
         "--recipe", "tiny")
    # visual sentences: 2 images per token sequence, a backbone like the other (features per image)
    dlvm(env, "pretrain", "--dataset", "elpv", "--method", "sequential", "--tokenizer", "elpv-tokenizer",
         "--sentence-length", "2", "--recipe", "tiny", "--name", "elpv-sentences")
    refused = dlvm(env, "pretrain", "--dataset", "elpv", "--method", "sequential", "--tokenizer", "elpv-tokenizer",
                   "--sentence-length", "3", "--recipe", "tiny", check=False)
    assert refused.returncode != 0 and "not a multiple of the sentence length 3" in refused.stdout + refused.stderr
    dlvm(env, "adapt", "--dataset", "elpv", "--backbone", "elpv-sequential", "--method", "probe", "--recipe", "tiny",
         "--summary", str(tmp_path / "probe.json"))
    assert 0 <= json.loads((tmp_path / "probe.json").read_text())["metrics"]["accuracy"]["value"] <= 1
    grid = tmp_path / "samples.png"
    dlvm(env, "generate", "elpv-sequential", "--n", "6", "--top-k", "20", "--out", str(grid), "--against", "elpv",
         "--summary", str(tmp_path / "generate.json"))
    assert Image.open(grid).size == (3 * 34 + 2, 2 * 34 + 2)  # 6 samples of 32 px, 3 a row, 2 px apart
    generated = json.loads((tmp_path / "generate.json").read_text())
    quality = generated["quality"]
    assert quality["n_real"] == 40 and quality["n_samples"] == 6
    assert set(quality["frechet_distance"]) == {"samples", "reconstructions", "shuffled_tokens"}
    assert all(v >= 0 for v in quality["frechet_distance"].values())
    dlvm(env, "evaluate", "--dataset", "elpv", "--backbone", "elpv-sequential", "--no-scratch", "--fractions", "1.0",
         "--seeds", "0", "--recipe", "tiny", "--summary", str(tmp_path / "sweep.json"))
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    report = Path(urlparse(sweep["report_uri"]).path).read_text()  # the default store: a local directory
    assert "| elpv-sequential / probe |" in report  # the sweep takes a sequential backbone like any other
    # ... with the grid just drawn embedded in the report, and its Fréchet distances beside it
    embedded = re.search(r"!\[6 samples of elpv-sequential v1\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", report)
    assert embedded and base64.b64decode(embedded.group(1)) == grid.read_bytes()
    assert f"samples **{quality['frechet_distance']['samples']:.3f}**" in report
    shown = dlvm(env, "models", "show", "elpv-sequential").stdout
    assert "samples v1 (6 images)" in shown and f"Fréchet distance {quality['frechet_distance']['samples']:.3f}" in shown

    with session_scope(Settings(home=tmp_path / "state")) as session:
        models = session.exec(select(RegisteredModel)).all()
        kinds, names = {m.name: m.kind for m in models}, {m.id: m.name for m in models}
        rows = {names[v.model_id]: v for v in session.exec(select(ModelVersion)).all()}
        assert kinds == {"elpv-tokenizer": "tokenizer", "elpv-sequential": "backbone", "elpv-sentences": "backbone",
                         "elpv-classifier": "classifier"}
        tokenizer, backbone, classifier = rows["elpv-tokenizer"], rows["elpv-sequential"], rows["elpv-classifier"]
        assert tokenizer.dataset_version_id is not None and tokenizer.run_id is not None and tokenizer.sha256
        assert 10 < tokenizer.metrics["psnr"] < 60 and 0 < tokenizer.metrics["codebook_usage"] <= 1
        assert tokenizer.metrics["n_heldout"] == 4 and tokenizer.params["n_train"] == 36
        assert backbone.parent_id == tokenizer.id and backbone.params["family"] == "sequential"
        assert backbone.params["architecture"]["tokenizer"]["levels"] == [5, 5, 5]
        assert "sentence_length" not in backbone.params["architecture"]  # one image per sequence: as before
        sentences = rows["elpv-sentences"]
        assert sentences.params["architecture"]["sentence_length"] == 2 and sentences.parent_id == tokenizer.id
        assert sentences.params["recipe"]["batch_size"] == 16  # 8 sentences of 2 images a step
        assert classifier.parent_id == backbone.id
        runs = session.exec(select(Run).where(Run.kind == "generate")).all()
        assert [(r.status, r.params["n"], r.params["top_k"]) for r in runs] == [("completed", 6, 20)]
        assert runs[0].params["against"] == "elpv"
        grids = session.exec(select(ModelArtifact)).all()  # the grid belongs to the version it was drawn from
        assert [(g.kind, g.model_version_id, g.id) for g in grids] == [
            ("samples", backbone.id, generated["artifact_id"])]
        assert grids[0].details["quality"] == quality and grids[0].details["top_k"] == 20
        evaluation = session.exec(select(Evaluation)).one()
        assert [(g["backbone"], g["artifact_id"]) for g in evaluation.summary["samples"]] == [
            ("elpv-sequential", generated["artifact_id"])]
