"""Box label snapshots (components/labeling/boxes.py): Label Studio RectangleLabels exports and
box CSVs, every kind of bad box reported once and nothing wrong kept."""
from __future__ import annotations

import pytest

from components.evaluation.anomaly import masks_from_box_snapshot
from components.labeling.boxes import (
    BOX_SNAPSHOT_FORMAT,
    boxes_from_csv,
    boxes_from_label_studio,
    is_box_snapshot,
)
from components.labeling.snapshots import (
    LabelExportError,
    from_json_bytes,
    to_json_bytes,
)


def to_dict(snap):
    import json
    return json.loads(to_json_bytes(snap))

MANIFEST = {"content_hash": "m", "images": [
    {"path": f"pcb/{n}.png", "sha256": f"{i:064x}", "width": 640, "height": 480}
    for i, n in enumerate(["a", "b", "c", "d", "e", "f", "g"])] + [
    {"path": "other/a.png", "sha256": "f" * 64, "width": 640, "height": 480}]}
CLASSES = ["open", "short"]


def rect(label, x, y, w, h, **extra):
    """A Label Studio rectangle in percent of a 640x480 image."""
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": label if isinstance(label, list)
             else [label], **extra}
    return {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": 640,
            "original_height": 480, "value": value}


def task(tid, image, *annotations):
    return {"id": tid, "data": {"image": f"/data/local-files/?d={image}"},
            "annotations": [{"id": tid * 10 + i, "completed_by": i + 1, "created_at": f"2024-01-0{i + 1}",
                             "result": list(result), **({"was_cancelled": True} if result is None else {})}
                            if result is not None else {"id": tid * 10 + i, "was_cancelled": True, "result": []}
                            for i, result in enumerate(annotations)]}


def test_label_studio_rectangles_become_pixel_boxes_and_every_problem_is_one_line():
    export = [
        task(1, "pcb/a.png", [rect("open", 10, 10, 5, 5), rect("short", 50, 50, 10, 10), rect("open", 10, 10, 5, 5)]),
        task(2, "pcb/b.png", []),  # checked, no defects
        task(3, "pcb/c.png", [rect("open", 95, 10, 10, 5)]),  # beyond the right edge
        task(4, "pcb/d.png", [rect("open", 10, 10, 0, 5), rect("short", 20, 20, 5, 5)]),  # zero width
        task(5, "pcb/e.png", [rect("crack", 10, 10, 5, 5)]),  # unknown class
        task(6, "pcb/f.png", [rect("open", 10, 10, 5, 5)], [rect("open", 30, 30, 5, 5)]),  # annotators disagree
        task(7, "pcb/g.png", [rect("open", 10, 10, -5, 5)], None),  # inverted, and a skipped annotation
        task(8, "nowhere/z.png", [rect("open", 10, 10, 5, 5)]),
        task(9, "a.png", [rect("open", 10, 10, 5, 5)]),  # two images end with a.png
    ]
    snap = boxes_from_label_studio(export, MANIFEST, CLASSES)
    assert snap.format == BOX_SNAPSHOT_FORMAT and is_box_snapshot(snap) and snap.classes == CLASSES
    items = {it["path"]: it for it in snap.items}
    assert sorted(items) == ["pcb/a.png", "pcb/b.png"]
    assert items["pcb/a.png"]["boxes"] == [{"label": "open", "x1": 64.0, "y1": 48.0, "x2": 96.0, "y2": 72.0},
                                           {"label": "short", "x1": 320.0, "y1": 240.0, "x2": 384.0, "y2": 288.0}]
    # the regions an anomaly model's pixel AUROC is measured against, at the model's input size
    masks, known = masks_from_box_snapshot(to_dict(snap), ["pcb/a.png", "pcb/b.png", "pcb/c.png"], 64)
    assert known.tolist() == [True, True, False] and not masks[1:].any()
    assert masks[0].sum() == 4 * 4 + 7 * 7 and masks[0][6, 7] and masks[0][32, 32] and not masks[0][5, 7]
    assert items["pcb/b.png"]["boxes"] == []
    kinds = sorted((i["image"], i["kind"]) for i in snap.issues)
    assert kinds == [("/data/local-files/?d=a.png", "ambiguous_image"),
                     ("/data/local-files/?d=nowhere/z.png", "unknown_image"),
                     ("pcb/a.png", "duplicate_box"), ("pcb/c.png", "outside_image"), ("pcb/d.png", "empty_box"),
                     ("pcb/e.png", "unknown_class"), ("pcb/f.png", "conflict"), ("pcb/g.png", "cancelled"),
                     ("pcb/g.png", "inverted_box")]
    assert all("\n" not in i["detail"] and i["detail"] for i in snap.issues)
    # the snapshot survives its JSON form, and its hash depends on the boxes
    assert from_json_bytes(to_json_bytes(snap)) == snap
    moved = [task(1, "pcb/a.png", [rect("open", 11, 10, 5, 5), rect("short", 50, 50, 10, 10)]), export[1]]
    assert boxes_from_label_studio(moved, MANIFEST, CLASSES).content_hash != \
        boxes_from_label_studio(export[:2], MANIFEST, CLASSES).content_hash


