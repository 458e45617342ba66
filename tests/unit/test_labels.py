"""Label snapshots from Label Studio exports: matching, every issue kind, determinism."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from components.data.elpv import (
    CLASS_NAMES_2,
    CLASS_NAMES_4,
    class_name,
    elpv_labels,
    elpv_root,
    export_elpv,
    stratified_subset,
)
from components.data.ingest import build_manifest, scan_folder
from components.labeling.snapshots import (
    LabelExportError,
    build_label_snapshot,
    from_json_bytes,
    normalize_image_ref,
    to_json_bytes,
)

TRUTH = {Path(r.path).name: class_name(r.probability) for r in elpv_labels()}


@pytest.fixture(scope="module")
def elpv_small(tmp_path_factory):
    """A real 12-image stratified ELPV subset, its Label Studio export and its manifest."""
    dest = tmp_path_factory.mktemp("elpv")
    images_dir, export_path = export_elpv(dest, limit=12, seed=3)
    manifest = build_manifest(scan_folder(dest / "images", progress=False), "elpv-small")
    return images_dir, export_path, manifest


@pytest.fixture
def export(elpv_small):
    return json.loads(elpv_small[1].read_text())


def _ann(label, who=1, cancelled=False, created="2024-02-01T00:00:00Z", ann_id=100):
    return {"id": ann_id, "completed_by": who, "was_cancelled": cancelled, "created_at": created,
            "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                        "value": {"choices": [label] if label else []}}]}


def test_elpv_classes_and_subset():
    rows = elpv_labels()
    assert len(rows) == 2624 and rows[0].path == "images/cell0001.png"
    assert {r.cell_type for r in rows} == {"mono", "poly"}
    counts = {c: sum(class_name(r.probability) == c for r in rows) for c in CLASS_NAMES_4}
    assert counts == {"functional": 1508, "possibly_defective": 295, "likely_defective": 106, "defective": 715}
    assert [class_name(p, binary=True) for p in (0, 1 / 3, 2 / 3, 1)] == ["functional", "functional",
                                                                        "defective", "defective"]
    assert CLASS_NAMES_2 == ["functional", "defective"]
    names = [class_name(r.probability) for r in rows]
    sub = stratified_subset(names, 12, seed=3)
    assert sub == stratified_subset(names, 12, seed=3) and sub != stratified_subset(names, 12, seed=4)
    assert len(sub) == 12 and {names[i] for i in sub} == set(CLASS_NAMES_4)


def test_export_round_trip_gives_the_elpv_labels(elpv_small):
    images_dir, export_path, manifest = elpv_small
    tasks = json.loads(export_path.read_text())
    assert len(tasks) == 12 == manifest["n_images"]
    task = tasks[0]
    assert task["data"]["image"].startswith("/data/local-files/?d=elpv/images/cell")
    ann = task["annotations"][0]
    assert ann["completed_by"] == 1 and ann["was_cancelled"] is False and ann["created_at"].endswith("Z")
    assert ann["result"][0]["type"] == "choices" and ann["result"][0]["from_name"] == "choice"

    snap = build_label_snapshot(export_path, manifest, CLASS_NAMES_4)
    assert snap.issues == [] and snap.classes == CLASS_NAMES_4
    assert len(snap.items) == 12
    sha = {r["path"]: r["sha256"] for r in manifest["images"]}
    for it in snap.items:
        assert it["label"] == TRUTH[Path(it["path"]).name]
        assert it["sha256"] == sha[it["path"]] and it["annotator"] == "1"
    assert snap.manifest_hash == manifest["content_hash"]
    # Images are byte copies of the package's files.
    for p in images_dir.iterdir():
        assert p.read_bytes() == (elpv_root() / "images" / p.name).read_bytes()


def test_binary_export(tmp_path):
    _, export_path = export_elpv(tmp_path, limit=6, seed=0, binary=True)
    labels = {t["annotations"][0]["result"][0]["value"]["choices"][0] for t in json.loads(export_path.read_text())}
    assert labels == set(CLASS_NAMES_2)


def test_reference_normalisation():
    assert normalize_image_ref("/data/local-files/?d=elpv/images/cell0001.png") == "elpv/images/cell0001.png"
    assert normalize_image_ref("/data/local-files/?d=my%20data/images/a%2Bb.png") == "my data/images/a+b.png"
    assert normalize_image_ref("s3://bucket/raw/images/cell0001.png") == "raw/images/cell0001.png"
    assert normalize_image_ref("https://host:9000/b/images/x.png?X-Amz-Signature=abc") == "b/images/x.png"
    assert normalize_image_ref("/data/upload/3/0a1b2c3d-cell0001.png") == "cell0001.png"
    assert normalize_image_ref("images/./cell0001.png") == "images/cell0001.png"


def test_matching_by_path_suffix(export, elpv_small):
    manifest = elpv_small[2]
    t0, t1, t2, t3 = export[:4]
    name0 = t0["data"]["image"].rsplit("/", 1)[1]
    t0["data"]["image"] = f"s3://labels-bucket/prefix/images/{name0}"
    t1["data"]["image"] = "http://ls.example/data/local-files/?d=" + "elpv/" + t1["data"]["image"].split("elpv/")[1]
    t2["data"]["image"] = "/data/upload/7/deadbeef-" + t2["data"]["image"].rsplit("/", 1)[1]
    t3["data"]["image"] = "s3://b/other-dataset/" + t3["data"]["image"].rsplit("/", 1)[1].replace(".png", "x.png")
    snap = build_label_snapshot(export, manifest, CLASS_NAMES_4)
    assert name0 in snap.labels_by_path()  # the manifest was scanned from images/: paths are file names
    assert len(snap.items) == 11  # all but t3, whose file is not in the manifest
    assert [(i["kind"], i["image"]) for i in snap.issues] == [("unknown_image", t3["data"]["image"])]


def test_ambiguous_image(tmp_path):
    src = elpv_root() / "images"
    for d in ("line1", "line2"):
        (tmp_path / d).mkdir()
        shutil.copyfile(src / ("cell0001.png" if d == "line1" else "cell0002.png"), tmp_path / d / "img.png")
    manifest = build_manifest(scan_folder(tmp_path, progress=False))
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/abcdef12-img.png"}, "annotations": [_ann("functional")]},
             {"id": 2, "data": {"image": "/data/local-files/?d=root/line2/img.png"},
              "annotations": [_ann("defective")]}]
    snap = build_label_snapshot(tasks, manifest)
    assert [(i["kind"], i["image"]) for i in snap.issues] == [("ambiguous_image", "/data/upload/1/abcdef12-img.png")]
    assert snap.labels_by_path() == {"line2/img.png": "defective"}
    assert snap.classes == ["defective"]  # no allowed list: the classes seen, sorted


def test_issue_kinds(export, elpv_small):
    manifest = elpv_small[2]
    paths = [t["data"]["image"].rsplit("/", 1)[1] for t in export]  # manifest paths: file names
    tasks = copy.deepcopy(export)
    # 0: cancelled only -> issue, not labeled
    tasks[0]["annotations"] = [_ann(TRUTH[paths[0]], cancelled=True)]
    # 1: cancelled + a real one -> issue, still labeled
    tasks[1]["annotations"].append(_ann("defective", who=2, cancelled=True))
    # 2: two annotators disagree -> conflict, excluded
    tasks[2]["annotations"] = [_ann("functional", who=1), _ann("defective", who=2)]
    # 3: two annotators agree -> fine, earliest credited
    tasks[3]["annotations"] = [_ann("defective", who=5, created="2024-03-02T00:00:00Z"),
                               _ann("defective", who={"id": 4, "email": "a@x.org"}, created="2024-03-01T00:00:00Z")]
    # 4: class not in the allowed list
    tasks[4]["annotations"] = [_ann("cracked")]
    # 5: no annotations -> unlabeled, no issue; predictions are ignored
    tasks[5]["annotations"] = []
    tasks[5]["predictions"] = [{"model_version": "m1", "result": _ann("defective")["result"]}]
    # 6: annotation with no choice
    tasks[6]["annotations"] = [_ann(None)]
    # 7: annotation with two different choices
    tasks[7]["annotations"][0]["result"][0]["value"]["choices"] = ["functional", "defective"]
    # 8: image missing from data
    del tasks[8]["data"]["image"]
    # extra: a second task for image 9 that agrees, and one for image 10 that disagrees
    dup_ok = copy.deepcopy(export[9]); dup_ok["id"] = 1009
    dup_bad = copy.deepcopy(export[10]); dup_bad["id"] = 1010
    other = "functional" if TRUTH[paths[10]] != "functional" else "defective"
    dup_bad["annotations"] = [_ann(other, who=9)]
    # extra: unknown image with labels -> issue; unknown image without labels -> nothing
    unknown = {"id": 2000, "data": {"image": "/data/local-files/?d=elpv/images/cell9999.png"},
               "annotations": [_ann("functional")]}
    unknown_unlabeled = {"id": 2001, "data": {"image": "/data/local-files/?d=elpv/images/cell9998.png"},
                         "annotations": []}
    tasks += [dup_ok, dup_bad, unknown, unknown_unlabeled]

    snap = build_label_snapshot(tasks, manifest, CLASS_NAMES_4)
    kinds = {}
    for i in snap.issues:
        kinds.setdefault(i["kind"], []).append(i["image"])
    assert kinds == {
        "cancelled": sorted([paths[0], paths[1]]),
        "conflict": sorted([paths[2], paths[10]]),
        "unknown_class": [paths[4]],
        "empty_annotation": [paths[6]],
        "multiple_choices": [paths[7]],
        "missing_image": ["task 9"],
        "unknown_image": ["/data/local-files/?d=elpv/images/cell9999.png"],
    }
    labeled = snap.labels_by_path()
    assert set(labeled) == {paths[1], paths[3], paths[9], paths[11]}
    assert labeled[paths[1]] == TRUTH[paths[1]]
    assert labeled[paths[3]] == "defective"
    item3 = next(it for it in snap.items if it["path"] == paths[3])
    assert item3["annotator"] == "a@x.org" and item3["created_at"] == "2024-03-01T00:00:00Z"
    assert "cracked" in next(i["detail"] for i in snap.issues if i["kind"] == "unknown_class")
    assert snap.issue_counts()["conflict"] == 2


def test_snapshot_is_deterministic_and_content_hashed(export, elpv_small):
    manifest = elpv_small[2]
    a = build_label_snapshot(export, manifest, CLASS_NAMES_4)
    b = build_label_snapshot(list(reversed(copy.deepcopy(export))), manifest, CLASS_NAMES_4)
    assert to_json_bytes(a) == to_json_bytes(b)
    assert from_json_bytes(to_json_bytes(a)) == a
    # Another annotator giving the same labels: same training content, same hash.
    relabeled = copy.deepcopy(export)
    for t in relabeled:
        t["annotations"][0]["completed_by"] = 42
    assert build_label_snapshot(relabeled, manifest, CLASS_NAMES_4).content_hash == a.content_hash
    # One label changed: different hash.
    flipped = copy.deepcopy(export)
    choice = flipped[0]["annotations"][0]["result"][0]["value"]["choices"]
    choice[0] = "defective" if choice[0] != "defective" else "functional"
    assert build_label_snapshot(flipped, manifest, CLASS_NAMES_4).content_hash != a.content_hash


@pytest.mark.parametrize("bad, message", [
    (b"{not json", "not valid JSON"),
    (b'{"tasks": []}', "JSON list of tasks"),
    (b'"hello"', "JSON list of tasks"),
    (b"[1, 2]", "task #0 is a int"),
    (b'[{"id": 1, "annotations": []}]', "has no 'data' object"),
    (b'[{"id": 1, "data": {}, "annotations": {"a": 1}}]', "'annotations' must be a list"),
    (b'[{"id": 1, "data": {}, "annotations": [{"result": "x"}]}]', "'result' must be a list"),
])
def test_malformed_exports_raise(tmp_path, elpv_small, bad, message):
    p = tmp_path / "export.json"
    p.write_bytes(bad)
    with pytest.raises(LabelExportError, match=message):
        build_label_snapshot(p, elpv_small[2])
    with pytest.raises(LabelExportError, match="cannot read"):
        build_label_snapshot(tmp_path / "missing.json", elpv_small[2])
