"""Box detection: the metric against hand-computed cases, the CenterNet targets / losses /
decoding, box-aware flips and turns, tiled detection, resuming training, and a tiny
end-to-end training on synthetic squares."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from components.data.access import box_set
from components.evaluation.detection import (
    average_precision,
    draw_boxes,
    evaluate_detection,
    markdown_report,
    match,
    match_image,
    mean_average_precision,
    precision_recall_f,
)
from components.models.detection import (
    CenterNet,
    CenterRegressionLoss,
    DetectorConfig,
    FocalHeatmapLoss,
    backbone_stride,
    box_iou,
    centernet_targets,
    decode,
    detector_from_state,
    detector_state,
    nms,
)
from components.models.resnet import ResNet, ResNetConfig
from components.models.vit import VisionTransformer, ViTConfig
from components.settings import Settings
from components.storage import open_store
from components.training.detect import (
    DetectConfig,
    Detector,
    _merge_windows,
    augment,
    crop_window,
    predict_boxes,
    tile_cores,
    tile_origins,
    train_detector,
)


def _pred(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "labels": np.asarray(labels, np.int64)}


def _truth(boxes, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


TRUTHS = [_truth([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1]), _truth([[5, 5, 15, 15]], [0])]


# --- the metric ------------------------------------------------------------------------


def test_perfect_predictions_score_one():
    preds = [_pred(t["boxes"], np.full(len(t["labels"]), 0.9), t["labels"]) for t in TRUTHS]
    m = evaluate_detection(preds, TRUTHS, ["a", "b"], score_threshold=0.5, n_boot=200)
    for name in ("map50", "map33", "precision33", "recall33", "fscore33"):
        assert m[name]["value"] == pytest.approx(1.0) and m[name]["ci_low"] == pytest.approx(1.0), name
    assert m["ap50_per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert m["n_test_images"] == 2 and m["n_test_boxes"] == 3


def test_empty_predictions_score_zero():
    preds = [_pred([], [], []) for _ in TRUTHS]
    m = evaluate_detection(preds, TRUTHS, ["a", "b"], n_boot=100)
    assert m["map50"]["value"] == 0.0 and m["map50"]["ci_high"] == 0.0
    assert m["recall33"]["value"] == 0.0 and m["fscore33"]["value"] == 0.0 and m["precision33"]["value"] == 0.0


def test_a_known_precision_recall_curve():
    # 4 true boxes; detections in score order: TP FP TP FP TP -> recall .25 .25 .5 .5 .75, precision 1 .5 .67 .5 .6
    # all-point AP = .25 * 1 + .25 * 2/3 + .25 * .6 (the envelope at each recall step)
    true = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
    dets = [[0, 0, 10, 10], [100, 100, 110, 110], [20, 0, 30, 10], [200, 200, 210, 210], [40, 0, 50, 10]]
    m = match([_pred(dets, [0.9, 0.8, 0.7, 0.6, 0.5], [0] * 5)], [_truth(true, [0] * 4)], 1, 0.5)
    assert m.tp.tolist() == [True, False, True, False, True]
    out = mean_average_precision(m, ["a"], n_boot=0)
    assert out["map"]["value"] == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25 * 0.6)
    # the same from the weights directly
    tp = np.array([[1, 0, 1, 0, 1]], float)
    assert average_precision(tp, 1 - tp, np.array([4]))[0] == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.15)
    # at a score threshold of 0.65: 3 kept detections, 2 true -> precision 2/3, recall 2/4
    prf = precision_recall_f(m, ["a"], 0.65, n_boot=0)
    assert prf["precision"]["value"] == pytest.approx(2 / 3) and prf["recall"]["value"] == pytest.approx(0.5)
    assert prf["fscore"]["value"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_matching_rules_duplicates_classes_and_the_iou_threshold():
    truth = _truth([[0, 0, 10, 10]], [0])
    # a second detection of the same box is a false positive; the higher score takes the box
    assert match_image(_pred([[0, 0, 10, 10], [0, 0, 10, 9]], [0.5, 0.9], [0, 0]), truth, 0.5).tolist() == [False, True]
    # a box of another class never matches
    assert match_image(_pred([[0, 0, 10, 10]], [0.9], [1]), truth, 0.5).tolist() == [False]
    # IoU exactly 0.5 does not count at 0.5 (VOC: overlap must exceed the threshold); it does at 0.33
    half = _pred([[0, 0, 10, 5]], [0.9], [0])
    assert box_iou(half["boxes"], truth["boxes"])[0, 0] == pytest.approx(0.5)
    assert match_image(half, truth, 0.5).tolist() == [False] and match_image(half, truth, 0.33).tolist() == [True]
    m = evaluate_detection([half], [truth], ["a"], n_boot=0)
    assert m["map50"]["value"] == 0.0 and m["map33"]["value"] == pytest.approx(1.0)


def test_classes_without_true_boxes_are_left_out_of_the_mean_and_bootstrap_ci_brackets_the_value():
    rng = np.random.default_rng(0)
    truths, preds = [], []
    for i in range(30):
        t = [[10 * i, 0, 10 * i + 8, 8]]
        truths.append(_truth(t, [0]))
        hit = rng.random() < 0.7
        preds.append(_pred(t if hit else [[500, 500, 510, 510]], [rng.random()], [0]))
    m = evaluate_detection(preds, truths, ["a", "never"], n_boot=300)
    assert set(m["ap50_per_class"]) == {"a"}
    assert 0 < m["map50"]["ci_low"] < m["map50"]["value"] < m["map50"]["ci_high"] < 1
    with pytest.raises(ValueError, match="no true boxes"):
        evaluate_detection([_pred([], [], [])], [_truth([], [])], ["a"], n_boot=0)


def test_report_and_drawing():
    preds = [_pred(t["boxes"], np.full(len(t["labels"]), 0.9), t["labels"]) for t in TRUTHS]
    m = evaluate_detection(preds, TRUTHS, ["a", "b"], n_boot=50)
    text = markdown_report("Detector x", m, {"dataset": "pcb v1"})
    assert "| mAP@0.5 (VOC, all-point) | 1.000 (1.000-1.000) |" in text and "| b | 1.000 |" in text
    png = draw_boxes(np.zeros((2, 40, 40), np.uint8), preds, TRUTHS, ["a", "b"], 0.5)
    assert png.startswith(b"\x89PNG")


# --- targets, losses, decoding -----------------------------------------------------------


def test_targets_put_a_peak_size_and_offset_at_each_center():
    t = centernet_targets(np.array([[8, 4, 24, 12]]), np.array([1]), 2, (8, 8), stride=4)
    # center (16, 8) px -> cell (4, 2); size 16 x 8 px -> 4 x 2 cells; offset 0
    assert t["heatmap"][1, 2, 4] == 1.0 and t["heatmap"][0].sum() == 0 and t["heatmap"][1].max() == 1.0
    assert t["mask"].sum() == 1 and t["mask"][2, 4] == 1
    assert t["size"][:, 2, 4].tolist() == [4.0, 2.0] and t["offset"][:, 2, 4].tolist() == [0.0, 0.0]
    assert t["heatmap"][1, 2, 5] == 0  # a 4 x 2 cell box: radius 0, only the center is an object
    big = centernet_targets(np.array([[0, 0, 48, 48]]), np.array([0]), 1, (16, 16), stride=4)
    assert big["heatmap"][0, 6, 6] == 1.0 and 0 < big["heatmap"][0, 6, 7] < 1  # near misses are penalised less


def test_focal_loss_rewards_the_right_heat_map_and_regression_looks_only_at_centers():
    t = centernet_targets(np.array([[8, 4, 24, 12]]), np.array([0]), 1, (8, 8), stride=4)
    target = t["heatmap"][None]
    good = torch.where(target == 1, 8.0, -8.0)
    bad = torch.where(target == 1, -8.0, 8.0)
    focal = FocalHeatmapLoss()
    assert focal(good, target) < 0.01 < focal(bad, target)
    reg = CenterRegressionLoss()
    pred = t["size"][None].clone()
    assert reg(pred, t["size"][None], t["mask"][None]) == 0
    pred[0, :, 0, 0] += 5  # wrong far from any center: not counted
    assert reg(pred, t["size"][None], t["mask"][None]) == 0
    pred[0, 0, 2, 4] += 2  # wrong at the center: counted, averaged over the two channels
    assert reg(pred, t["size"][None], t["mask"][None]).item() == pytest.approx(1.0)


def test_decoding_recovers_the_boxes_the_targets_encode():
    boxes = np.array([[8.5, 4.0, 24.5, 12.0], [40.0, 40.0, 50.0, 60.0]], np.float32)
    t = centernet_targets(boxes, np.array([1, 0]), 2, (16, 16), stride=4)
    logits = torch.where(t["heatmap"] == 1, 6.0, -6.0)[None]
    out = decode({"heatmap": logits, "size": t["size"][None], "offset": t["offset"][None]}, stride=4,
                 max_detections=10, score_threshold=0.5)[0]
    order = np.argsort(out["labels"])[::-1]
    assert out["labels"][order].tolist() == [1, 0]
    np.testing.assert_allclose(out["boxes"][order], boxes, atol=1e-4)
    assert (out["scores"] > 0.99).all()


def test_nms_keeps_the_best_of_overlapping_boxes_of_one_class_only():
    b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], np.float32)
    kept = nms(b, np.array([0.5, 0.9, 0.8]), np.array([0, 0, 1]), 0.5)
    assert kept.tolist() == [1, 2]


def test_model_shapes_stride_and_checkpoint_round_trip():
    cfg = ResNetConfig.tiny(64)
    assert backbone_stride(cfg, 2) == 4 and backbone_stride(ResNetConfig.resnet18(), 3) == 16
    model = CenterNet(ResNet(cfg), DetectorConfig(num_classes=3))
    out = model(torch.zeros(2, 1, 64, 64))
    assert out["heatmap"].shape == (2, 3, 16, 16) and out["size"].shape == (2, 2, 16, 16)
    assert torch.sigmoid(out["heatmap"]).mean().item() == pytest.approx(0.1, abs=0.05)  # the prior
    state = detector_state(model, ["a", "b", "c"], 64, {"max_detections": 10})
    again = detector_from_state(state)
    model.eval()
    x = torch.randn(1, 1, 64, 64)
    assert torch.allclose(again(x)["heatmap"], model(x)["heatmap"])
    with pytest.raises(ValueError, match="not a centernet detector"):
        detector_from_state({"kind": "anomaly"})


# --- box-aware augmentation --------------------------------------------------------------


def _bright_box(image: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(image)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_flips_and_turns_move_boxes_with_the_pixels(turns, flip):
    image = np.zeros((32, 32), np.uint8)
    image[3:9, 5:20] = 255  # x 5..20, y 3..9
    img, boxes = augment(image, np.array([[5, 3, 20, 9]]), turns, flip)
    assert boxes[0].tolist() == _bright_box(img)


def test_four_turns_are_the_identity_and_non_square_images_are_refused():
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    img, boxes = augment(image, np.array([[1, 2, 3, 4]]), 4, False)
    assert (img == image).all() and boxes.tolist() == [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match="square"):
        augment(np.zeros((8, 6), np.uint8), np.zeros((0, 4)), 1, False)


def test_a_crop_keeps_the_boxes_centered_in_it_shifted_and_clipped():
    image = np.arange(400, dtype=np.uint8).reshape(20, 20)
    boxes = np.array([[2, 2, 6, 6], [8, 8, 12, 12], [9, 10, 19, 18]], np.float32)
    img, kept, labels = crop_window(image, boxes, np.array([0, 1, 2]), top=5, left=5, size=10)
    assert (img == image[5:15, 5:15]).all()
    # the first box's center (4, 4) is outside; the third's (14, 14) is inside, cut at two edges
    assert labels.tolist() == [1, 2] and kept.tolist() == [[3, 3, 7, 7], [4, 5, 10, 10]]


def test_training_on_crops_detects_on_whole_images():
    rng = np.random.default_rng(1)
    images, boxes, labels = _squares(8, rng, size=64)
    cfg = DetectConfig(steps=3, batch_size=4, crop=32, seed=0)
    model, history = train_detector(ResNet(ResNetConfig.tiny(64)), images, boxes, labels, 2, cfg, progress=False)
    assert len(history["loss"]) == 3 and all(np.isfinite(history["loss"]))
    assert len(predict_boxes(model, images[:2], cfg)) == 2
    with pytest.raises(ValueError, match="crop"):
        DetectConfig(crop=4)


# --- training ------------------------------------------------------------------------------


def _squares(n: int, rng: np.random.Generator, size: int = 48):
    images, boxes, labels = np.zeros((n, size, size), np.uint8), [], []
    for i in range(n):
        b, lab = [], []
        for _ in range(2):
            w = int(rng.integers(6, 12))
            x, y, k = int(rng.integers(0, size - w)), int(rng.integers(0, size - w)), int(rng.integers(2))
            images[i, y:y + w, x:x + w] = 255 if k == 0 else 120
            b.append([x, y, x + w, y + w])
            lab.append(k)
        boxes.append(np.array(b, np.float32))
        labels.append(np.array(lab))
    return images, boxes, labels


def test_a_tiny_detector_learns_synthetic_squares():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images, boxes, labels = _squares(48, rng)
    test_images, test_boxes, test_labels = _squares(12, rng)
    cfg = DetectConfig(steps=80, batch_size=8, lr=3e-3, seed=0)
    model, history = train_detector(ResNet(ResNetConfig.tiny(48)), images, boxes, labels, 2, cfg, progress=False)
    assert np.mean(history["loss"][-10:]) < 0.5 * np.mean(history["loss"][:10])
    preds = predict_boxes(model, test_images, cfg)
    m = evaluate_detection(preds, [_truth(b, lab) for b, lab in zip(test_boxes, test_labels)], ["w", "g"], n_boot=0)
    assert m["map50"]["value"] > 0.5, m["map50"]
    with pytest.raises(ValueError, match="no boxes"):
        train_detector(ResNet(ResNetConfig.tiny(48)), images[:2], [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, 2, cfg)


def test_box_set_refuses_a_classification_snapshot(tmp_path):
    settings = Settings(home=tmp_path)
    stored = open_store(settings).put_bytes(json.dumps({"classes": ["good"], "items": []}).encode(), kind="labels",
                                            name="snap.json")
    snapshot = SimpleNamespace(artifact_uri=stored.uri, sha256=stored.sha256, version=3)
    with pytest.raises(ValueError, match="snapshot v3 of pcb holds image classes, not boxes: name a box snapshot"):
        box_set(settings, "pcb", None, snapshot, 64)


def test_gaussian_radius_grows_with_the_box():
    from components.models.detection import gaussian_radius
    assert 0 < gaussian_radius(4, 4) < gaussian_radius(16, 16) and not math.isnan(gaussian_radius(1, 50))


# --- tiled detection -------------------------------------------------------------------


@pytest.mark.parametrize("size,tile,overlap", [(640, 256, 0.25), (100, 48, 0.0), (97, 32, 0.5), (64, 64, 0.25)])
def test_tiles_cover_the_image_with_the_overlap_asked_and_their_cores_partition_it(size, tile, overlap):
    origins = tile_origins(size, tile, overlap)
    assert origins[0] == 0 and origins == sorted(set(origins))
    assert origins[-1] == max(0, size - tile)
    for a, b in zip(origins, origins[1:]):
        assert a + tile - b >= overlap * tile - 1  # neighbours share at least the overlap (to a pixel)
    cores = tile_cores(origins, tile, size)
    assert cores[0][0] == 0 and cores[-1][1] == size
    assert all(lo < hi and prev[1] == lo for prev, (lo, hi) in zip(cores, cores[1:]))
    for o, (lo, hi) in zip(origins, cores):
        assert o <= lo and hi <= o + tile  # a window answers only for what it sees


def test_a_defect_seen_by_two_windows_is_kept_once_and_whole():
    cfg = DetectConfig(tile=64, tile_overlap=0.25, nms_iou=None)
    origins = tile_origins(112, 64, 0.25)  # [0, 48]: overlap 48..64, cut at 56
    assert origins == [0, 48]
    windows = [(0, left, (0.0, 112.0), core) for left, core in zip(origins, tile_cores(origins, 64, 112))]
    # the defect spans x 50..60 (center 55, left of the cut): whole in both windows
    found = [_pred([[50, 10, 60, 20]], [0.9], [0]), _pred([[2, 10, 12, 20]], [0.8], [0])]
    merged = _merge_windows(found, windows, cfg)
    assert merged["boxes"].tolist() == [[50, 10, 60, 20]] and merged["scores"].tolist() == pytest.approx([0.9])
    # a defect centred right of the cut is kept from the right window only (shifted into the image)
    found = [_pred([[54, 30, 64, 40]], [0.7], [1]), _pred([[10, 30, 20, 40]], [0.6], [1])]
    assert _merge_windows(found, windows, cfg)["boxes"].tolist() == [[58, 30, 68, 40]]


def test_tiled_detection_of_a_mosaic_finds_what_each_tile_finds_alone():
    torch.manual_seed(0)
    model = CenterNet(ResNet(ResNetConfig.tiny(48)), DetectorConfig(2))
    images, _, _ = _squares(4, np.random.default_rng(3))
    mosaic = np.block([[images[0], images[1]], [images[2], images[3]]])[None]  # [1, 96, 96]
    cfg = DetectConfig(tile=48, tile_overlap=0.0, max_detections=1000, nms_iou=None)
    tiled = predict_boxes(model, mosaic, cfg)[0]
    alone = predict_boxes(model, images, DetectConfig(max_detections=1000, nms_iou=None))
    shifts = [(0, 0), (48, 0), (0, 48), (48, 48)]
    expected = np.concatenate([a["boxes"] + np.array([dx, dy, dx, dy], np.float32) for a, (dx, dy) in zip(alone, shifts)])
    scores = np.concatenate([a["scores"] for a in alone])
    order = np.argsort(-scores, kind="stable")
    assert len(tiled["boxes"]) == len(expected) > 0
    np.testing.assert_allclose(np.sort(tiled["scores"])[::-1], scores[order], rtol=1e-5)
    np.testing.assert_allclose(tiled["boxes"][np.lexsort(tiled["boxes"].T)], expected[np.lexsort(expected.T)],
                               atol=1e-3)
    with pytest.raises(ValueError, match="tile"):
        DetectConfig(tile=4)


def test_a_registered_detector_keeps_its_tiling():
    model = CenterNet(ResNet(ResNetConfig.tiny(48)), DetectorConfig(2))
    state = detector_state(model, ["a", "b"], 96, {"tile": 48, "tile_overlap": 0.5, "max_detections": 7})
    cfg = Detector.from_state(state).config
    assert (cfg.tile, cfg.tile_overlap, cfg.max_detections) == (48, 0.5, 7)
    assert Detector.from_state(detector_state(model, ["a", "b"], 96, {})).config.tile is None


# --- resuming ----------------------------------------------------------------------------


def test_detector_training_resumes_to_the_same_weights_and_refuses_other_boxes(tmp_path):
    torch.set_num_threads(1)
    images, boxes, labels = _squares(8, np.random.default_rng(5))
    cfg = DetectConfig(steps=6, batch_size=4, checkpoint_every=3, seed=0)
    ckpt = tmp_path / "detector.pt"

    def fresh():
        torch.manual_seed(0)
        return ResNet(ResNetConfig.tiny(48))

    full, history = train_detector(fresh(), images, boxes, labels, 2, cfg, progress=False, checkpoint_path=ckpt)
    assert ckpt.exists() and history["resumed_from_step"] == 0  # the step-3 state stays (the last step writes none)
    resumed, again = train_detector(fresh(), images, boxes, labels, 2, cfg, progress=False, checkpoint_path=ckpt)
    assert again["resumed_from_step"] == 3 and again["loss"] == history["loss"]
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    plain, _ = train_detector(fresh(), images, boxes, labels, 2, cfg, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), plain.state_dict().values()))

    moved = [b + 1 for b in boxes]
    with pytest.raises(ValueError, match="other images"):
        train_detector(fresh(), images, moved, labels, 2, cfg, progress=False, checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="different config"):
        train_detector(fresh(), images, boxes, labels, 2, DetectConfig(steps=6, batch_size=4, lr=1e-3),
                       progress=False, checkpoint_path=ckpt)


# --- the ViT family ------------------------------------------------------------------------


def _vit(img_size: int = 32, patch_size: int = 8) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig.tiny(img_size=img_size, patch_size=patch_size, depth=2))


def test_a_vit_detector_has_a_simple_pyramid_takes_any_multiple_of_its_patch_and_round_trips():
    vit_cfg = ViTConfig.tiny(img_size=32, patch_size=8, depth=2)
    assert [backbone_stride(vit_cfg, level) for level in (1, 2, 3)] == [2, 4, 8]
    with pytest.raises(ValueError, match="pyramid levels 1..3"):
        backbone_stride(vit_cfg, 4)
    with pytest.raises(ValueError, match="finer than a pixel"):
        backbone_stride(ViTConfig.tiny(img_size=32, patch_size=2, depth=2), 1)
    model = CenterNet(_vit(), DetectorConfig(num_classes=2)).eval()
    assert model.stride == 4 and model.input_multiple == 8
    x = torch.randn(2, 1, 64, 48)  # not the ViT's own 32 px: its position table is resized to the grid
    out = model(x)
    assert out["heatmap"].shape == (2, 2, 16, 12) and out["offset"].shape == (2, 2, 16, 12)
    coarse = CenterNet(_vit(), DetectorConfig(num_classes=2, fine_stage=3)).eval()
    assert coarse.stride == 8 and coarse(x)["heatmap"].shape == (2, 2, 8, 6) and len(coarse.pyramid[0]) == 0
    state = detector_state(model, ["a", "b"], 64, {})
    assert state["backbone_config"]["family"] == "vit"
    again = detector_from_state(state)
    assert isinstance(again.backbone, VisionTransformer) and torch.allclose(again(x)["heatmap"], out["heatmap"])
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.randn(1, 1, 36, 36))


def test_a_detector_saved_before_the_vit_family_still_loads_as_a_resnet():
    model = CenterNet(ResNet(ResNetConfig.tiny(32)), DetectorConfig(num_classes=1)).eval()
    state = detector_state(model, ["a"], 32, {})
    state["backbone_config"].pop("family")  # what detectors recorded until then
    again = detector_from_state(state)
    x = torch.randn(1, 1, 32, 32)
    assert isinstance(again.backbone, ResNet) and torch.allclose(again(x)["heatmap"], model(x)["heatmap"])


def test_the_vit_at_its_own_size_is_unchanged_and_its_map_is_its_patch_tokens():
    vit = _vit().eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(vit.grid_pos_embed(4, 4), vit.pos_embed[:, 1:])
    tokens = vit.forward_features(x)
    assert torch.allclose(vit.forward_map(x), tokens[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4))
    # a larger grid interpolates the table: its corners stay close to the original corners
    wide = vit.grid_pos_embed(8, 8).reshape(8, 8, -1)
    own = vit.pos_embed[0, 1:].reshape(4, 4, -1)
    assert torch.allclose(wide[0, 0], own[0, 0], atol=0.3) and not torch.allclose(wide[0, 0], wide[7, 7])


def test_a_vit_detector_trains_on_crops_detects_whole_images_and_refuses_sides_it_cannot_cut():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images, boxes, labels = _squares(48, rng)
    test_images, test_boxes, test_labels = _squares(12, rng)
    cfg = DetectConfig(steps=80, batch_size=8, lr=3e-3, crop=32, seed=0)
    model, history = train_detector(_vit(), images, boxes, labels, 2, cfg, progress=False)
    assert np.mean(history["loss"][-10:]) < 0.5 * np.mean(history["loss"][:10])
    preds = predict_boxes(model, test_images, cfg)  # whole 48 px images, trained on 32 px crops
    m = evaluate_detection(preds, [_truth(b, lab) for b, lab in zip(test_boxes, test_labels)], ["w", "g"], n_boot=0)
    assert m["map50"]["value"] > 0.7, m["map50"]
    for bad, what in ((DetectConfig(steps=1, crop=36), "crop 36 px"), (DetectConfig(steps=1, tile=20), "tile 20 px")):
        with pytest.raises(ValueError, match=f"the {what} is not a multiple of the ViT backbone's 8 px patches"):
            train_detector(_vit(), images[:4], boxes[:4], labels[:4], 2, bad, progress=False)
    with pytest.raises(ValueError, match="the image size 44 px"):
        predict_boxes(model, np.zeros((1, 44, 44), np.uint8), DetectConfig())