def test_rotated_and_unlabeled_rectangles_leave_the_image_out():
    export = [task(1, "pcb/a.png", [rect("open", 10, 10, 5, 5, rotation=15)]),
              task(2, "pcb/b.png", [rect([], 10, 10, 5, 5)]),
              task(3, "pcb/c.png", [rect(["open", "short"], 10, 10, 5, 5)])]
    snap = boxes_from_label_studio(export, MANIFEST, CLASSES)
    assert snap.items == []
    assert sorted(i["kind"] for i in snap.issues) == ["empty_annotation", "multiple_labels", "rotated_box"]


def test_csv_boxes_with_every_kind_of_problem(tmp_path):
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text("\n".join([
        "image,x1,y1,x2,y2,label",
        "pcb/a.png,10,20,30,40,open",
        "pcb/a.png,100,100,150,120,short",
        "pcb/a.png,10,20,30,40,open",       # duplicate
        "pcb/b.png,600,400,660,470,open",   # x2 beyond 640
        "pcb/c.png,30,20,10,40,open",       # inverted
        "pcb/d.png,10,20,10,40,open",       # empty
        "pcb/e.png,10,20,30,40,crack",      # unknown class
        "pcb/f.png,ten,20,30,40,open",      # not a number
        "pcb/g.png,0,0,640.4,480,short",    # within half a pixel: fine, clipped to the edge
        "nowhere/z.png,10,20,30,40,open",
        "pcb/g.png,1,2,3",                  # wrong number of fields
    ]) + "\n")
    snap = boxes_from_csv(csv_file, MANIFEST, CLASSES)
    items = {it["path"]: it["boxes"] for it in snap.items}
    assert sorted(items) == ["pcb/a.png", "pcb/g.png"]
    assert [b["label"] for b in items["pcb/a.png"]] == ["open", "short"]
    assert items["pcb/g.png"] == [{"label": "short", "x1": 0.0, "y1": 0.0, "x2": 640.0, "y2": 480.0}]
    assert sorted(i["kind"] for i in snap.issues) == ["bad_value", "bad_value", "duplicate_box", "empty_box",
                                                      "inverted_box", "outside_image", "unknown_class",
                                                      "unknown_image"]
    assert snap.classes == CLASSES
    assert boxes_from_csv(csv_file, MANIFEST).classes == ["crack", "open", "short"]  # no project classes: any label


@pytest.mark.parametrize("text, message", [
    ("image,x1,y1,x2,y2\npcb/a.png,1,2,3,4\n", "header must be image,x1,y1,x2,y2,label"),
    ("", "got nothing"),
])
def test_malformed_csv_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(LabelExportError, match=message):
        boxes_from_csv(path, MANIFEST)
    with pytest.raises(LabelExportError, match="cannot read"):
        boxes_from_csv(tmp_path / "missing.csv", MANIFEST)
