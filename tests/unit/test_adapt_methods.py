"""LoRA and class-prototype adaptation: adapters, merging, prototypes, checkpoints, sweep (CPU, seconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import banded_images as bands
from torch import nn

from components.evaluation.split import label_subset
from components.evaluation.split import test_split as make_test_split
from components.models.checkpoint import load_checkpoint, save_checkpoint
from components.models.lora import LoRALinear, inject_lora, merge_lora
from components.models.vit import VisionTransformer, ViTConfig
from components.training.adapt import (
    MAX_BATCH_PIXELS,
    METHODS,
    AdaptConfig,
    Classifier,
    LinearHead,
    adapt,
    batch_for,
    build_encoder,
    extract_features,
    fit_prototypes,
    predict_proba,
    predict_proba_from_features,
)
from components.training.augment import Augment
from components.training.optim import param_groups
from components.training.recipes import demo_adapt, tiny_adapt

torch.set_num_threads(2)

VIT = ViTConfig(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def clusters(n_per_class: int, num_classes: int = 4, dim: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features in tight angular clusters around random directions, at random scales and with a
    shared offset (raw encoder features are not centred either)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(num_classes, dim))
    y = np.repeat(np.arange(num_classes), n_per_class)
    X = directions[y] + 0.15 * rng.normal(size=(len(y), dim))
    return X * rng.uniform(0.5, 5.0, size=(len(y), 1)), y


# ------------------------------------------------------------------------------ LoRA


def test_lora_linear_starts_as_base_and_merges_to_the_same_function():
    torch.manual_seed(0)
    base = nn.Linear(12, 20)
    x = torch.randn(5, 7, 12)
    reference = base(x).detach()
    lora = LoRALinear(base, rank=3, alpha=6.0)
    assert lora.scaling == 2.0 and not base.weight.requires_grad
    torch.testing.assert_close(lora(x), reference)  # B = 0: starts as the pretrained layer
    with torch.no_grad():
        lora.lora_b.normal_()
    adapted = lora(x).detach()
    assert not torch.allclose(adapted, reference)
    assert torch.linalg.matrix_rank(lora.delta()).item() == 3
    merged = lora.merge()
    assert isinstance(merged, nn.Linear) and merged is base
    torch.testing.assert_close(merged(x), adapted, atol=1e-5, rtol=1e-5)


def test_lora_trains_only_adapters_and_head_and_merges_exactly():
    torch.manual_seed(0)
    clf = Classifier(VIT, 3)
    base = {k: v.clone() for k, v in clf.state_dict().items()}
    plain_keys = set(base)
    adapters = inject_lora(clf.encoder, rank=4, alpha=8.0, targets=("qkv", "proj"))
    assert len(adapters) == 2 * VIT.depth
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    expected = {f"encoder.blocks.{i}.attn.{t}.lora_{ab}" for i in range(VIT.depth) for t in ("qkv", "proj")
                for ab in "ab"} | {"head.weight", "head.bias"}
    assert trainable == expected

    opt = torch.optim.AdamW(param_groups(clf, 0.05), lr=1e-2)
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8) % 3
    clf.train()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(clf(x), y).backward()
        for n, p in clf.named_parameters():
            assert (p.grad is not None) == (n in expected), n  # frozen weights get no gradient
        opt.step()
    # The base weights did not move; the adapters did.
    for n, p in clf.named_parameters():
        if n not in expected:
            assert torch.equal(p, base[n.replace(".base.", ".")]), n
    assert all(a.lora_b.abs().sum() > 0 for a in adapters)

    clf.eval()
    with torch.no_grad():
        unmerged = clf(x)
        merge_lora(clf.encoder)
        merged = clf(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)
    # A plain ViT again: same keys as before injection, and the same trainable flags
    # (pos_embed is a frozen parameter of a plain ViT).
    assert set(clf.state_dict()) == plain_keys
    assert not any(isinstance(m, LoRALinear) for m in clf.modules())
    assert not clf.encoder.pos_embed.requires_grad and clf.encoder.blocks[0].attn.qkv.weight.requires_grad
    assert not torch.equal(clf.encoder.blocks[0].attn.qkv.weight, base["encoder.blocks.0.attn.qkv.weight"])


def test_lora_and_method_arguments_are_checked():
    for bad in ({"lora_rank": 0}, {"lora_rank": -2}, {"lora_rank": 2.5}):
        with pytest.raises(ValueError, match="rank"):
            AdaptConfig(method="lora", **bad)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            AdaptConfig(method="lora", lora_alpha=bad)
    with pytest.raises(ValueError, match="dropout"):
        AdaptConfig(method="lora", lora_dropout=1.0)
    with pytest.raises(ValueError, match="temperature"):
        AdaptConfig(method="prototype", prototype_temperature=0.0)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0)
    with pytest.raises(ValueError, match="exceeds"):
        LoRALinear(nn.Linear(4, 4), rank=5)
    encoder = VisionTransformer(VIT)
    with pytest.raises(ValueError, match="targets"):
        inject_lora(encoder, targets=("fc1",))
    inject_lora(encoder, rank=2)
    with pytest.raises(ValueError, match="already"):
        inject_lora(encoder, rank=2)
    with pytest.raises(ValueError, match="probe, finetune, lora, prototype, svm"):
        AdaptConfig(method="distill")
    assert set(METHODS) == {"probe", "finetune", "lora", "prototype", "svm"}
    for m in METHODS:
        assert tiny_adapt(m).method == m
    assert demo_adapt("lora").method == "lora" and demo_adapt("lora").epochs == demo_adapt("finetune").epochs


def test_adapt_config_knows_every_method_and_names_unknown_ones():
    from components.training.recipes import adapt_config

    assert adapt_config("lora", "demo", seed=3) == demo_adapt("lora", seed=3)
    assert adapt_config("prototype", "demo").method == "prototype"
    assert adapt_config("lora", "tiny").method == "lora"
    with pytest.raises(ValueError, match="prototype"):
        adapt_config("distill")
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        adapt_config("probe", "nope")


def test_lora_adapt_learns_changes_only_qkv_by_low_rank_and_round_trips():
    backbone = build_encoder(VIT, None, seed=7).state_dict()
    images, y = bands(60, seed=1)
    cfg = tiny_adapt("lora", epochs=6, lr=3e-3, lora_rank=2, lp_init=False, augment=Augment.none(),
                           label_smoothing=0.0, drop_path=0.0)
    clf = adapt(VIT, backbone, images, y, 3, cfg, progress=False)
    assert clf.method == "lora" and not clf.training
    # Merged: a plain classifier's parameters; only the adapted projections differ from the
    # backbone, by an update of rank <= r.
    assert set(clf.state_dict()) == set(Classifier(VIT, 3).state_dict())
    for k, v in backbone.items():
        got = clf.encoder.state_dict()[k]
        if k.endswith("attn.qkv.weight"):
            delta = (got - v).double()
            assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta, rtol=1e-6).item() <= 2, k
        else:
            assert torch.equal(got, v), k
    test_images, test_y = bands(30, seed=2)
    proba = predict_proba(clf, test_images, device="cpu")
    assert (proba.argmax(1) == test_y).mean() >= 0.8  # chance is 1/3

    back = Classifier.from_state(load_checkpoint(save_checkpoint(clf.state())))
    assert back.method == "lora" and not back.normalize_features
    np.testing.assert_array_equal(predict_proba(back, test_images, device="cpu"), proba)


# ------------------------------------------------------------------------------ prototypes


def test_prototypes_classify_clusters_with_normalized_probabilities():
    X, y = clusters(30)
    cfg = AdaptConfig(method="prototype", prototype_temperature=0.05)
    head = fit_prototypes(X[::2], y[::2], 4, cfg)
    proba = predict_proba_from_features(head, X[1::2])
    assert (proba.argmax(1) == y[1::2]).mean() == 1.0
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert head.normalize and head.weight.shape == (4, 24)
    # logits are cosine similarities to unit-length class means, over the temperature
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    Z = unit(X[::2])
    protos = unit(np.stack([Z[y[::2] == c].mean(0) for c in range(4)]))
    np.testing.assert_allclose(head.logits(X[1::2]), unit(X[1::2]) @ protos.T / 0.05, rtol=1e-4, atol=1e-4)
    # the scale of a feature does not matter, only its direction
    np.testing.assert_allclose(head.logits(7 * X[1::2]), head.logits(X[1::2]), rtol=1e-4, atol=1e-4)
    # one example per class is enough
    one_shot = [int(np.flatnonzero(y == c)[0]) for c in range(4)]
    few = fit_prototypes(X[one_shot], y[one_shot], 4, cfg)
    assert (predict_proba_from_features(few, X).argmax(1) == y).mean() >= 0.95
    # a head round-trips through a dict; a dict from before the flag is a plain linear head
    back = LinearHead.from_dict(head.to_dict())
    assert back.normalize
    np.testing.assert_allclose(back.logits(X), head.logits(X), rtol=1e-6)
    old = {k: v for k, v in head.to_dict().items() if k != "normalize"}
    assert not LinearHead.from_dict(old).normalize


def test_prototypes_reject_missing_classes_and_bad_labels():
    X, y = clusters(3, num_classes=3)
    with pytest.raises(ValueError, match=r"class\(es\) \[3\]"):
        fit_prototypes(X, y, 4, AdaptConfig(method="prototype"))
    with pytest.raises(ValueError, match="labels must lie in"):
        fit_prototypes(X, y, 2, AdaptConfig(method="prototype"))
    with pytest.raises(ValueError, match="do not match"):
        fit_prototypes(X, y[:-1], 3, AdaptConfig(method="prototype"))


def test_prototype_adapt_matches_cached_features_and_round_trips():
    backbone = build_encoder(VIT, None, seed=3).state_dict()
    images, y = bands(30, seed=3)
    cfg = tiny_adapt("prototype")
    clf = adapt(VIT, backbone, images, y, 3, cfg, progress=False)
    assert clf.method == "prototype" and clf.normalize_features
    test_images, _ = bands(20, seed=4)
    proba = predict_proba(clf, test_images, batch_size=7, device="cpu")
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    enc = build_encoder(VIT, backbone)
    head = fit_prototypes(extract_features(enc, images), y, 3, cfg)
    np.testing.assert_allclose(predict_proba_from_features(head, extract_features(enc, test_images)), proba, atol=1e-4)
    # the encoder is untouched (no training)
    assert all(torch.equal(clf.encoder.state_dict()[k], v) for k, v in backbone.items())

    # the checkpoint the adapt flow registers: {"kind", ..., "classifier": clf.state()}
    stored = load_checkpoint(save_checkpoint({"kind": "classifier", "vit_config": VIT.to_dict(),
                                              "classes": ["a", "b", "c"], "classifier": clf.state()}))
    back = Classifier.from_state(stored["classifier"])
    assert back.method == "prototype" and back.normalize_features
    # same batch size as `proba`: a different batching may round the last bit differently
    np.testing.assert_array_equal(predict_proba(back, test_images, batch_size=7, device="cpu"), proba)

    # a checkpoint written before the flag existed loads as a plain (unnormalized) classifier
    old = dict(clf.state(), method="probe")
    del old["normalize_features"]
    assert not Classifier.from_state(old).normalize_features


# ------------------------------------------------------------------------------ sweep


def test_run_sweep_runs_prototype_on_cached_features_and_lora(monkeypatch):
    from components.evaluation.sweep import Backbone, SweepConfig, run_sweep
    from components.training import adapt as learn

    images, labels = bands(36, seed=5)
    shas = [f"{i:064x}" for i in range(len(labels))]
    train, test = make_test_split(shas, labels)
    backbones = [Backbone("scratch", VIT, None), Backbone("other", VIT, learn.build_encoder(VIT, None, 11).state_dict())]
    cfg = SweepConfig(fractions=(0.25, 1.0), seeds=(0, 1), methods=("probe", "prototype", "lora"),
                      finetune_fractions=(1.0,), finetune_seeds=(0,), n_boot=50, device="cpu",
                      probe=tiny_adapt("probe", probe_l2=1e-2),
                      lora=tiny_adapt("lora", epochs=1, probe_l2=1e-2))
    calls = []
    real_extract = learn.extract_features
    monkeypatch.setattr(learn, "extract_features", lambda *a, **k: calls.append(len(a[1])) or real_extract(*a, **k))
    res = run_sweep(backbones, images, labels, train, test, 3, cfg, progress=False)

    # one extraction per backbone shared by probe and prototype, plus each LoRA run's LP-init
    assert len(calls) == 2 + 2 * 1
    runs = {(r["backbone"], r["method"], r["fraction"], r["seed"]) for r in res.rows}
    assert len(runs) == len(res.rows) == 2 * (4 + 4 + 1)  # LoRA on the fine-tune sub-grid
    assert {m for _, m, _, _ in runs} == {"probe", "prototype", "lora"}
    assert ("other", "lora", 1.0, 0) in runs
    for row in res.rows:
        key = (row["backbone"], row["method"], row["fraction"], row["seed"])
        assert res.test_proba[key].shape == (len(test), 3)
        np.testing.assert_allclose(res.test_proba[key].sum(1), 1.0, atol=1e-4)
        assert row["n_train"] == len(label_subset(train, labels, row["fraction"], row["seed"]))
    # prototypes on the cached features are the prototypes of adapt()'s classifier
    sub = label_subset(train, labels, 0.25, 1)
    clf = adapt(VIT, backbones[1].state, images[sub], labels[sub], 3, tiny_adapt("prototype", seed=1), progress=False)
    np.testing.assert_allclose(res.test_proba[("other", "prototype", 0.25, 1)],
                               predict_proba(clf, images[test], device="cpu"), atol=1e-4)


def test_prediction_batches_shrink_for_large_images_only():
    assert batch_for(256, (10, 64, 64)) == 256  # small images: the batch asked for
    assert batch_for(256, (657, 300, 300)) == 64  # ELPV cells: the pixel budget
    assert batch_for(256, (1, 5000, 5000)) == 1  # never zero
    assert batch_for(256, (3, 300, 300)) * 300 * 300 <= MAX_BATCH_PIXELS


def test_predictions_do_not_depend_on_the_batch_size():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8), np.arange(12) % 2
    clf = adapt(VIT, None, images, labels, 2, tiny_adapt("probe"), progress=False)
    assert np.abs(predict_proba(clf, images, batch_size=5) - predict_proba(clf, images)).max() < 1e-5
    by_five = extract_features(clf.encoder, images, batch_size=5)
    assert np.abs(by_five - extract_features(clf.encoder, images)).max() < 1e-5
