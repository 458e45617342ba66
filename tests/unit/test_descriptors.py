"""The descriptor backbone family (components/models/descriptors.py) and the svm adaptation
method: descriptor geometry and normalization, VLAD against hand-computed numbers, views as
permutations of the descriptor's dimensions, the Nystrom map reproducing its kernel, the
family behind the backbone interface, and an svm classifier trained, saved, reloaded and
exported like any other; the position-aware novelty bank fitted, reproduced and exported."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from components.models.backbones import build_backbone, config_from_dict, config_to_dict, family_of
from components.models.descriptors import (
    DenseDescriptor,
    DescriptorBackbone,
    DescriptorConfig,
    IntensityPatches,
    fit_descriptor_state,
    fit_novelty_projection,
    fit_position_novelty,
    novelty_statistics,
    nystrom_features,
    patch_permutation,
    position_novelty,
    view_coordinate_map,
    view_permutation,
    vlad_encode,
)
from components.models.vit import normalize_uint8
from components.training.adapt import (
    TTA_VIEWS,
    AdaptConfig,
    Classifier,
    adapt,
    fit_svm,
    novelty_class_index,
    predict_proba,
)

SMALL = DescriptorConfig(img_size=48, step=6, radii=(6, 12), clusters=4, landmarks=24)


def smooth_images(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """Random blobs, blurred: structure at several scales, no pixel noise (a one-pixel grid shift
    barely changes a descriptor of such an image)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((n, 1, size, size)).astype(np.float32))
    k = torch.ones(1, 1, 7, 7) / 49
    for _ in range(3):
        x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (3, 3, 3, 3), mode="reflect"), k)
    x = (x - x.amin((2, 3), keepdim=True)) / (x.amax((2, 3), keepdim=True) - x.amin((2, 3), keepdim=True))
    return (x[:, 0] * 255).round().to(torch.uint8).numpy()


def line_images(n: int, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth backgrounds; class 1 has a thin dark line across the image (a crack)."""
    images, y = smooth_images(n, size, seed) // 2 + 64, np.arange(n) % 2
    for i in np.flatnonzero(y):
        images[i, :, size // 2 - 1: size // 2 + 1] = 0
    return images, y


def aligned_cells(n: int, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One layout for every image (as cropped cells share theirs) with a little variation of its
    own; class 1 has a short thin dark crack somewhere, a different place in each image."""
    rng = np.random.default_rng(seed)
    layout = smooth_images(1, size, seed=99)[0].astype(np.float32)
    images = (0.8 * layout + 0.2 * smooth_images(n, size, seed)).round().astype(np.uint8)
    y = np.arange(n) % 2
    for i in np.flatnonzero(y):
        r, c = rng.integers(8, size - 8, 2)
        images[i, r: r + 2, max(c - 6, 0): c + 6] = 0
    return images, y


def test_descriptors_cover_the_grid_once_per_radius_and_are_hellinger_normalized():
    desc = DenseDescriptor(step=6, radii=(6, 12), rings=2, histograms=8, orientations=8)
    d = desc(normalize_uint8(torch.from_numpy(smooth_images(2))))
    assert d.shape == (2, desc.grid_points(48), (1 + 2 * 8) * 8) and desc.dim == d.shape[-1]
    assert desc.grid_points(48) == len(range(6, 42, 6)) ** 2 + len(range(12, 36, 6)) ** 2
    # every histogram sums to 1 before the square root: squared entries of a descriptor sum to 1
    assert float(d.min()) >= 0 and (d ** 2).sum(-1).numpy() == pytest.approx(1.0, abs=1e-3)
    # a scaled image (another exposure) has the same descriptors
    x = torch.from_numpy(smooth_images(1)).float().unsqueeze(1)
    assert torch.allclose(desc(x), desc(3 * x), atol=1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        desc(torch.zeros(1, 1, 20, 20))
    with pytest.raises(ValueError, match="bad descriptor geometry"):
        DenseDescriptor(step=0)


def test_vlad_sums_the_residuals_to_the_nearest_centre_and_normalizes():
    centres = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    descriptors = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [11.0, 10.0]]])
    # residuals: centre 0 gets (1, 3), centre 1 gets (1, 0); signed square root, per-centre and global L2
    first = np.sqrt([1.0, 3.0]) / np.linalg.norm(np.sqrt([1.0, 3.0]))
    expected = np.concatenate([first, [1.0, 0.0]]) / np.sqrt(2)
    v = vlad_encode(descriptors, centres)
    assert v[0].numpy() == pytest.approx(expected, abs=1e-5)
    assert vlad_encode(descriptors.flip(1), centres).numpy() == pytest.approx(v.numpy(), abs=1e-6)  # a bag


