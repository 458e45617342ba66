"""`dlvm adapt --method reptile|maml` as a user runs it: a small ELPV subset, the tiny recipe,
a registered classifier whose lineage says how it was made."""
from __future__ import annotations

import json

from clirun import dlvm, dlvm_env, ingest_in_process
from sqlmodel import select

from components.data.elpv import export_elpv
from components.registry.db import session_scope
from components.registry.tables import ModelVersion
from components.settings import Settings


def test_reptile_and_maml_register_classifiers_with_their_lineage(tmp_path, prefect_api):
    images, export = export_elpv(tmp_path / "elpv", limit=60, binary=True)
    env = dlvm_env(tmp_path / "state", PREFECT_API_URL=prefect_api)
    # The data steps are not what this test is about: their flows, without two more command start-ups.
    ingest_in_process(env, images, "elpv", export, classes=["functional", "defective"])
    for method in ("reptile", "maml"):
        summary = tmp_path / f"{method}.json"
        dlvm(env, "adapt", "--dataset", "elpv", "--backbone", "scratch", "--method", method, "--recipe", "tiny",
             "--summary", str(summary))
        assert 0 <= json.loads(summary.read_text())["metrics"]["accuracy"]["value"] <= 1
    with session_scope(Settings(home=tmp_path / "state")) as session:
        versions = session.exec(select(ModelVersion).order_by(ModelVersion.version)).all()
    assert [v.params["method"] for v in versions] == ["reptile", "maml"]
    for v in versions:
        assert v.params["adapt"]["n_way"] == 4 and v.params["baseline_method"] == "probe"
        assert v.params["meta_training"]["meta_steps"] == v.params["adapt"]["meta_steps"]
        assert v.label_snapshot_id is not None and v.run_id is not None and v.sha256
    bad = dlvm(env, "adapt", "--dataset", "elpv", "--backbone", "scratch", "--method", "protonet", "--recipe",
               "tiny", check=False)
    assert bad.returncode == 1 and "protonet" in bad.stdout
