"""PatchCore-style anomaly detection (components/anomaly) and its metrics (components/evaluation/anomaly.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from components.anomaly.features import FeatureConfig, patch_features
from components.anomaly.patchcore import (
    PatchCore,
    PatchCoreConfig,
    dihedral_images,
    false_alarm_threshold,
    fit_patchcore,
    greedy_coreset,
)
from components.evaluation.anomaly import (
    auroc,
    boxes_to_mask,
    evaluate_anomaly,
    heatmap_overlays,
    image_auroc,
    markdown_report,
    pick_examples,
    pixel_auroc,
)
from components.models.backbones import build_backbone
from components.models.checkpoint import load_checkpoint, save_checkpoint
from components.models.resnet import ResNetConfig
from components.models.vit import ViTConfig

torch.set_num_threads(1)
SIZE = 32


def striped(n: int, seed: int) -> np.ndarray:
    """Good images: vertical stripes with a little noise (a regular pattern, like PCB traces)."""
    rng = np.random.default_rng(seed)
    cols = (np.arange(SIZE) // 4) % 2
    base = np.broadcast_to(cols * 160 + 40, (n, SIZE, SIZE))
    return np.clip(base + rng.integers(-15, 15, size=(n, SIZE, SIZE)), 0, 255).astype(np.uint8)


def with_defects(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright 6x6 blob at a random place in each image, and its mask."""
    rng = np.random.default_rng(seed)
    out, masks = images.copy(), np.zeros(images.shape, dtype=bool)
    for i in range(len(images)):
        r, c = rng.integers(4, SIZE - 10, size=2)
        out[i, r:r + 6, c:c + 6] = 255
        out[i, r + 2:r + 4, c + 2:c + 4] = 0
        masks[i, r:r + 6, c:c + 6] = True
    return out, masks


BACKBONES = {
    "resnet": ResNetConfig.tiny(img_size=SIZE),
    "vit": ViTConfig(img_size=SIZE, patch_size=4, embed_dim=32, depth=2, num_heads=2),
}


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_patch_features_shape_for_both_families(family):
    cfg = BACKBONES[family]
    model = build_backbone(cfg, seed=0)
    feats = patch_features(model, torch.from_numpy(striped(2, 0)), FeatureConfig(cnn_stages=(2, 3), vit_blocks=(0, -1)))
    if family == "resnet":  # stride-2 stem: stage 2 at stride 4, stage 3 (upsampled onto it) 64 + 32 channels
        assert feats.shape == (2, SIZE // 4, SIZE // 4, 32 + 64)
    else:  # two blocks of 32-wide tokens on an 8x8 grid
        assert feats.shape == (2, SIZE // 4, SIZE // 4, 64)
    with pytest.raises(ValueError, match="outside"):
        patch_features(model, torch.from_numpy(striped(1, 0)), FeatureConfig(cnn_stages=(5,), vit_blocks=(7,)))


def test_greedy_coreset_covers_the_outliers():
    rng = np.random.default_rng(0)
    cloud = torch.from_numpy(rng.normal(size=(500, 8))).float()
    cloud[123] += 50  # a rare patch far from the rest: a random sample would drop it
    cloud[321] -= 50
    idx = greedy_coreset(cloud, 10, projection_dim=4, seed=1)
    assert len(set(idx.tolist())) == 10
    assert {123, 321} <= set(idx.tolist())
    assert torch.equal(greedy_coreset(cloud, 600), torch.arange(500))


def test_false_alarm_threshold_flags_at_most_the_rate():
    scores = np.arange(100, dtype=float)
    t = false_alarm_threshold(scores, 0.05)
    assert (scores > t).sum() == 5
    assert (scores > false_alarm_threshold(scores, 0.0)).sum() == 0
    assert (scores[:10] > false_alarm_threshold(scores[:10], 0.05)).sum() == 0  # too few images for 5 %
    with pytest.raises(ValueError, match="held-out good"):
        false_alarm_threshold(np.array([]), 0.01)


def test_auroc_matches_sklearn_with_ties_and_has_an_interval():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300).astype(bool)
    s = np.round(rng.normal(size=300) + y, 1)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    m = image_auroc(y, s, n_boot=200)
    assert m["ci_low"] < m["value"] < m["ci_high"]
    assert np.isnan(auroc(np.zeros(5, bool), np.arange(5)))


def test_pixel_auroc_is_close_to_the_exact_value():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 16, 16)) < 0.1
    heat = rng.normal(size=masks.shape) + 1.5 * masks
    exact = roc_auc_score(masks.ravel(), heat.ravel())
    m = pixel_auroc(heat, masks, n_bins=500, n_boot=100)
    assert m["value"] == pytest.approx(exact, abs=0.005)
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    with pytest.raises(ValueError, match="both"):
        pixel_auroc(heat, np.zeros_like(masks))


