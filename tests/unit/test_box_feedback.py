"""Box pre-annotations, the detection uncertainty queue and the detector gate, without services:
Label Studio's percent coordinates both ways, the entropy score and its ranking, what a round
would post and queue, the rectangles posted, the model/project checks, and the paired mAP gate."""
from __future__ import annotations

import numpy as np
import pytest

from components.evaluation.detection import paired_map_comparison
from components.evaluation.gate import DetectorComparator, describe, detector_gate
from components.labeling.boxes import (
    boxes_from_label_studio,
    corners_to_percent,
    percent_to_corners,
)
from components.labeling.feedback import check_model_classes, plan_box_preannotations
from components.labeling.label_studio import prediction_result
from components.labeling.queue import binary_entropy, detection_uncertainty


def test_percent_coordinates_of_a_box_and_back():
    # a 640 x 320 image: x is a share of the width, y of the height
    assert corners_to_percent(64, 32, 128, 96, 640, 320) == pytest.approx(
        {"x": 10.0, "y": 10.0, "width": 10.0, "height": 20.0})
    assert percent_to_corners(10, 10, 10, 20, 640, 320) == pytest.approx((64, 32, 128, 96))
    rng = np.random.default_rng(0)
    for _ in range(50):
        w, h = rng.integers(10, 2000, size=2)
        x1, x2 = np.sort(rng.uniform(0, w, 2))
        y1, y2 = np.sort(rng.uniform(0, h, 2))
        v = corners_to_percent(x1, y1, x2, y2, w, h)
        assert percent_to_corners(v["x"], v["y"], v["width"], v["height"], w, h) == pytest.approx((x1, y1, x2, y2))
    # a detector's box reaching past the edge is cut at the edge, not shifted
    assert corners_to_percent(-5, 300, 40, 340, 640, 320) == pytest.approx(
        {"x": 0.0, "y": 93.75, "width": 6.25, "height": 6.25})
    with pytest.raises(ValueError, match="inverted box"):
        corners_to_percent(50, 10, 40, 20, 100, 100)
    with pytest.raises(ValueError, match="image size must be positive"):
        corners_to_percent(0, 0, 1, 1, 0, 100)


def test_posted_rectangles_come_back_as_the_same_pixel_boxes_through_a_box_snapshot():
    manifest = {"images": [{"path": "a.png", "sha256": "a" * 64, "width": 640, "height": 320}]}
    value = corners_to_percent(64, 32, 128, 96, 640, 320)
    result = prediction_result({"boxes": [{"label": "open", "score": 0.8, **value}], "score": 0.5})
    # a labeler accepting the pre-annotation as it is
    task = {"id": 1, "data": {"image": "a.png"}, "annotations": [{"id": 7, "result": result}]}
    snap = boxes_from_label_studio([task], manifest, ["open", "short"])
    assert not snap.issues
    (box,) = snap.items[0]["boxes"]
    assert (box["label"], box["x1"], box["y1"], box["x2"], box["y2"]) == ("open", 64, 32, 128, 96)


def test_box_prediction_result_is_label_studio_rectangles_with_scores():
    boxes = [{"label": "open", "score": 0.9, "x": 1, "y": 2, "width": 3, "height": 4},
             {"label": "short", "score": 0.4, "x": 50, "y": 60, "width": 5, "height": 6}]
    result = prediction_result({"task": 3, "score": 0.7, "boxes": boxes})
    assert [r["type"] for r in result] == ["rectanglelabels", "rectanglelabels"]
    assert [r["from_name"] for r in result] == ["label", "label"] and {r["to_name"] for r in result} == {"image"}
    assert result[1]["value"] == {"x": 50.0, "y": 60.0, "width": 5.0, "height": 6.0, "rotation": 0,
                                  "rectanglelabels": ["short"]}
    assert [r["score"] for r in result] == [0.9, 0.4] and len({r["id"] for r in result}) == 2
    assert prediction_result({"task": 3, "score": 0.7, "boxes": []}) == []  # "nothing here" is a prediction too
    assert prediction_result({"task": 3, "score": 0.7, "label": "ok"})[0]["value"] == {"choices": ["ok"]}


