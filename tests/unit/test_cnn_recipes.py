"""The convolutional family through pretraining and adaptation, the fine-tune's convergence
machinery (validation split, early stopping, class balance, EMA, dihedral TTA), stated
preprocessing, the auto recipe and the CPU thread settings. Tiny configs, 32 px, seconds."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from components.data.images import ImageCache, Preprocess, decode_array
from components.data.profile import DataProfile, profile_manifest, with_labels
from components.evaluation.sweep import Backbone, SweepConfig, plan_runs, run_sweep
from components.models.backbones import checkpoint_config
from components.models.checkpoint import load_checkpoint, save_checkpoint
from components.models.resnet import ResNet, ResNetConfig
from components.training.adapt import (
    AdaptConfig,
    Classifier,
    _layer_id,
    adapt,
    predict_proba,
    resolve_class_balance,
    validation_split,
)
from components.training.augment import Augment, _apply_symmetries, augment_batch
from components.training.device import cpu_threads
from components.training.pretrain import PretrainConfig, pretrain
from components.training.recipes import (
    RECIPE_NAMES,
    describe_recipes,
    is_descriptor_recipe,
    recipe_methods,
    resolve_recipe,
    tiny_adapt,
    tiny_cnn_adapt,
    tiny_cnn_backbone,
    tiny_cnn_pretrain,
    tiny_pretrain,
)

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)


def blobs(n: int, size: int = 32, seed: int = 0, weights=(0.5, 0.5)) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: a bright square somewhere, class 1: a bright ring somewhere; noisy background."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(weights), size=n, p=np.asarray(weights) / sum(weights))
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        r = np.hypot(yy - cy, xx - cx)
        shape = (np.maximum(abs(yy - cy), abs(xx - cx)) < 5) if y[i] == 0 else ((r > 3) & (r < 6))
        out[i] = np.clip(60 + 150 * shape + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
    return out, y.astype(np.int64)


# ------------------------------------------------------------------------------ pretraining


@pytest.mark.parametrize("method", ["simclr", "vicreg"])
def test_joint_embedding_pretrains_a_resnet_deterministically(method):
    images, _ = blobs(40)
    cfg = tiny_cnn_pretrain(method, steps=12)
    a, b = pretrain(images, cfg, progress=False), pretrain(images, cfg, progress=False)
    assert a.losses == b.losses and all(math.isfinite(v) for v in a.losses)
    assert set(a.encoder_state) == set(ResNet(cfg.backbone).state_dict())
    assert all(torch.equal(a.encoder_state[k], b.encoder_state[k]) for k in a.encoder_state)
    # the weights moved, and the pretrained encoder loads as a backbone for adaptation
    fresh = ResNet(cfg.backbone).state_dict()
    assert any(not torch.equal(fresh[k], a.encoder_state[k]) for k in fresh if fresh[k].is_floating_point())
    clf = adapt(cfg.backbone, a.encoder_state, images, np.arange(40) % 2, 2, tiny_adapt("probe"), progress=False)
    assert predict_proba(clf, images, device="cpu").shape == (40, 2)


def test_simclr_on_a_vit_and_vit_only_methods_refuse_a_resnet():
    images, _ = blobs(24)
    result = pretrain(images, tiny_pretrain(method="simclr", steps=3), progress=False)
    assert len(result.losses) == 3 and "cls_token" in result.encoder_state
    for method in ("mae", "dino"):
        with pytest.raises(ValueError, match=f"{method} pretrains a ViT.*resnet backbone takes simclr or vicreg"):
            PretrainConfig(method=method, backbone=tiny_cnn_backbone())


def test_pretrain_config_round_trips_either_family_and_reads_old_vit_configs():
    cnn = tiny_cnn_pretrain(steps=7)
    assert PretrainConfig.from_dict(json.loads(json.dumps(cnn.to_dict()))) == cnn
    vit = tiny_pretrain()
    old = {k: v for k, v in json.loads(json.dumps(vit.to_dict())).items()
           if k not in ("proj_hidden_dim", "proj_dim", "channels_last")}
    old["vit"] = {k: v for k, v in old.pop("backbone").items() if k != "family"}
    back = PretrainConfig.from_dict(old)
    assert back.backbone == vit.backbone and back.vit == vit.vit
    with pytest.raises(AttributeError, match="backbone is a resnet"):
        cnn.vit


# ------------------------------------------------------------------------------ augmentation


def test_dihedral_fast_path_is_the_grid_sample_map():
    x = torch.rand(8, 1, 7, 7)
    thetas = []
    for k in range(4):
        for fx in (1.0, -1.0):
            c, s = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
            thetas.append([[c * fx, -s, 0.0], [s * fx, c, 0.0]])
    theta = torch.tensor(thetas, dtype=torch.float64)
    grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
    reference = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    assert torch.allclose(_apply_symmetries(x, theta), reference, atol=1e-6)
    # 8 distinct images: every symmetry is used and none is the same as another
    assert len({tuple(v.flatten().tolist()) for v in _apply_symmetries(x[:1].expand(8, -1, -1, -1), theta)}) == 8


def test_dihedral_augmentation_permutes_pixels_and_noise_is_seeded():
    images = torch.from_numpy(blobs(16)[0])
    out = augment_batch(images, Augment.dihedral(), torch.Generator().manual_seed(0))
    plain = augment_batch(images, Augment.none(), torch.Generator().manual_seed(0))
    assert torch.allclose(out.flatten(1).sort(1).values, plain.flatten(1).sort(1).values)  # same pixels, moved
    noisy = Augment.dihedral(noise=0.05)
    a = augment_batch(images, noisy, torch.Generator().manual_seed(3))
    b = augment_batch(images, noisy, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, augment_batch(images, Augment.dihedral(), torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------------------ fine-tuning


def test_validation_split_is_stratified_disjoint_and_skipped_when_too_small():
    y = np.array([0] * 80 + [1] * 15 + [2] * 3)
    train, val = validation_split(y, 0.1, seed=0)
    assert np.intersect1d(train, val).size == 0 and len(train) + len(val) == len(y)
    assert np.bincount(y[val], minlength=3).tolist() == [8, 2, 0]  # the 3-example class stays in training
    assert np.array_equal(validation_split(y, 0.1, seed=0)[1], val)
    assert len(validation_split(y[:20], 0.1, 0)[1]) == 0 and len(validation_split(y, 0.0, 0)[1]) == 0


def test_class_balance_auto_is_decided_from_the_labels():
    auto = AdaptConfig(method="finetune", class_balance="auto")
    assert resolve_class_balance(auto, np.array([0] * 90 + [1] * 10), 2) == "loss"
    assert resolve_class_balance(auto, np.array([0] * 60 + [1] * 40), 2) == "none"
    assert resolve_class_balance(auto, np.array([0] * 27000 + [1] * 3000), 2) == "none"  # large sets: no reweighting
    assert resolve_class_balance(AdaptConfig(class_balance="sampler"), np.array([0, 1]), 2) == "sampler"
    with pytest.raises(ValueError, match="class_balance must be one of"):
        AdaptConfig(class_balance="smote")
    with pytest.raises(ValueError, match="optimizer must be one of adamw, sgd"):
        AdaptConfig(optimizer="lion")


def test_resnet_finetune_selects_its_best_epoch_stops_early_and_records_it():
    images, y = blobs(80, weights=(0.75, 0.25))
    cfg = tiny_cnn_adapt("finetune", epochs=6, patience=2, val_fraction=0.2, batch_size=16)
    clf = adapt(tiny_cnn_backbone(), None, images, y, 2, cfg, progress=False, preprocess={"size": 32})
    log = clf.training_log
    assert log["n_val"] == 16 and log["n_train"] == 64 and log["class_balance"] == "loss"
    assert 1 <= log["epochs_run"] <= 6 and len(log["val_scores"]) == log["epochs_run"]
    assert log["best_val_balanced_accuracy"] == max(log["val_scores"])
    assert log["best_epoch"] == 1 + log["val_scores"].index(max(log["val_scores"]))
    if log["epochs_run"] < 6:
        assert log["stopped"].startswith("no better validation score")
    again = adapt(tiny_cnn_backbone(), None, images, y, 2, cfg, progress=False)
    assert again.training_log["val_scores"] == log["val_scores"]  # deterministic
    # the balanced sampler and SGD run too
    sgd = adapt(tiny_cnn_backbone(), None, images, y, 2,
                tiny_cnn_adapt("finetune", epochs=1, class_balance="sampler", optimizer="sgd", lr=0.05), progress=False)
    assert sgd.training_log["class_balance"] == "sampler" and sgd.training_log["optimizer"] == "sgd"


def test_classifier_checkpoint_keeps_family_tta_preprocessing_and_training_record():
    images, y = blobs(48)
    clf = adapt(tiny_cnn_backbone(), None, images, y, 2, tiny_cnn_adapt("finetune", epochs=2), progress=False,
                preprocess={"size": 32, "resample": "nearest", "aspect": "pad"})
    assert clf.tta == "dihedral"
    state = load_checkpoint(save_checkpoint({"kind": "classifier", "classifier": clf.state()}))["classifier"]
    assert state["backbone_config"]["family"] == "resnet" and isinstance(checkpoint_config(state), ResNetConfig)
    back = Classifier.from_state(state)
    assert back.tta == "dihedral" and back.input_spec == Preprocess(32, "nearest", "pad")
    assert back.training_log["best_epoch"] == clf.training_log["best_epoch"]
    assert np.allclose(predict_proba(back, images, device="cpu"), predict_proba(clf, images, device="cpu"), atol=1e-6)
    # dihedral TTA: predictions are invariant to turning the images
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    assert np.allclose(predict_proba(back, turned, device="cpu"), predict_proba(back, images, device="cpu"), atol=1e-5)


def test_lora_needs_a_vit_and_the_sweep_leaves_it_out_for_resnets():
    images, y = blobs(40)
    with pytest.raises(ValueError, match="lora adapts a ViT's attention projections"):
        adapt(tiny_cnn_backbone(), None, images, y, 2, tiny_adapt("lora"), progress=False)
    cnn = Backbone("cnn", tiny_cnn_backbone())
    cfg = SweepConfig(fractions=(1.0,), seeds=(0,), methods=("probe", "finetune", "lora"), n_boot=50,
                      finetune=tiny_cnn_adapt("finetune", epochs=1), device="cpu")
    assert [r[1] for r in plan_runs([cnn], cfg)] == ["probe", "finetune"]
    result = run_sweep([cnn], images, y, np.arange(30), np.arange(30, 40), 2, cfg, progress=False)
    assert [r["method"] for r in result.rows] == ["probe", "finetune"]
    assert result.backbones[0]["backbone_config"]["family"] == "resnet"


def test_layer_decay_groups_resnet_stages():
    names = [n for n, _ in ResNet(tiny_cnn_backbone()).named_parameters()]
    ids = {n: _layer_id(n, 3, "resnet") for n in names}
    assert ids["conv1.weight"] == 0 and ids["layer1.0.conv1.weight"] == 1 and ids["layer3.0.bn2.bias"] == 3
    assert _layer_id("head.weight", 3, "resnet") == 4


# ------------------------------------------------------------------------------ preprocessing and profile


def test_preprocess_nearest_keeps_levels_pad_keeps_aspect_and_cache_keys_differ(tmp_path):
    levels = np.zeros((30, 60), np.uint8)
    levels[:, 20:40] = 127
    levels[10:20, :] = 255
    img = Image.fromarray(levels, "L")
    nearest = decode_array(img, Preprocess(16, "nearest", "stretch"))
    assert set(np.unique(nearest).tolist()) <= {0, 127, 255}
    assert len(np.unique(decode_array(img, 16))) > 3  # bicubic invents levels
    padded = decode_array(img, Preprocess(16, "nearest", "pad"))
    assert padded.shape == (16, 16) and (padded[:4] == 0).all() and (padded[-4:] == 0).all()  # 16x8 band, centred
    manifest = {"content_hash": "ab" * 32, "images": []}
    cache = ImageCache(tmp_path)
    assert cache.path_for(manifest, 32).name == f"{'ab' * 8}-32.npy"  # the old name for the old default
    assert cache.path_for(manifest, Preprocess(32, "nearest", "pad")) != cache.path_for(manifest, 32)
    with pytest.raises(ValueError, match="resample must be one of bicubic, nearest"):
        Preprocess(32, "lanczos")
    assert Preprocess.coerce({"size": 32}) == Preprocess(32) and "nearest" in Preprocess(8, "nearest").describe()


def test_profile_tells_categorical_maps_from_photographs(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i in range(5):
        Image.fromarray((rng.integers(0, 3, (40, 44)) * 127).astype(np.uint8), "L").save(tmp_path / f"m{i}.png")
        records.append({"path": f"m{i}.png", "width": 44, "height": 40})
    maps = profile_manifest({"images": records}, tmp_path)
    assert maps.categorical and maps.n_images == 5 and maps.median_short_side == 40
    Image.fromarray(rng.integers(0, 256, (40, 44)).astype(np.uint8), "L").save(tmp_path / "m0.png")
    assert not profile_manifest({"images": records}, tmp_path).categorical
    labeled = with_labels(maps, [0, 0, 0, 0, 0, 0, 1, 1])
    assert (labeled.n_labels, labeled.n_classes, labeled.imbalance) == (8, 2, 3.0)


# ------------------------------------------------------------------------------ recipes


def test_auto_recipe_follows_the_data_and_the_device():
    elpv = DataProfile(2624, 300, 300, 1.0, False, 2624, 4, 14.2)
    r = resolve_recipe("auto", elpv, budget_minutes=20)
    assert r.preprocess == Preprocess(192, "bicubic", "stretch") and isinstance(r.backbone, ResNetConfig)
    assert r.pretrain.method == "simclr" and r.backbone.img_size == 192
    ft = r.adapt["finetune"]
    assert ft.val_fraction > 0 and ft.patience >= ft.epochs // 2 and ft.tta == "dihedral"
    assert ft.class_balance == "none" and ft.class_offsets == "macro_f1"  # offsets, not loss weights, for imbalance
    assert any("handled by the class offsets for macro_f1" in reason for reason in r.reasons)
    assert "192x192 px" in r.describe()
    longer = resolve_recipe("auto", elpv, budget_minutes=60).adapt["finetune"]
    assert longer.epochs > ft.epochs
    maps = DataProfile(60000, 40, 40, 1.0, True, 37000, 9, 100.0)
    m = resolve_recipe("auto", maps)
    assert m.preprocess == Preprocess(64, "nearest", "stretch") and m.adapt["finetune"].optimizer == "sgd"
    wide = resolve_recipe("auto", DataProfile(500, 400, 200, 2.0))
    assert wide.preprocess.aspect == "pad" and wide.adapt["finetune"].tta == "none"
    small = resolve_recipe("auto", DataProfile(500, 48, 48, 1.0))
    assert small.preprocess.size == 48  # never above the images' own size
    gpu = resolve_recipe("auto", elpv, device="cuda")
    assert gpu.backbone.widths == (64, 128, 256, 512) and gpu.preprocess.size == 224
    with pytest.raises(ValueError, match="auto recipe is chosen from the data"):
        resolve_recipe("auto")
    assert resolve_recipe("auto", elpv, method="vicreg").pretrain.method == "vicreg"
    with pytest.raises(ValueError, match="recipe 'auto' has no 'mae' pretraining here"):
        resolve_recipe("auto", elpv, method="mae")


def test_a_short_cpu_budget_buys_epochs_with_pixels_down_to_128():
    from components.training.recipes import MIN_FINETUNE_EPOCHS

    elpv = DataProfile(2624, 300, 300, 1.0, False, 2624, 4, 14.2)
    roomy = resolve_recipe("auto", elpv, budget_minutes=60, finetune_runs=3)
    assert roomy.preprocess.size == 192 and roomy.adapt["finetune"].epochs >= MIN_FINETUNE_EPOCHS
    demo = resolve_recipe("auto", elpv, budget_minutes=12, finetune_runs=3)  # the README demo's budget
    assert demo.preprocess.size == demo.backbone.img_size == 128 and demo.backbone.stem_pool
    (why,) = [r for r in demo.reasons if r.startswith("input ")]
    assert "stepped down to 128 px for the budget" in why and "192 px 13" in why
    middle = resolve_recipe("auto", elpv, budget_minutes=24, finetune_runs=3)
    assert middle.preprocess.size == 160  # 192 px affords too few epochs, 160 enough
    starved = resolve_recipe("auto", elpv, budget_minutes=1, finetune_runs=3)
    assert starved.preprocess.size == 128  # never below 128 for photographs: cracks need the pixels
    assert resolve_recipe("auto", elpv, budget_minutes=1, device="cuda").preprocess.size == 224
    maps = resolve_recipe("auto", DataProfile(60000, 40, 40, 1.0, True, 37000, 9, 100.0), budget_minutes=1)
    assert maps.preprocess.size == 64  # categorical maps do not step down: their cost is set by the stem


def test_planned_cpu_speed_follows_the_area_of_the_maps_after_the_stem():
    from components.training.recipes import CPU_IMAGES_PER_S_128, _images_per_s

    pooled = ResNetConfig(img_size=128, layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_pool=True)
    assert _images_per_s(pooled, "cpu", 1) == pytest.approx(CPU_IMAGES_PER_S_128)  # the reference net
    # no max-pool: maps twice as large a side, four times the work (wafer maps' stride-2 stem)
    assert _images_per_s(replace(pooled, stem_pool=False), "cpu", 1) == pytest.approx(CPU_IMAGES_PER_S_128 / 4)
    assert _images_per_s(replace(pooled, img_size=256), "cpu", 1) == pytest.approx(CPU_IMAGES_PER_S_128 / 4)


def test_named_presets_build_and_are_listed():
    assert RECIPE_NAMES[0] == "auto" and {"demo", "tiny", "tiny-cnn"} <= set(RECIPE_NAMES)
    rows = {row["name"]: row for row in describe_recipes()}
    assert set(rows) == set(RECIPE_NAMES)
    assert rows["tiny-cnn"]["pretrain"]["simclr"]["family"] == "resnet"
    # a descriptor recipe lists its codebook fit and no fine-tune or LoRA (it has nothing to train)
    assert rows["descriptor"]["pretrain"]["codebook"]["family"] == "descriptor"
    assert set(rows["descriptor"]["adapt"]) == {"probe", "prototype", "svm"}
    # what a pipeline sweeps unless told: the svm on a descriptor backbone, probe and fine-tune otherwise
    assert rows["descriptor"]["methods"] == rows["tiny-descriptor"]["methods"] == ["svm"]
    assert rows["auto"]["methods"] == rows["tiny-cnn"]["methods"] == ["probe", "finetune"]
    assert recipe_methods("descriptor") == ("svm",)
    # the demo gives a descriptor recipe's svm its novelty bank; anything else, an unknown name too, takes none
    assert is_descriptor_recipe("descriptor") and is_descriptor_recipe("tiny-descriptor")
    assert not any(is_descriptor_recipe(name) for name in ("auto", "tiny-cnn", "demo", "huge"))
    with pytest.raises(ValueError, match="unknown recipe 'huge'"):
        recipe_methods("huge")
    tiny_cnn = resolve_recipe("tiny-cnn", seed=4, steps=9)
    assert tiny_cnn.pretrain.steps == 9 and tiny_cnn.adapt["finetune"].seed == 4
    with pytest.raises(ValueError, match="unknown recipe 'huge'"):
        resolve_recipe("huge")


# ------------------------------------------------------------------------------ threads


def test_cpu_threads_are_chosen_recorded_and_overridable(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("DLVM_THREADS", raising=False)
        chosen = cpu_threads()
        assert 1 <= chosen["threads"] <= chosen["cores"] and torch.get_num_threads() == chosen["threads"]
        monkeypatch.setenv("DLVM_THREADS", "1")
        assert cpu_threads()["threads"] == 1
        assert cpu_threads(2)["threads"] == 2  # an explicit request wins
        monkeypatch.setenv("DLVM_THREADS", "many")
        with pytest.raises(ValueError, match="DLVM_THREADS must be a positive integer"):
            cpu_threads()
    finally:
        torch.set_num_threads(before)


def test_importing_components_sets_a_passive_openmp_wait_policy_unless_given():
    code = "import os, components; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_class_loss_weights_are_tempered_and_capped():
    from components.training.adapt import MAX_CLASS_WEIGHT_RATIO, class_loss_weights

    w = class_loss_weights(np.array([3300, 100, 1, 0]))
    assert w[3] == 0 and w[0] < w[1] < w[2]
    assert w[1] / w[0] == pytest.approx(np.sqrt(33))  # square root of the frequency ratio
    assert w[2] / w[0] == pytest.approx(MAX_CLASS_WEIGHT_RATIO)  # 3300x rarer, capped at 10x


def test_small_categorical_maps_are_upscaled_not_shrunk():
    from components.training.recipes import resolve_recipe

    wafers = resolve_recipe("auto", DataProfile(49672, 27, 27, 1.0, True, 623, 9, 330.0))
    assert wafers.preprocess.size == 64 and wafers.preprocess.resample == "nearest"
    # on a CPU behind a max-pool stem: the maps after the stem are 16 px, what 32 px input without it gave
    assert wafers.backbone.stem_pool and wafers.backbone.img_size == 64
    assert not resolve_recipe("auto", DataProfile(49672, 27, 27, 1.0, True, 623, 9, 330.0),
                              device="cuda").backbone.stem_pool
    photos = resolve_recipe("auto", DataProfile(500, 40, 40, 1.0, False))
    assert photos.preprocess.size == 32  # photographs are never upscaled past their own size


def test_the_pipeline_budget_counts_the_candidates_training_run():
    """The demo's 13-minute budget was shared by 2 fine-tunes while 3 ran (domain and scratch in
    the sweep, then the candidate, whose method the sweep picks): it overran."""
    from components.training.recipes import pipeline_finetune_runs

    methods = ("probe", "prototype", "finetune")
    assert pipeline_finetune_runs(2, 1, 1, methods, None) == 3  # the candidate may be the fine-tune
    assert pipeline_finetune_runs(2, 1, 1, methods, "probe") == 2  # named: a probe trains nothing
    assert pipeline_finetune_runs(3, 2, 2, methods, "finetune") == 13
    assert pipeline_finetune_runs(2, 5, 3, ("probe",), None) == 1  # never zero: the budget divides by it


# ------------------------------------------------------------------------------ class offsets


def test_class_offsets_make_an_argmax_that_never_answers_the_rare_class_answer_it():
    from components.training.class_offsets import fit_class_offsets

    rng = np.random.default_rng(0)
    y = np.array([0] * 80 + [1] * 20)
    log_probs = np.log(np.full((100, 2), 0.5))
    log_probs[:, 0] += 0.3  # class 0 always wins by 0.3 nats ...
    log_probs[y == 1, 1] += 0.2 + rng.uniform(0, 0.05, 20)  # ... though class 1's own images score higher on 1
    offsets, before, after = fit_class_offsets(log_probs, y, 2, "macro_f1")
    assert before < 0.5 and after == 1.0
    assert offsets[0] == 0 and 0.1 <= offsets[1] <= 0.3  # the smallest grid step that separates them
    assert ((log_probs + offsets).argmax(1) == y).all()
    # nothing to gain: no offset (ties go to the smaller one)
    perfect = np.log(np.eye(3)[np.array([0, 1, 2] * 10)] * 0.9 + 0.05)
    offsets, before, after = fit_class_offsets(perfect, np.array([0, 1, 2] * 10), 3, "balanced_accuracy")
    assert before == after == 1.0 and not offsets.any()
    with pytest.raises(ValueError, match="metric must be one of"):
        fit_class_offsets(perfect, np.array([0, 1, 2] * 10), 3, "auroc")
    with pytest.raises(ValueError, match="class_offsets must be one of"):
        AdaptConfig(class_offsets="auroc")


def test_finetune_folds_class_offsets_into_the_head_and_records_them():
    images, y = blobs(160, weights=(0.8, 0.2))
    cfg = tiny_cnn_adapt("finetune", epochs=2, val_fraction=0.4, batch_size=16, class_balance="none")
    plain = adapt(tiny_cnn_backbone(), None, images, y, 2, cfg, progress=False)
    tuned = adapt(tiny_cnn_backbone(), None, images, y, 2,
                  AdaptConfig(**{**cfg.__dict__, "class_offsets": "macro_f1"}), progress=False)
    log = tuned.training_log
    assert log["class_offsets_metric"] == "macro_f1" and len(log["class_offsets"]) == 2
    assert log["val_fitted_offsets"] >= log["val_before_offsets"]
    # the same training, then the offsets added to the head's bias (and nothing else changed)
    diff = (tuned.head.bias - plain.head.bias).detach().numpy()
    assert np.allclose(diff, log["class_offsets"], atol=1e-6)
    assert torch.equal(tuned.head.weight, plain.head.weight)
    # too few validation labels: skipped, said so
    small = adapt(tiny_cnn_backbone(), None, images[:40], y[:40], 2,
                  AdaptConfig(**{**cfg.__dict__, "val_fraction": 0.25, "class_offsets": "macro_f1"}), progress=False)
    assert small.training_log["class_offsets"] is None and "validation labels" in small.training_log["class_offsets_skipped"]