def test_boxes_scale_with_the_image():
    mask = boxes_to_mask([(320, 0, 640, 160)], (640, 640), 64)
    assert mask.sum() == 32 * 16 and mask[0, 32] and not mask[0, 31] and not mask[16, 40]


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_patchcore_finds_and_localizes_defects(family):
    cfg = BACKBONES[family]
    backbone = build_backbone(cfg, seed=0)
    good_train, good_cal, good_test = striped(12, 1), striped(20, 2), striped(10, 3)
    bad, masks = with_defects(striped(10, 4), seed=5)
    model = fit_patchcore(backbone, cfg, good_train, PatchCoreConfig(coreset_fraction=0.25, blur_sigma=1.0))
    assert 0 < model.bank.shape[0] <= 0.25 * 12 * (SIZE // 4) ** 2 + 1
    model.calibrate(good_cal, false_alarm_rate=0.05)
    images = np.concatenate([good_test, bad])
    y = np.r_[np.zeros(10, bool), np.ones(10, bool)]
    scores, heat = model.score(images)
    assert heat.shape == images.shape and heat.dtype == np.float32
    metrics = evaluate_anomaly(y, scores, model.threshold, heat, np.concatenate([np.zeros_like(masks), masks]),
                               n_boot=100)
    assert metrics["image_auroc"]["value"] > 0.9
    assert metrics["pixel_auroc"]["value"] > 0.8
    assert metrics["detection_rate"]["value"] > 0.5
    # the hottest pixel of each defective image lies on (or beside) its defect
    rows, cols = np.unravel_index(heat[10:].reshape(10, -1).argmax(1), (SIZE, SIZE))
    hits = [masks[i][max(0, r - 3):r + 4, max(0, c - 3):c + 4].any() for i, (r, c) in enumerate(zip(rows, cols))]
    assert np.mean(hits) >= 0.8
    # a checkpoint round trip scores identically and keeps the threshold
    again = PatchCore.from_state(load_checkpoint(save_checkpoint(model.state())))
    assert again.threshold == model.threshold
    np.testing.assert_allclose(again.score(images[:4])[0], scores[:4], rtol=1e-5)
    report = markdown_report("t", metrics, {"dataset": "synthetic"})
    assert "image auroc" in report and "pixel auroc" in report
    assert heatmap_overlays(images[8:12], heat[8:12], ["a", "b", "c", "d"]).startswith(b"\x89PNG")


def test_dihedral_fit_knows_good_patterns_in_every_orientation():
    image = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(1, SIZE, SIZE)  # no symmetry of its own
    eight = dihedral_images(image)
    assert eight.shape == (8, SIZE, SIZE) and len({e.tobytes() for e in eight}) == 8
    for variant in (image[0], np.rot90(image[0]), image[0, :, ::-1], image[0, ::-1, :], image[0].T):
        assert any(np.array_equal(e, variant) for e in eight)
    with pytest.raises(ValueError, match="square"):
        dihedral_images(np.zeros((1, 8, 4), np.uint8))
    # good images: vertical stripes only; the same stripes turned a quarter are just as good
    cfg = BACKBONES["resnet"]
    backbone = build_backbone(cfg, seed=0)
    good = striped(4, 1)
    turned = np.ascontiguousarray(np.rot90(striped(4, 2), 1, axes=(1, 2)))
    as_shot = fit_patchcore(backbone, cfg, good, PatchCoreConfig(coreset_fraction=0.5))
    dihedral = fit_patchcore(backbone, cfg, good, PatchCoreConfig(coreset_fraction=0.5, fit_dihedral=True))
    assert dihedral.n_good == 4 and dihedral.bank.shape[0] > as_shot.bank.shape[0]
    assert dihedral.score(turned)[0].max() < as_shot.score(turned)[0].min()
    again = PatchCore.from_state(load_checkpoint(save_checkpoint(dihedral.state())))
    assert again.cfg.fit_dihedral


def test_per_image_coreset_keeps_each_images_rare_patches():
    cfg = BACKBONES["resnet"]
    backbone = build_backbone(cfg, seed=0)
    blob_image, blob = with_defects(striped(1, 9), seed=3)  # a good image with a rare pattern
    plain = striped(8, 1)
    thinned = fit_patchcore(backbone, cfg, np.concatenate([plain, blob_image]),
                            PatchCoreConfig(coreset_fraction=0.2, image_coreset_fraction=0.25))
    without = fit_patchcore(backbone, cfg, plain, PatchCoreConfig(coreset_fraction=0.2))
    patches_per_image = (SIZE // 4) ** 2
    assert thinned.bank.shape[0] == math.ceil(0.2 * 9 * patches_per_image)  # the fraction counts all patches
    # the blob's patches survived both greedy passes: it is no longer hot (0.08 vs 0.27 without it)
    assert thinned.score(blob_image)[1][blob].mean() < 0.5 * without.score(blob_image)[1][blob].mean()
    one_each = fit_patchcore(backbone, cfg, np.concatenate([plain, blob_image]),
                             PatchCoreConfig(coreset_fraction=0.2, image_coreset_fraction=1 / patches_per_image))
    assert one_each.bank.shape[0] == 9  # the bank is chosen from what the per-image pass kept
    with pytest.raises(ValueError, match="image_coreset_fraction"):
        PatchCoreConfig(image_coreset_fraction=0.0)


def test_patchcore_refuses_bad_input():
    cfg = BACKBONES["resnet"]
    model = fit_patchcore(build_backbone(cfg, seed=0), cfg, striped(2, 0), PatchCoreConfig(max_bank=10))
    assert model.bank.shape[0] == 10
    with pytest.raises(ValueError, match="fitted on 32 px"):
        model.score(np.zeros((1, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="no threshold"):
        model.decide(np.zeros(1))
    with pytest.raises(ValueError, match="good images"):
        fit_patchcore(build_backbone(cfg, seed=0), cfg, np.zeros((0, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="not a patchcore"):
        PatchCore.from_state({"kind": "classifier"})


def test_good_images_split_into_fit_and_calibration_and_the_test_split_keeps_every_class():
    from synthetic import fake_shas

    from components.anomaly.sets import sets_from_good_images, sets_from_labels

    shas = fake_shas(50)
    sets = sets_from_good_images(shas)
    assert len(sets.test) == 0 and len(sets.calibration) == 10 and len(sets.fit) == 40
    assert not set(sets.fit) & set(sets.calibration)
    assert sets_from_good_images(list(reversed(shas))).calibration.size == 10  # by content, not order
    labels = np.arange(50) % 3  # classes a, good, c
    train, test = np.arange(0, 40), np.arange(40, 50)
    s = sets_from_labels(labels, ["a", "good", "c"], "good", shas, train, test)
    assert set(s.fit) | set(s.calibration) == {i for i in train if labels[i] == 1}
    assert s.test.tolist() == test.tolist() and s.test_is_anomaly.tolist() == (labels[test] != 1).tolist()
    with pytest.raises(ValueError, match="good class 'ok' is not a class"):
        sets_from_labels(labels, ["a", "good", "c"], "ok", shas, train, test)
    with pytest.raises(ValueError, match="at least 2 good training images"):
        sets_from_good_images(shas[:1])


def test_report_examples_are_the_top_anomalies_and_the_nearest_false_alarms():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8])
    y = np.array([False, True, False, True, False, False])
    pick, titles = pick_examples(scores, y, threshold=0.6, n=4)
    assert pick.tolist() == [1, 3, 5, 2]
    assert titles == ["anomaly 0.90 FLAGGED", "anomaly 0.70 FLAGGED", "good 0.80 FLAGGED", "good 0.50"]
    only_good, _ = pick_examples(scores[~y], np.zeros(4, bool), None, n=3)
    assert only_good.tolist() == [3, 1, 2]


def test_benchmark_script_runs_on_a_few_deeppcb_pairs(tmp_path, deeppcb, monkeypatch):
    from benchmarks.anomaly_patchcore import main

    monkeypatch.setattr("benchmarks.device_bundle.DEEPPCB", deeppcb)
    out = tmp_path / "r.json"
    result = main(["--data", "deeppcb", "--arch", "resnet-tiny", "--size", "64", "--n-fit", "2", "--n-cal", "2",
                   "--n-test", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    m = result["metrics"]
    assert m["n_test_good"] == 3 and m["n_test_anomalous"] == 3 and "pixel_auroc" in m and "image_auroc" in m
    scores = result["test_scores"]
    assert len(scores) == 6 and sum(n.endswith("_test.png") for n in scores) == 3
    other = tmp_path / "other.json"  # the same boards scored by another run: every score doubled
    other.write_text(json.dumps({"test_scores": {n: 2 * v for n, v in scores.items()}}))
    comparison = main(["--compare", str(out), str(other)])
    parts = comparison[str(out)]
    assert sum(p["boards"] for p in parts.values()) == 3  # every board is of a seen or an unseen design
    assert all(0 <= p["false_alarm_rate"] <= 1 and 0 <= p["detection_rate"] <= 1 for p in parts.values())
    diff = comparison[str(other)][f"minus_{out}"]
    assert diff["boards"] == 3 and diff["value"] == 0 and diff["ci_low"] == diff["ci_high"] == 0
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_benchmarks_refuse_a_missing_deeppcb_in_one_line(tmp_path, monkeypatch):
    from benchmarks.anomaly_patchcore import main

    monkeypatch.setattr("benchmarks.device_bundle.DEEPPCB", tmp_path / "nowhere")
    with pytest.raises(SystemExit, match=r"DeepPCB not found at .*nowhere .*DLVM_DEEPPCB"):
        main(["--data", "deeppcb", "--arch", "resnet-tiny", "--size", "64", "--n-fit", "2", "--n-test", "2"])


def test_pretrained_backbone_from_trainval_templates_feeds_the_benchmark(tmp_path, deeppcb, monkeypatch):
    from benchmarks.anomaly_patchcore import main as anomaly_main
    from benchmarks.anomaly_pretrain import deeppcb_trainval_templates, random_crops
    from benchmarks.anomaly_pretrain import main as pretrain_main

    monkeypatch.setattr("benchmarks.device_bundle.DEEPPCB", deeppcb)
    templates = deeppcb_trainval_templates(64, limit=3)
    assert templates.shape == (3, 64, 64) and templates.dtype == np.uint8
    crops = random_crops(templates, 5, 16, seed=0)
    assert crops.shape == (5, 16, 16)
    for c in crops:  # each crop is a window of one of the templates
        assert any((np.lib.stride_tricks.sliding_window_view(t, (16, 16)) == c).all(axis=(2, 3)).any()
                   for t in templates)
    weights = tmp_path / "domain.pt"
    info = pretrain_main(["--corpus", "deeppcb", "--arch", "resnet-tiny", "--scale", "64", "--crop", "32",
                          "--pool", "8", "--source-images", "3", "--steps", "2", "--batch-size", "4",
                          "--out", str(weights)])
    assert info["steps"] == 2 and info["source_images"] == 3 and info["pool"] == 8
    checkpoint = load_checkpoint(weights.read_bytes())
    assert checkpoint["backbone_config"]["img_size"] == 32 and "state_dict" in checkpoint
    result = anomaly_main(["--data", "deeppcb", "--weights", str(weights), "--size", "64", "--stages", "1",
                           "--n-fit", "2", "--n-cal", "2", "--n-test", "2", "--dihedral", "--image-coreset", "0.5",
                           "--out", str(tmp_path / "r.json")])
    assert result["weights"] == str(weights) and result["patchcore"]["fit_dihedral"]
    assert result["patchcore"]["image_coreset_fraction"] == 0.5 and "image_auroc" in result["metrics"]