def test_binary_entropy_and_detection_uncertainty():
    assert binary_entropy(np.array([0.5, 0.0, 1.0])) == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)
    assert binary_entropy(np.array([0.99]))[0] == pytest.approx(0.0808, abs=1e-3)
    assert binary_entropy(np.array([0.2]))[0] == pytest.approx(binary_entropy(np.array([0.8]))[0])
    u = detection_uncertainty([np.array([0.5]), np.array([0.99, 0.01]), np.zeros(0), np.array([0.7, 0.95])])
    assert u == pytest.approx([1.0, binary_entropy(np.array([0.01]))[0], 0.0, binary_entropy(np.array([0.7]))[0]])
    # one doubtful box among many sure ones outranks an image of middling boxes: the max, not the mean
    many_sure_one_doubt = np.array([0.99] * 10 + [0.5])
    middling = np.array([0.62, 0.62])
    u = detection_uncertainty([many_sure_one_doubt, middling])
    assert u[0] > u[1]
    assert binary_entropy(many_sure_one_doubt).mean() < binary_entropy(middling).mean()  # the mean would invert it


def _tasks():
    return [{"id": 10 + i, "data": {"dlvm_sha256": f"s{i}", "dlvm_path": f"{i}.png"}, "annotations": [],
             "total_annotations": 0, "predictions": []} for i in range(5)]


def _detections():
    def d(boxes, scores, labels):
        return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
                "labels": np.asarray(labels, np.int64)}
    return [d([[0.1, 0.1, 0.2, 0.3]], [0.97], [0]),                           # sure of one box
            d([[0.5, 0.5, 0.6, 0.6], [0.0, 0.0, 0.1, 0.1]], [0.52, 0.05], [1, 0]),  # a coin toss
            d(np.zeros((0, 4)), [], []),                                       # nothing at all
            d([[0.2, 0.2, 0.4, 0.4]], [0.8], [1]),
            d([[0.3, 0.3, 0.5, 0.5]], [0.35], [0])]


def test_box_plan_posts_percent_boxes_above_the_threshold_and_queues_by_uncertainty():
    tasks = _tasks()
    tasks[3]["total_annotations"] = 1                       # labeled in the project
    sha_index = {f"s{i}": i for i in range(5)}
    features = np.eye(5, dtype=np.float32)                  # all equally far apart: diversity changes nothing
    plan = plan_box_preannotations(tasks, sha_index, _detections(), features, ["open", "short"], "pcb-detector:1",
                                   queue_size=3, show_threshold=0.3, diversity=True, labeled_shas={"s0"})
    # s0 is in the box snapshot and task 13 is annotated: neither is predicted nor queued
    assert [p["task"] for p in plan.predictions] == [11, 12, 14]
    by_task = {p["task"]: p for p in plan.predictions}
    (shown,) = by_task[11]["boxes"]                          # the 0.05 peak is below the threshold
    assert shown["label"] == "short" and shown["score"] == pytest.approx(0.52)
    assert (shown["x"], shown["y"], shown["width"], shown["height"]) == pytest.approx((50, 50, 10, 10))
    assert by_task[12]["boxes"] == [] and by_task[12]["score"] == 1.0
    assert by_task[11]["score"] == pytest.approx(1 - binary_entropy(np.array([0.52], np.float32))[0])
    assert plan.queue == [11, 14, 12]                        # entropy of 0.52 > of 0.35 > nothing found
    assert plan.uncertainty[11] > plan.uncertainty[14] > plan.uncertainty[12] == 0.0
    # a task that already has this model version's prediction is not posted again, but still queued
    tasks[1]["predictions"] = [{"model_version": "pcb-detector:1"}]
    again = plan_box_preannotations(tasks, sha_index, _detections(), features, ["open", "short"], "pcb-detector:1",
                                    queue_size=3, show_threshold=0.3, labeled_shas={"s0"})
    assert [p["task"] for p in again.predictions] == [12, 14] and again.queue == plan.queue


