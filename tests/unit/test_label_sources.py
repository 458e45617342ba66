"""Labels from class folders, class-prefixed names and path,label CSVs: the same snapshot as
the equivalent Label Studio export (same content hash), through the same checks."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from components.data.elpv import write_label_studio_export
from components.data.ingest import build_manifest, scan_folder
from components.labeling.label_sources import (
    class_from_name,
    drop_changed_files,
    tasks_from_class_folders,
    tasks_from_csv,
    tasks_from_name_prefixes,
)
from components.labeling.snapshots import LabelExportError, build_label_snapshot

LABELS = {"crack/c1.png": "crack", "crack/deep/c2.png": "crack", "ok/o1.png": "ok", "ok/o2.png": "ok",
          "scratch/s1.png": "scratch"}


def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20), dtype=np.uint8), "L").save(path)


@pytest.fixture
def tree(tmp_path):
    """A class-per-folder tree (with a README at the top, as public sets ship), ingested as is."""
    root = tmp_path / "defects"
    for seed, rel in enumerate(LABELS):
        _image(root / rel, seed)
    (root / "README.md").write_text("class per folder\n")
    return root, build_manifest(scan_folder(root, progress=False), "defects")


def _export_snapshot(tmp_path, manifest, labels: dict[str, str], classes=None):
    export = write_label_studio_export(tmp_path / "ls.json", [f"/data/local-files/?d=defects/{p}" for p in labels],
                                       list(labels.values()))
    return build_label_snapshot(export, manifest, classes)


def test_class_folders_give_the_label_studio_exports_snapshot(tree, tmp_path):
    root, manifest = tree
    tasks = tasks_from_class_folders(root)
    assert len(tasks) == 5  # README.md carries no class: not a task
    snap = drop_changed_files(build_label_snapshot(tasks, manifest), tasks, root)
    assert snap.labels_by_path() == LABELS and not snap.issues
    assert snap.content_hash == _export_snapshot(tmp_path, manifest, LABELS).content_hash
    with_classes = build_label_snapshot(tasks, manifest, ["ok", "crack", "scratch"])
    assert with_classes.content_hash == _export_snapshot(tmp_path, manifest, LABELS,
                                                         ["ok", "crack", "scratch"]).content_hash


def test_the_same_checks_as_an_export(tree, tmp_path):
    root, manifest = tree
    extra = tmp_path / "more"
    shutil.copytree(root, extra)
    _image(extra / "ok" / "new.png", 99)                  # not in the dataset version
    shutil.copy(root / "crack" / "c1.png", extra / "ok" / "c1.png")  # same name under two classes
    tasks = tasks_from_class_folders(extra)
    snap = build_label_snapshot(tasks, manifest, ["crack", "ok"])
    kinds = {(i["image"], i["kind"]) for i in snap.issues}
    assert ("ok/new.png", "unknown_image") in kinds
    assert ("scratch/s1.png", "unknown_class") in kinds
    # 'ok/c1.png' matches no manifest path ('crack/c1.png' does not end with it): unknown too
    assert ("ok/c1.png", "unknown_image") in kinds
    assert set(snap.labels_by_path()) == {"crack/c1.png", "crack/deep/c2.png", "ok/o1.png", "ok/o2.png"}


def test_a_labeled_file_whose_pixels_differ_from_the_version_is_an_unknown_image(tree, tmp_path):
    root, manifest = tree
    _image(root / "ok" / "o2.png", 1234)  # edited after ingest
    tasks = tasks_from_class_folders(root)
    snap = drop_changed_files(build_label_snapshot(tasks, manifest), tasks, root)
    assert "ok/o2.png" not in snap.labels_by_path()
    assert [(i["image"], i["kind"]) for i in snap.issues] == [("ok/o2.png", "unknown_image")]
    expected = {p: c for p, c in LABELS.items() if p != "ok/o2.png"}
    assert snap.content_hash == _export_snapshot(tmp_path, manifest, expected).content_hash


def test_name_prefixes(tmp_path):
    flat = tmp_path / "flat"
    names = {"crack_001.png": "crack", "possibly_defective_7.png": "possibly_defective", "ok_x_1.png": "ok"}
    for seed, name in enumerate(names):
        _image(flat / name, seed)
    _image(flat / "noclass.png", 50)
    manifest = build_manifest(scan_folder(flat, progress=False), "flat")
    # Without a class list the class ends at the first separator; with one, the longest class fits.
    assert class_from_name("possibly_defective_7.png") == "possibly"
    assert class_from_name("possibly_defective_7.png", "_", ["possibly_defective", "ok"]) == "possibly_defective"
    assert class_from_name("crack-1.png", "-") == "crack" and class_from_name("noclass.png") == ""
    tasks = tasks_from_name_prefixes(flat, "_", ["crack", "possibly_defective", "ok"])
    snap = build_label_snapshot(tasks, manifest, ["crack", "possibly_defective", "ok"])
    assert snap.labels_by_path() == names
    assert [(i["image"], i["kind"]) for i in snap.issues] == [("noclass.png", "empty_annotation")]
    with pytest.raises(ValueError, match="separator"):
        tasks_from_name_prefixes(flat, "")


def test_csv_rows(tree, tmp_path):
    root, manifest = tree
    csv_path = tmp_path / "labels.csv"
    rows = ["path,label"] + [f"{p},{c}" for p, c in LABELS.items()] + ["", "ok/o1.png,crack", "nowhere.png,ok"]
    csv_path.write_text("\n".join(rows) + "\n")
    snap = build_label_snapshot(tasks_from_csv(csv_path), manifest)
    kinds = {(i["image"], i["kind"]) for i in snap.issues}
    assert kinds == {("ok/o1.png", "conflict"), ("nowhere.png", "unknown_image")}
    agreeing = {p: c for p, c in LABELS.items() if p != "ok/o1.png"}
    assert snap.labels_by_path() == agreeing
    assert snap.content_hash == _export_snapshot(tmp_path, manifest, agreeing).content_hash


def test_bad_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelExportError, match="no class sub-folders"):
        tasks_from_class_folders(tmp_path / "empty")
    with pytest.raises(NotADirectoryError):
        tasks_from_class_folders(tmp_path / "missing")
    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,ok,extra\n")
    with pytest.raises(LabelExportError, match="line 1: expected 2 columns"):
        tasks_from_csv(bad)
    bad.write_text("path,label\n")
    with pytest.raises(LabelExportError, match="no path,label rows"):
        tasks_from_csv(bad)
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(LabelExportError, match="not UTF-8"):
        tasks_from_csv(bad)