def test_a_view_of_the_image_is_a_permutation_of_its_descriptor_dimensions():
    desc = DenseDescriptor(step=4, radii=(6, 12), rings=2, histograms=8, orientations=8)
    x = normalize_uint8(torch.from_numpy(smooth_images(3)))
    base = desc(x)
    for view in TTA_VIEWS["dihedral"][1:]:
        direct = desc(view(x)).mean(1)  # the grid moves with the image: compare the bags' means
        permuted = base[..., view_permutation(desc, view)].mean(1)
        unpermuted = base.mean(1)
        assert float((direct - permuted).abs().max()) < 0.25 * float((direct - unpermuted).abs().max())
    assert view_coordinate_map(TTA_VIEWS["flips"][2]).tolist() == [[-1, 0], [0, 1]]  # a mirror: x -> -x
    with pytest.raises(ValueError, match="not a symmetry of the square"):
        view_coordinate_map(lambda t: t.roll(1, -1))
    with pytest.raises(ValueError, match="quarter turns need"):
        view_permutation(DenseDescriptor(histograms=6), TTA_VIEWS["dihedral"][1])
    view_permutation(DenseDescriptor(histograms=6), TTA_VIEWS["flips"][1])  # a half turn maps 6 onto 6


def test_intensity_patches_ignore_exposure_and_turn_with_the_image():
    patches = IntensityPatches(blocks=(2, 4), side=3)
    x = torch.rand(2, 1, 26, 26)  # 26: 13 blocks of 2 px; 6 of 4 px in the centred 24 px (one pixel off each side)
    windows = patches(x)
    assert [tuple(w.shape) for w in windows] == [(2, 11 * 11, 9), (2, 4 * 4, 9)]
    # each window: the block means of the standardized image, in reading order
    std = (x - x.mean((-2, -1), keepdim=True)) / (x.std((-2, -1), keepdim=True) + 1e-6)
    blocks4 = std[:, 0, 1:25, 1:25].reshape(2, 6, 4, 6, 4).mean((2, 4))
    assert torch.allclose(windows[1][:, 4 + 1], blocks4[:, 1:4, 1:4].flatten(1), atol=1e-5)  # window at row 1, col 1
    blocks2 = std[:, 0].reshape(2, 13, 2, 13, 2).mean((2, 4))
    assert torch.allclose(windows[0][:, 0], blocks2[:, :3, :3].flatten(1), atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(patches(3 * x + 40), windows))  # exposure and gain
    centres = torch.randn(5, 9)
    for view in TTA_VIEWS["dihedral"]:  # a view of the image: the same windows, each permuted
        perm = patch_permutation(3, view)
        for seen, original in zip(patches(view(x)), windows):
            assert torch.allclose(seen.sort(1).values, original[..., perm].sort(1).values, atol=1e-5)
            assert torch.allclose(vlad_encode(seen, centres), vlad_encode(original[..., perm], centres), atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        patches(torch.rand(1, 1, 10, 10))
    with pytest.raises(ValueError, match="do not fit a 48 px input"):
        DescriptorConfig(img_size=48, step=6, radii=(6, 12), patch_blocks=(10,))


def test_a_backbone_with_intensity_patches_weighs_them_half_and_old_configs_load_without():
    assert SMALL.patch_blocks == (4, 8) and SMALL.vlad_dim == 4 * (136 + 2 * 25)
    state, _ = fit_descriptor_state(smooth_images(30), SMALL, TTA_VIEWS["flips"], seed=0, progress=False)
    assert state["patch_centres"].shape == (2, 4, 25)
    encoder = build_backbone(SMALL)
    encoder.load_state_dict(state)
    x = normalize_uint8(torch.from_numpy(smooth_images(3, seed=2)))
    v = encoder.vlad_views(x, TTA_VIEWS["none"])[0]
    d = 4 * 136
    assert torch.allclose(v.norm(dim=1), torch.ones(3))
    assert torch.allclose(v[:, :d].norm(dim=1), torch.full((3,), 0.5 ** 0.5))  # the histograms' half
    assert torch.allclose(v[:, :d] * 2 ** 0.5, vlad_encode(encoder.describe(x), state["centres"]), atol=1e-6)
    # a configuration saved before intensity patches existed is a backbone without them
    saved = {k: val for k, val in config_to_dict(SMALL).items() if k != "patch_blocks"}
    old = config_from_dict(saved)
    assert old.patch_blocks == () and old.vlad_dim == 4 * 136 and build_backbone(old).patches is None


def test_the_nystrom_map_reproduces_the_kernel_on_its_landmarks():
    state, _ = fit_descriptor_state(smooth_images(30), SMALL, TTA_VIEWS["flips"], seed=0, progress=False)
    L, gamma = state["landmarks"], state["gamma"]
    phi = nystrom_features(L, L, state["projection"], gamma)
    kernel = torch.exp(-gamma * torch.cdist(L, L).pow(2))
    assert torch.allclose(phi @ phi.T, kernel, atol=2e-3)
    assert L.shape == (SMALL.landmarks, SMALL.vlad_dim) and state["centres"].shape == (4, SMALL.descriptor().dim)
    assert state["patch_centres"].shape == (len(SMALL.patch_blocks), 4, SMALL.patch_side ** 2)
    again, _ = fit_descriptor_state(smooth_images(30), SMALL, TTA_VIEWS["flips"], seed=0, progress=False)
    assert all(torch.equal(state[k], again[k]) for k in state)  # seeded: the same fit twice
    with pytest.raises(ValueError, match="fewer than the 24 landmarks"):
        fit_descriptor_state(smooth_images(5), SMALL, TTA_VIEWS["none"], progress=False)


def test_landmarks_redrawn_from_fewer_vectors_keep_the_rest_and_the_kernel_map_stays_exact():
    state, _ = fit_descriptor_state(smooth_images(30), SMALL, TTA_VIEWS["flips"], seed=0, progress=False)
    encoder = build_backbone(SMALL)
    encoder.load_state_dict(state)
    vlads = encoder.vlad_views(normalize_uint8(torch.from_numpy(smooth_images(5, seed=3))), TTA_VIEWS["flips"])
    assert encoder.set_landmarks(vlads.flatten(0, 1), seed=0) == 20
    L = encoder.landmarks
    assert torch.equal(L[:20], vlads.flatten(0, 1))  # all 20 new vectors, then 4 of the fitted landmarks
    assert all(any(torch.equal(row, old) for old in state["landmarks"]) for row in L[20:])
    phi = encoder.kernel_features(L)
    assert torch.allclose(phi @ phi.T, torch.exp(-encoder.gamma * torch.cdist(L, L).pow(2)), atol=2e-3)


def test_the_family_behind_the_backbone_interface():
    assert config_from_dict(config_to_dict(SMALL)) == SMALL and family_of(SMALL) == "descriptor"
    with pytest.raises(ValueError, match="unknown DescriptorConfig keys"):
        config_from_dict({**config_to_dict(SMALL), "depth": 3})
    with pytest.raises(ValueError, match="does not fit"):
        DescriptorConfig(img_size=20)
    encoder = build_backbone(SMALL)
    encoder.load_state_dict(fit_descriptor_state(smooth_images(30), SMALL, progress=False)[0])
    x = normalize_uint8(torch.from_numpy(smooth_images(4, seed=1)))
    pooled = encoder.forward_pool(x)
    assert pooled.shape == (4, SMALL.num_features) and torch.isfinite(pooled).all()
    views = encoder.forward_pool_views(x, TTA_VIEWS["flips"])
    assert views.shape == (4, 4, SMALL.num_features) and torch.allclose(views[0], pooled, atol=1e-5)


def test_an_svm_classifier_on_a_descriptor_backbone_learns_saves_and_exports(tmp_path):
    from components.inference.export import export_onnx, onnx_session, run_onnx

    images, y = line_images(40)
    state, _ = fit_descriptor_state(images, SMALL, TTA_VIEWS["flips"], progress=False)
    clf = adapt(SMALL, state, images, y, 2, AdaptConfig(method="svm", tta="flips"), progress=False,
                preprocess={"size": 48})
    assert clf.tta == "flips" and clf.method == "svm"
    # its kernel's landmarks were redrawn from the training images (40 images x 4 views >= 24)
    assert clf.training_log == {"landmarks_from_training_images": 24, "landmarks": 24}
    assert not torch.equal(clf.encoder.landmarks, state["landmarks"])
    test_images, y_test = line_images(20, seed=5)
    proba = predict_proba(clf, test_images)
    assert (proba.argmax(1) == y_test).mean() >= 0.9
    back = Classifier.from_state(clf.state())
    assert np.abs(predict_proba(back, test_images) - proba).max() < 1e-6
    clf.classes = ["good", "crack"]
    session = onnx_session(export_onnx(clf, "cells-svm:1"))
    exported, _ = run_onnx(session, test_images)  # the flips are in the graph
    assert np.abs(exported - proba).max() < 1e-4


def test_svm_method_refusals():
    images, y = line_images(12)
    state, _ = fit_descriptor_state(images, SMALL, TTA_VIEWS["dihedral"], progress=False)
    with pytest.raises(ValueError, match="descriptor backbone is fitted, not trained"):
        adapt(SMALL, state, images, y, 2, AdaptConfig(method="finetune"), progress=False)
    with pytest.raises(ValueError, match="none of class"):
        fit_svm(np.zeros((4, 3)), np.zeros(4, int), 2, AdaptConfig(method="svm"))
    with pytest.raises(ValueError, match="svm_c must be > 0"):
        AdaptConfig(method="svm", svm_c=0)
    # three classes: one-vs-rest gives one row per class
    head = fit_svm(np.eye(3).repeat(4, 0) + 0.01, np.arange(3).repeat(4), 3, AdaptConfig(method="svm"))
    assert head.weight.shape == (3, 3) and (head.logits(np.eye(3)).argmax(1) == np.arange(3)).all()


def test_the_views_are_the_symmetries_of_the_square_in_onnx_exportable_ops():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    expected = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    expected += [t.flip(-1) for t in expected]
    assert all(torch.equal(view(x), e) for view, e in zip(TTA_VIEWS["dihedral"], expected))
    assert [torch.equal(v(x), e) for v, e in zip(TTA_VIEWS["flips"], [expected[i] for i in (0, 2, 4, 6)])] == [True] * 4


def test_codebook_pretraining_goes_with_the_descriptor_family_and_gives_a_backbone():
    from components.training.pretrain import PretrainConfig, pretrain
    from components.training.recipes import resolve_recipe, tiny_descriptor_pretrain

    with pytest.raises(ValueError, match="codebook fitting and a descriptor backbone go together"):
        PretrainConfig(method="codebook")
    with pytest.raises(ValueError, match="go together"):
        PretrainConfig(method="simclr", backbone=SMALL)
    cfg = tiny_descriptor_pretrain()
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    result = pretrain(smooth_images(30), cfg, progress=False)
    assert len(result.losses) == 1 and result.losses[0] > 0
    build_backbone(cfg.backbone).load_state_dict(result.encoder_state)
    with pytest.raises(ValueError, match="--init-from does not apply"):
        pretrain(smooth_images(30), cfg, progress=False, init_encoder_state=result.encoder_state)
    resolved = resolve_recipe("descriptor")
    assert resolved.preprocess.size == 300 and resolved.adapt["svm"].tta == "flips"
    assert ("and intensity patches (4, 8 px blocks), VLAD of 32 centres, RBF kernel map on 2048 landmarks"
            in resolved.describe())


def test_position_novelty_is_the_distance_to_the_nearest_normal_descriptor_nearby():
    g = torch.Generator().manual_seed(0)
    query, bank = torch.randn(3, 5, 4, 6, generator=g), torch.randn(7, 5, 4, 6, generator=g)

    def brute(reach, k, same=None):
        out = torch.zeros(3, 5, 4)
        for b in range(3):
            for i in range(5):
                for j in range(4):
                    d = [float((query[b, i, j] - bank[m, y, x]).norm()) for m in range(7)
                         for y in range(max(i - reach, 0), min(i + reach + 1, 5))
                         for x in range(max(j - reach, 0), min(j + reach + 1, 4)) if same is None or not same[b, m]]
                    out[b, i, j] = float(np.mean(sorted(d)[:k]))
        return out
    for reach, k in ((0, 1), (1, 1), (1, 3), (2, 2)):
        assert torch.allclose(position_novelty(query, bank, reach, k), brute(reach, k), atol=1e-4)
    # an image in the bank is its own nearest neighbour, unless its id says it is itself
    inside = torch.cat([query[:1], bank])
    assert position_novelty(query[:1], inside, reach=1).abs().max() < 5e-3  # sqrt of rounding
    ids = torch.arange(8)
    left_out = position_novelty(query[:1], inside, 1, 1, query_ids=ids[:1], bank_ids=ids)
    assert torch.allclose(left_out, position_novelty(query[:1], bank, 1, 1), atol=1e-4)
    with pytest.raises(ValueError, match="one grid"):
        position_novelty(query, bank[:, :4])
    with pytest.raises(ValueError, match="do not fit"):
        position_novelty(query, bank, reach=0, k=8)


def test_novelty_statistics_rank_a_map_with_one_hot_spot_above_a_flat_one():
    flat, spot = torch.ones(1, 10, 10), torch.ones(1, 10, 10)
    spot[0, 3, 4] = 50.0
    stats = novelty_statistics(torch.cat([flat, spot]), torch.tensor([2.0, 10.0]))
    assert stats.shape == (2, 9)
    assert stats[1, 0] > stats[0, 0] and stats[1, 1] > stats[0, 1]  # the largest value, the top 1 %
    assert torch.allclose(stats[:, 5], torch.log(torch.tensor([1.0, 1.0]) + 1e-4))  # the median ignores one spot
    assert torch.allclose(stats[1, 7:].exp() - 1e-4, torch.tensor([0.01, 0.01]))  # one position of 100 above both


def test_a_fitted_novelty_bank_scores_an_unseen_image_as_it_scored_the_training_images_left_out():
    images, y = aligned_cells(40)
    state, _ = fit_descriptor_state(images, SMALL, TTA_VIEWS["flips"], progress=False)
    encoder = DescriptorBackbone(replace(SMALL, novelty_bank=20))
    encoder.load_state_dict(state, strict=False)
    fit_novelty_projection(encoder, images[y == 0])
    described = encoder.describe(normalize_uint8(torch.from_numpy(images)))
    projected = encoder.novelty.project(described)
    feats = fit_position_novelty(encoder, projected, y == 0, width=2.0, progress=False)
    assert feats.shape == (40, 18) and encoder.novelty.bank0.dtype == torch.float16
    assert encoder.novelty.bank0.shape == (20, 6, 6, 32) and encoder.novelty.bank1.shape == (20, 4, 4, 32)
    # standardized on the training images, then scaled to the width: each column's spread is 2
    assert torch.allclose(feats.std(0), torch.full((18,), 2.0), atol=1e-3)
    # the projection: orthonormal principal directions, the first with the most variance
    p = encoder.novelty.projection[0]
    assert torch.allclose(p.T @ p, torch.eye(32), atol=1e-4)
    variance = (projected[0].flatten(0, 2) - projected[0].flatten(0, 2).mean(0)).pow(2).mean(0)
    assert variance[0] > variance[-1]
    again = encoder.novelty(described)
    # the cracked images are not in the bank: the stored model gives them what the fit gave them
    assert torch.allclose(again[y == 1], feats[y == 1], atol=2e-3)
    # a normal training image is its own neighbour in the bank; the fit left it out, as it must
    assert (again[y == 0, 0] < feats[y == 0, 0]).all()
    # a crack is novel where the normal images have none: the largest distance ranks it higher
    test_images, y_test = aligned_cells(20, seed=5)
    unseen = encoder.novelty(encoder.describe(normalize_uint8(torch.from_numpy(test_images))))
    cracked, normal = unseen[y_test == 1, 0], unseen[y_test == 0, 0]
    assert (cracked[:, None] > normal[None]).float().mean() >= 0.95  # AUROC of the one statistic
    with pytest.raises(ValueError, match="19 normal images for a novelty bank of 20"):
        fit_position_novelty(encoder, [q[1:] for q in projected], y[1:] == 0, width=1.0, progress=False)


def test_an_svm_with_a_novelty_bank_learns_saves_and_exports():
    from components.inference.export import export_onnx, onnx_session, run_onnx

    images, y = aligned_cells(40)
    state, _ = fit_descriptor_state(images, SMALL, TTA_VIEWS["flips"], progress=False)
    clf = adapt(SMALL, state, images, y, 2, AdaptConfig(method="svm", tta="flips", novelty_class=0), progress=False,
                preprocess={"size": 48})
    assert clf.backbone_cfg.novelty_bank == 20 and clf.training_log["novelty_bank"] == 20
    assert clf.encoder.num_features == clf.head.in_features == 24 + 18
    test_images, y_test = aligned_cells(20, seed=5)
    proba = predict_proba(clf, test_images)
    assert (proba.argmax(1) == y_test).mean() >= 0.9
    back = Classifier.from_state(clf.state())
    assert back.backbone_cfg.novelty_bank == 20 and np.abs(predict_proba(back, test_images) - proba).max() < 1e-6
    clf.classes = ["good", "crack"]
    exported, _ = run_onnx(onnx_session(export_onnx(clf, "cells-svm:2")), test_images)  # bank and all in the graph
    assert np.abs(exported - proba).max() < 1e-4


def test_novelty_bank_refusals():
    images, y = line_images(12)
    state, _ = fit_descriptor_state(images, SMALL, TTA_VIEWS["flips"], progress=False)
    with pytest.raises(ValueError, match="novelty_class .* goes with the svm method"):
        AdaptConfig(method="probe", novelty_class=0)
    with pytest.raises(ValueError, match="a class index below 2"):
        adapt(SMALL, state, images, y, 2, AdaptConfig(method="svm", novelty_class=2), progress=False)
    with pytest.raises(ValueError, match="at least 2 training images of class 1"):
        adapt(SMALL, state, images, np.r_[np.zeros(11, int), 1], 2, AdaptConfig(method="svm", novelty_class=1),
              progress=False)
    with pytest.raises(ValueError, match="already carries a novelty bank"):
        adapt(replace(SMALL, novelty_bank=6), state, images, y, 2, AdaptConfig(method="svm"), progress=False)
    with pytest.raises(ValueError, match="novelty_dim in"):
        replace(SMALL, novelty_dim=500)
    # the flows' check of a user's class name, before anything runs
    assert novelty_class_index("functional", ["defective", "functional"], ["svm"]) == 1
    with pytest.raises(ValueError, match="good class 'fine' is not a class of the labels"):
        novelty_class_index("fine", ["defective", "functional"], ["svm"])
    with pytest.raises(ValueError, match="the methods here are probe"):
        novelty_class_index("functional", ["defective", "functional"], ["probe"])