def test_box_queue_spreads_over_feature_space_like_the_classification_queue():
    tasks = _tasks()
    sha_index = {f"s{i}": i for i in range(5)}
    dets = [{"boxes": np.zeros((1, 4), np.float32), "scores": np.array([s], np.float32),
             "labels": np.zeros(1, np.int64)} for s in (0.5, 0.51, 0.53, 0.9, 0.97)]
    twins = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], np.float32)  # images 0 and 1 look alike
    diverse = plan_box_preannotations(tasks, sha_index, dets, twins, ["open"], "m:1", 2, 0.3, diversity=True)
    plain = plan_box_preannotations(tasks, sha_index, dets, twins, ["open"], "m:1", 2, 0.3, diversity=False)
    assert plain.queue == [10, 11]   # the two most uncertain are near-duplicates
    assert diverse.queue == [10, 12]  # the second pick goes elsewhere


def test_model_and_project_classes_are_checked_with_one_line():
    check_model_classes("pcb-detector@production", "localization", ["open"], ["open", "short"])
    with pytest.raises(ValueError, match=r"detects labels \['spur'\] that the project's labels"):
        check_model_classes("pcb-detector@production", "localization", ["open", "spur"], ["open", "short"])
    with pytest.raises(ValueError, match="predicts classes"):
        check_model_classes("elpv-classifier@production", "classification", ["b", "a"], ["a", "b"])


def _image(boxes, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


def _found(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "labels": np.asarray(labels, np.int64)}


def _test_set(n=30, seed=0):
    rng = np.random.default_rng(seed)
    truths, good, poor, nothing = [], [], [], []
    for _ in range(n):
        x, y = rng.uniform(0, 80, 2)
        box = [x, y, x + 20, y + 20]
        truths.append(_image([box], [0]))
        good.append(_found([box], [0.9], [0]))
        # half the images: a box in the wrong place scoring above the right one
        if rng.random() < 0.5:
            poor.append(_found([[x + 40, y + 40, x + 60, y + 60], box], [0.9, 0.3], [0, 0]))
        else:
            poor.append(_found([box], [0.6], [0]))
        nothing.append(_found(np.zeros((0, 4)), [], []))
    return truths, good, poor, nothing


def test_paired_map_comparison_of_detectors():
    truths, good, poor, nothing = _test_set()
    same = paired_map_comparison(good, good, truths, 1, n_boot=200)
    assert same["candidate"] == same["other"] == pytest.approx(1.0) and same["diff"] == 0
    assert not same["passed"] and same["verdict"] == "not significantly better"
    better = paired_map_comparison(good, poor, truths, 1, n_boot=500)
    assert better["passed"] and better["ci_low"] > 0 and better["candidate"] > better["other"]
    worse = paired_map_comparison(poor, good, truths, 1, rule="not_worse", n_boot=500)
    assert not worse["passed"] and worse["verdict"] == "significantly worse"
    assert paired_map_comparison(poor, nothing, truths, 1, n_boot=200)["other"] == 0.0
    with pytest.raises(ValueError, match="detected images for"):
        paired_map_comparison(good[:3], good, truths, 1)


def test_detector_gate_needs_better_than_no_boxes_and_than_the_holder():
    truths, good, poor, nothing = _test_set()
    first = detector_gate(truths, poor, [DetectorComparator("majority: no boxes", "majority", nothing)], ["open"],
                          n_boot=500)
    assert first.passed and first.metric == "map50" and "passed on map50" in first.reason
    up = detector_gate(truths, good, [DetectorComparator("majority: no boxes", "majority", nothing),
                                      DetectorComparator("holder: production v1", "holder", poor)], ["open"], n_boot=500)
    assert up.passed and set(up.comparisons) == {"majority: no boxes", "holder: production v1"}
    down = detector_gate(truths, poor, [DetectorComparator("majority: no boxes", "majority", nothing),
                                        DetectorComparator("holder: production v1", "holder", good)], ["open"],
                         n_boot=500)
    assert not down.passed and "holder: production v1: not significantly better" in down.reason
    line = describe("holder: production v1", down.comparisons["holder: production v1"], 0.95)
    assert line.startswith("FAIL  holder: production v1: map50 ") and "accuracy" not in line
    # a margin the candidate does not clear refuses it
    assert not detector_gate(truths, good, [DetectorComparator("majority: no boxes", "majority", nothing),
                                            DetectorComparator("holder: production v1", "holder", poor)],
                             ["open"], margin=0.9, n_boot=500).passed
    with pytest.raises(ValueError, match="no-boxes baseline"):
        detector_gate(truths, good, [DetectorComparator("holder: production v1", "holder", poor)], ["open"])
    with pytest.raises(ValueError, match="'majority' \\(no boxes\\) or 'holder'"):
        DetectorComparator("generic", "generic", poor)


def _box_task(tid, path, boxes, annotator="a@x"):
    result = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 100,
               "original_height": 50, "value": {**corners_to_percent(*b[1:], 100, 50), "rotation": 0,
                                                "rectanglelabels": [b[0]]}} for b in boxes]
    return {"id": tid, "data": {"dlvm_path": path},
            "annotations": [{"id": tid * 10, "result": result, "completed_by": {"email": annotator},
                             "created_at": "2026-11-30T00:00:00Z"}]}


