"""The step commands as a user runs them: `dlvm ingest` on a folder full of bad files
(the issue's acceptance case), `dlvm labels` on good and bad exports, clear errors."""
from __future__ import annotations

import json
import shutil

import pytest
from clirun import dlvm, dlvm_env
from raw_folder import EXPECTED_BAD, GOOD, make_raw_folder
from sqlmodel import select

from components.data.elpv import export_elpv
from components.registry.db import session_scope
from components.registry.tables import DatasetVersion, LabelSnapshot
from components.settings import Settings


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, prefect_api):
    root = tmp_path_factory.mktemp("cli")
    raw = make_raw_folder(root / "raw")
    home = root / "state"
    env = dlvm_env(home, PREFECT_API_URL=prefect_api)
    out = dlvm(env, "ingest", str(raw), "--dataset", "mixed", "--summary", str(root / "ingest.json"))
    return raw, home, env, out, json.loads((root / "ingest.json").read_text())


def test_ingest_exits_0_and_lists_every_bad_file_with_its_reason(ingested):
    raw, home, env, out, summary = ingested
    assert out.returncode == 0
    for path, reason in EXPECTED_BAD.items():
        assert f"quarantined {path}: {reason}" in out.stdout
    assert {b["path"]: b["reason"] for b in summary["quarantined"]} == EXPECTED_BAD
    # 5 ELPV PNGs + a 16-bit PNG + an RGB JPEG are the good images
    assert summary["n_images"] == len(GOOD) + 2 and summary["created"]


def test_quarantine_keeps_the_bad_files_and_the_source_is_untouched(ingested):
    raw, home, env, out, summary = ingested
    quarantine = summary["quarantine_dir"]
    for path in EXPECTED_BAD:
        assert (raw / path).exists(), "ingest never deletes the user's files"
        kept = Settings(home=home).quarantine
        assert any(p.relative_to(quarantine).as_posix() == path
                   for p in __import__("pathlib").Path(quarantine).rglob("*") if p.is_file()), path
        assert str(kept) in quarantine
    reasons = json.loads((__import__("pathlib").Path(quarantine) / "REASONS.json").read_text())
    assert {r["path"] for r in reasons} >= set(EXPECTED_BAD)


def test_good_images_are_versioned_and_reingest_is_a_no_op(ingested):
    raw, home, env, out, summary = ingested
    settings = Settings(home=home)
    workspace = settings.dvc_repo / "data" / "mixed"
    assert sorted(p.relative_to(workspace).as_posix() for p in workspace.rglob("*") if p.is_file()) == \
        sorted(GOOD + ["deep/sixteen.png", "deep/rgb.jpg"])
    again = dlvm(env, "ingest", str(raw), "--dataset", "mixed")
    assert "unchanged, no new version" in again.stdout
    with session_scope(settings) as session:
        assert [v.version for v in session.exec(select(DatasetVersion)).all()] == [1]


def test_a_changed_folder_is_a_new_version(ingested, tmp_path):
    raw, home, env, out, summary = ingested
    changed = tmp_path / "changed"
    shutil.copytree(raw, changed)
    (changed / "cell0005.png").unlink()
    result = dlvm(env, "ingest", str(changed), "--dataset", "mixed")
    assert "v2" in result.stdout and "new version" in result.stdout


def test_ingest_of_a_missing_folder_is_a_clear_error(tmp_path, prefect_api):
    out = dlvm(dlvm_env(tmp_path / "state", PREFECT_API_URL=prefect_api), "ingest", str(tmp_path / "nope"), "--dataset", "x", check=False)
    assert out.returncode == 1 and "is not a directory" in out.stdout


def test_labels_snapshot_from_an_export_with_issues(tmp_path, prefect_api):
    images, export = export_elpv(tmp_path / "elpv", limit=40)
    tasks = json.loads(export.read_text())
    tasks[0]["annotations"][0]["result"][0]["value"]["choices"] = ["no-such-class"]
    tasks[1]["data"]["image"] = "/data/local-files/?d=elpv/images/missing.png"
    conflicting = json.loads(json.dumps(tasks[2]["annotations"][0]))
    conflicting["result"][0]["value"]["choices"] = [c for c in ("functional", "defective")
                                                    if c not in conflicting["result"][0]["value"]["choices"]][:1]
    tasks[2]["annotations"].append(conflicting)
    export.write_text(json.dumps(tasks))
    env = dlvm_env(tmp_path / "state", PREFECT_API_URL=prefect_api)
    dlvm(env, "ingest", str(images), "--dataset", "elpv")
    classes = "functional,possibly_defective,likely_defective,defective"
    out = dlvm(env, "labels", str(export), "--dataset", "elpv", "--classes", classes).stdout
    assert "unknown_image" in out and "conflict" in out and "unknown_class" in out
    with session_scope(Settings(home=tmp_path / "state")) as session:
        snapshot = session.exec(select(LabelSnapshot)).one()
    assert snapshot.n_issues >= 3 and snapshot.n_labeled <= 37
    assert snapshot.classes == classes.split(",")
    # the same export again: same snapshot, no new row
    assert "(unchanged)" in dlvm(env, "labels", str(export), "--dataset", "elpv", "--classes", classes).stdout


def test_labels_rejects_a_file_that_is_not_an_export(tmp_path, prefect_api):
    images, _ = export_elpv(tmp_path / "elpv", limit=8)
    env = dlvm_env(tmp_path / "state", PREFECT_API_URL=prefect_api)
    dlvm(env, "ingest", str(images), "--dataset", "elpv")
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list of tasks"}')
    out = dlvm(env, "labels", str(bad), "--dataset", "elpv", check=False)
    assert out.returncode == 1 and "error:" in out.stdout
    out = dlvm(env, "labels", str(bad), "--dataset", "unknown-dataset", check=False)
    assert out.returncode == 1 and "unknown-dataset" in out.stdout
