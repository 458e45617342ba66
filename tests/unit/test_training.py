"""Pretraining, adaptation, devices and checkpoints on tiny synthetic data (CPU, seconds)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from components.models.backbones import config_from_dict
from components.models.checkpoint import load_checkpoint, save_checkpoint
from components.models.vit import VisionTransformer, ViTConfig
from components.training.adapt import (
    PROBE_L2_GRID,
    AdaptConfig,
    Classifier,
    LinearHead,
    adapt,
    build_encoder,
    extract_features,
    fit_probe,
    predict_proba,
    predict_proba_from_features,
)
from components.training.augment import Augment, augment_batch
from components.training.device import autocast_for, pick_device
from components.training.optim import cosine_lr
from components.training.pretrain import PretrainConfig, pretrain
from components.training.recipes import (
    demo_adapt,
    demo_pretrain,
    tiny_adapt,
    tiny_cnn_adapt,
    tiny_cnn_backbone,
    tiny_cnn_pretrain,
    tiny_dino_pretrain,
    tiny_pretrain,
)

torch.set_num_threads(2)


def stripes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: horizontal stripes, class 1: vertical stripes, with noise and random phase."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    coords = np.arange(size)
    imgs = np.empty((n, size, size), np.float64)
    for i in range(n):
        wave = np.sin(coords * 2 * np.pi / 8 + rng.uniform(0, 2 * np.pi))
        imgs[i] = wave[:, None] if y[i] == 0 else wave[None, :]
    imgs = 128 + 80 * imgs + rng.normal(0, 20, imgs.shape)
    return imgs.clip(0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def tiny_pretrained():
    images, _ = stripes(64)
    cfg = tiny_pretrain(steps=40)
    return cfg, pretrain(images, cfg, progress=False)


def test_pretrain_runs_and_loss_decreases(tiny_pretrained):
    cfg, result = tiny_pretrained
    assert len(result.losses) == cfg.steps
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    assert result.seconds > 0 and result.images_per_s > 0
    assert set(result.encoder_state) == set(VisionTransformer(cfg.vit).state_dict())


def test_pretrain_is_deterministic_with_seed():
    images, _ = stripes(32)
    cfg = tiny_pretrain(steps=6)
    a = pretrain(images, cfg, progress=False)
    b = pretrain(images, cfg, progress=False)
    c = pretrain(images, tiny_pretrain(steps=6, seed=1), progress=False)
    assert a.losses == b.losses
    assert all(torch.equal(a.encoder_state[k], b.encoder_state[k]) for k in a.encoder_state)
    assert not torch.equal(a.encoder_state["blocks.0.attn.qkv.weight"], c.encoder_state["blocks.0.attn.qkv.weight"])


def test_pretrain_rejects_wrong_input():
    images, _ = stripes(8, size=32)
    with pytest.raises(ValueError, match="expects 64px"):
        pretrain(images, tiny_pretrain(img_size=64), progress=False)
    with pytest.raises(ValueError, match="uint8"):
        pretrain(images.astype(np.float32), tiny_pretrain(), progress=False)


def test_pretrain_continues_from_encoder_state(tiny_pretrained):
    cfg, result = tiny_pretrained
    images, _ = stripes(32)
    cont = pretrain(images, tiny_pretrain(steps=3, lr=0.0, min_lr=0.0), progress=False, init_encoder_state=result.encoder_state)
    # lr 0: the encoder comes back exactly as it went in
    assert all(torch.equal(cont.encoder_state[k], result.encoder_state[k]) for k in result.encoder_state)


def test_augment_batch_shapes_ranges_and_identity():
    images = torch.from_numpy(stripes(8)[0])
    gen = torch.Generator().manual_seed(0)
    x = augment_batch(images, Augment(rot90=True), gen)
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32
    lo, hi = (0 - 0.449) / 0.226, (1 - 0.449) / 0.226
    assert x.min() >= lo - 1e-4 and x.max() <= hi + 1e-4
    # no augmentation: exactly the normalized input
    plain = augment_batch(images, Augment.none(), gen)
    torch.testing.assert_close(plain, (images.unsqueeze(1).float() / 255 - 0.449) / 0.226)
    # a pure horizontal flip is exact
    flip = Augment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=True, vflip=False, brightness=0.0, contrast=0.0)
    out = augment_batch(images, flip, torch.Generator().manual_seed(3))
    for i in range(8):
        assert torch.allclose(out[i], plain[i], atol=1e-4) or torch.allclose(out[i], plain[i].flip(-1), atol=1e-4)


def test_cosine_lr_schedule():
    assert cosine_lr(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 10, 1.0, floor=0.01) == pytest.approx(0.01)


def test_build_encoder_scratch_is_seeded_and_loads_state(tiny_pretrained):
    cfg, result = tiny_pretrained
    a, b, c = build_encoder(cfg.vit, None, 0), build_encoder(cfg.vit, None, 0), build_encoder(cfg.vit, None, 1)
    assert torch.equal(a.blocks[0].mlp.fc1.weight, b.blocks[0].mlp.fc1.weight)
    assert not torch.equal(a.blocks[0].mlp.fc1.weight, c.blocks[0].mlp.fc1.weight)
    loaded = build_encoder(cfg.vit, result.encoder_state)
    assert torch.equal(loaded.state_dict()["norm.weight"], result.encoder_state["norm.weight"])


def test_extract_features_shape_and_batching(tiny_pretrained):
    cfg, result = tiny_pretrained
    images, _ = stripes(10)
    enc = build_encoder(cfg.vit, result.encoder_state)
    f_all = extract_features(enc, images, batch_size=256, device="cpu")
    f_small = extract_features(enc, images, batch_size=3, device="cpu")
    assert f_all.shape == (10, cfg.vit.embed_dim) and f_all.dtype == np.float32
    np.testing.assert_allclose(f_all, f_small, atol=1e-5)


def test_fit_probe_learns_separable_task():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (3, 16)) * 3
    y = np.repeat(np.arange(3), 40)
    X = (centers[y] + rng.normal(0, 1, (120, 16))) * 5 + 100  # unstandardized on purpose
    head = fit_probe(X[::2], y[::2], 3, AdaptConfig())
    proba = predict_proba_from_features(head, X[1::2])
    assert (proba.argmax(1) == y[1::2]).mean() >= 0.95
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert head.weight.shape == (3, 16) and head.mean.shape == (16,)
    assert head.l2 in PROBE_L2_GRID
    # fixed l2 is used as given; the fit is deterministic
    fixed = fit_probe(X, y, 3, AdaptConfig(probe_l2=0.5))
    again = fit_probe(X, y, 3, AdaptConfig(probe_l2=0.5))
    assert fixed.l2 == 0.5 and np.array_equal(fixed.weight, again.weight)
    # round trip through a plain dict
    back = LinearHead.from_dict(head.to_dict())
    np.testing.assert_allclose(predict_proba_from_features(back, X), predict_proba_from_features(head, X), rtol=1e-6)


def test_fit_probe_handles_tiny_label_sets_and_bad_labels():
    X = np.random.default_rng(0).normal(size=(5, 4))
    head = fit_probe(X, np.array([0, 1, 2, 0, 1]), 3, AdaptConfig())  # too few for CV
    assert head.l2 == 1e-2
    with pytest.raises(ValueError, match="labels must lie in"):
        fit_probe(X, np.array([0, 1, 5, 0, 1]), 3, AdaptConfig())


def test_probe_adapt_separates_stripes_and_predict_proba(tiny_pretrained):
    cfg, result = tiny_pretrained
    images, y = stripes(80, seed=1)
    clf = adapt(cfg.vit, result.encoder_state, images, y, 2, tiny_adapt("probe"), progress=False)
    test_images, test_y = stripes(30, seed=2)
    proba = predict_proba(clf, test_images, batch_size=7, device="cpu")
    assert proba.shape == (30, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert (proba.argmax(1) == test_y).mean() >= 0.9
    # the classifier computes exactly what the cached-feature path computes
    enc = build_encoder(cfg.vit, result.encoder_state)
    head = fit_probe(extract_features(enc, images), y, 2, tiny_adapt("probe"))
    np.testing.assert_allclose(predict_proba_from_features(head, extract_features(enc, test_images)), proba, atol=1e-4)


def test_finetune_is_deterministic_and_moves_the_encoder(tiny_pretrained):
    cfg, result = tiny_pretrained
    images, y = stripes(48, seed=3)
    ft = tiny_adapt("finetune", epochs=2, lr=2e-3, lp_init=False)
    a = adapt(cfg.vit, result.encoder_state, images, y, 2, ft, progress=False)
    b = adapt(cfg.vit, result.encoder_state, images, y, 2, ft, progress=False)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # the encoder moved (full fine-tune), unlike a probe
    assert not torch.equal(a.encoder.blocks[0].attn.qkv.weight, result.encoder_state["blocks.0.attn.qkv.weight"])
    assert a.method == "finetune" and not a.training
    # scratch backbone runs too
    c = adapt(cfg.vit, None, images, y, 2, tiny_adapt("finetune", epochs=1), progress=False)
    assert not torch.equal(c.encoder.blocks[0].attn.qkv.weight, a.encoder.blocks[0].attn.qkv.weight)


def test_finetune_from_probe_head_learns(tiny_pretrained):
    cfg, result = tiny_pretrained
    images, y = stripes(80, seed=3)
    clf = adapt(cfg.vit, result.encoder_state, images, y, 2, tiny_adapt("finetune", epochs=3, lr=1e-3), progress=False)
    test_images, test_y = stripes(40, seed=4)
    proba = predict_proba(clf, test_images, device="cpu")
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert (proba.argmax(1) == test_y).mean() >= 0.9


def test_classifier_checkpoint_round_trip(tiny_pretrained):
    cfg, result = tiny_pretrained
    images, y = stripes(20, seed=5)
    clf = adapt(cfg.vit, result.encoder_state, images, y, 2, tiny_adapt("probe"), progress=False)
    clf.classes = ["horizontal", "vertical"]
    data = save_checkpoint(clf.state())
    assert isinstance(data, bytes)
    state = load_checkpoint(data)
    assert state["kind"] == "classifier" and state["classes"] == ["horizontal", "vertical"]
    back = Classifier.from_state(state)
    np.testing.assert_array_equal(predict_proba(back, images), predict_proba(clf, images))
    with pytest.raises(ValueError, match="not a classifier"):
        Classifier.from_state({"kind": "backbone"})


def test_checkpoint_round_trip_plain_objects(tiny_pretrained):
    cfg, result = tiny_pretrained
    head = LinearHead(np.ones((2, 3), np.float32), np.zeros(2, np.float32), np.zeros(3, np.float32), np.ones(3, np.float32), 0.1)
    obj = {
        "kind": "backbone",
        "vit_config": cfg.vit.to_dict(),
        "state_dict": result.encoder_state,
        "head": head.to_dict(),
        "classes": ["a", "b"],
        "stats": {"losses": np.array([1.0, 0.5]), "betas": (0.9, 0.95)},
    }
    back = load_checkpoint(save_checkpoint(obj))
    assert ViTConfig.from_dict(back["vit_config"]) == cfg.vit
    assert all(torch.equal(back["state_dict"][k], v) for k, v in result.encoder_state.items())
    assert LinearHead.from_dict(back["head"]).l2 == 0.1
    assert back["stats"]["betas"] == [0.9, 0.95]
    torch.testing.assert_close(back["stats"]["losses"], torch.tensor([1.0, 0.5], dtype=torch.float64))
    with pytest.raises(TypeError):
        save_checkpoint([1, 2])


def test_checkpoint_refuses_pickled_code():
    import io
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    buf = io.BytesIO()
    torch.save({"kind": "x", "payload": Evil()}, buf, pickle_module=pickle)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(buf.getvalue())


def test_device_helpers():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(autocast_for("cpu"), contextlib.nullcontext)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ValueError):
        pick_device("mps")


def test_demo_and_tiny_configs_are_consistent():
    demo = demo_pretrain()
    assert demo.vit.img_size % demo.vit.patch_size == 0 and demo.steps > 0
    assert demo_adapt("probe").method == "probe" and demo_adapt("finetune").method == "finetune"
    assert tiny_pretrain().steps <= 50
    with pytest.raises(ValueError):
        AdaptConfig(method="distill")
    d = demo.to_dict()
    assert config_from_dict(d["backbone"]) == demo.vit == demo.backbone
    old = {k: v for k, v in d.items() if k not in ("backbone", "proj_hidden_dim", "proj_dim", "channels_last")}
    old["vit"] = demo.vit.to_dict()  # a config recorded before the ResNet family
    assert PretrainConfig.from_dict(old) == demo


def test_every_training_path_runs_under_bf16_autocast(monkeypatch):
    """The GPU runs train under bf16 autocast; CI has no GPU. The CPU's bf16 autocast applies the
    same casting rules, so a dtype clash (an fp32 mask token written into a bf16 tensor, a bf16
    loss fed to fp32 statistics) fails here instead of on a lent GPU."""
    import components.training.adapt as adapt_module
    import components.training.pretrain as pretrain_module

    casts = []

    def bf16(device):
        casts.append(torch.device(device).type)
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)

    monkeypatch.setattr(pretrain_module, "autocast_for", bf16)
    monkeypatch.setattr(adapt_module, "autocast_for", bf16)
    images, labels = stripes(48)
    for cfg in (tiny_cnn_pretrain(steps=3), tiny_cnn_pretrain("vicreg", steps=3), tiny_pretrain(steps=3, method="simclr")):
        assert all(np.isfinite(pretrain(images, cfg, progress=False).losses)), cfg.method
    cnn = tiny_cnn_backbone()
    for method in ("probe", "finetune", "prototype"):
        clf = adapt(cnn, None, images, labels, 2, tiny_cnn_adapt(method, val_fraction=0.0), progress=False)
        assert predict_proba(clf, images, device="cpu").shape == (48, 2), method
    for cfg in (tiny_pretrain(steps=3), tiny_dino_pretrain(steps=3)):
        result = pretrain(images, cfg, progress=False)
        assert all(np.isfinite(result.losses)), cfg.method
    vit = tiny_pretrain().vit
    for method in ("probe", "finetune", "lora", "prototype"):
        clf = adapt(vit, result.encoder_state, images, labels, 2, tiny_adapt(method), progress=False)
        proba = predict_proba(clf, images, device="cpu")
        assert proba.shape == (48, 2) and np.allclose(proba.sum(1), 1, atol=1e-4), method
    assert len(casts) >= 8 and set(casts) == {"cpu"}  # every path went through the bf16 context


def test_a_periodic_resume_checkpoint_is_due_on_multiples_of_the_period_but_never_at_the_end():
    from components.training.resume import checkpoint_due

    assert [d for d in range(1, 11) if checkpoint_due("ckpt.pt", 3, d, 10)] == [3, 6, 9]
    assert [d for d in range(1, 10) if checkpoint_due("ckpt.pt", 3, d, 9)] == [3, 6]  # the last step writes none
    assert not any(checkpoint_due(None, 3, d, 10) for d in range(1, 11))
    assert not any(checkpoint_due("ckpt.pt", 0, d, 10) for d in range(1, 11))