def test_box_pull_re_derives_the_changed_images_and_keeps_the_rest():
    from components.labeling.boxes import (
        BOX_SNAPSHOT_FORMAT,
        box_snapshot_hash,
        merge_box_snapshot,
    )
    from components.labeling.feedback import new_label_count
    from components.labeling.snapshots import build_label_snapshot

    manifest = {"images": [{"path": f"{n}.png", "sha256": n * 64, "width": 100, "height": 50} for n in "abc"]}
    first = merge_box_snapshot(None, [_box_task(1, "a.png", [("open", 10, 10, 20, 20)]),
                                      _box_task(2, "b.png", [("short", 0, 0, 50, 25)])],
                               manifest, ["open", "short"], image_key="dlvm_path", origin="ls#1")
    assert first.format == BOX_SNAPSHOT_FORMAT and [it["path"] for it in first.items] == ["a.png", "b.png"]
    assert {it["origin"] for it in first.items} == {"ls#1"}
    assert first.content_hash == box_snapshot_hash(first.classes, first.items)
    # a.png's box moved, c.png labeled clean (no rectangles), b.png untouched by this pull
    second = merge_box_snapshot(first, [_box_task(1, "a.png", [("open", 30, 10, 40, 20)]), _box_task(3, "c.png", [])],
                                manifest, ["open", "short"], image_key="dlvm_path", origin="ls#1")
    by_path = {it["path"]: it for it in second.items}
    assert [(b["x1"], b["x2"]) for b in by_path["a.png"]["boxes"]] == [(30, 40)]
    assert by_path["b.png"] == first.items[1] and by_path["c.png"]["boxes"] == []
    assert second.content_hash != first.content_hash and second.format == BOX_SNAPSHOT_FORMAT
    assert new_label_count(second.items, first.items) == 2  # a moved box and a newly checked image
    # an unknown label in the pull: that image is left out with an issue, nothing else changes
    third = merge_box_snapshot(second, [_box_task(2, "b.png", [("spur", 0, 0, 5, 5)])], manifest, ["open", "short"],
                               image_key="dlvm_path")
    assert "b.png" not in {it["path"] for it in third.items}
    assert [i["kind"] for i in third.issues] == ["unknown_class"]
    classes = build_label_snapshot([], manifest, ["ok"])
    with pytest.raises(ValueError, match="a box pull merges onto a box snapshot"):
        merge_box_snapshot(classes, [], manifest, ["open"], image_key="dlvm_path")
