"""Probe 12: labels of an exact copy the ingest quarantined count for the kept image, and
copies labelled differently are a conflict instead of the first path's label winning."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from components.data.ingest import build_manifest, scan_folder
from components.labeling.snapshots import build_label_snapshot


def _task(i: int, path: str, label: str) -> dict:
    return {"id": i, "data": {"image": f"/data/local-files/?d=raw/{path}"},
            "annotations": [{"id": i, "result": [{"type": "choices", "value": {"choices": [label]}}]}]}


def _folder(root: Path) -> dict:
    for name, value in (("a/one.png", 10), ("a/two.png", 200), ("b/one-copy.png", 10), ("b/two-copy.png", 200)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (20, 20), value).save(root / name)
    scan = scan_folder(root, progress=False)
    return build_manifest(scan, "d")


def test_a_duplicate_label_maps_onto_the_kept_copy(tmp_path):
    manifest = _folder(tmp_path)
    assert manifest["duplicates"] == {"b/one-copy.png": "a/one.png", "b/two-copy.png": "a/two.png"}
    snap = build_label_snapshot([_task(1, "b/one-copy.png", "good"), _task(2, "a/two.png", "bad")], manifest)
    assert {it["path"]: it["label"] for it in snap.items} == {"a/one.png": "good", "a/two.png": "bad"}
    assert snap.issues == []


def test_copies_labelled_differently_are_a_conflict(tmp_path):
    manifest = _folder(tmp_path)
    snap = build_label_snapshot([_task(1, "a/one.png", "good"), _task(2, "b/one-copy.png", "bad"),
                                 _task(3, "a/two.png", "bad"), _task(4, "b/two-copy.png", "bad")], manifest)
    assert {it["path"]: it["label"] for it in snap.items} == {"a/two.png": "bad"}
    assert [(i["image"], i["kind"]) for i in snap.issues] == [("a/one.png", "conflict")]
