"""Meta-learning (Reptile, first-order MAML), the episodic few-shot evaluation and the
inductive/transductive labels of the report: tiny backbones at 32 px, seconds in all."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import banded_images

from components.evaluation.episodes import (
    EpisodeConfig,
    episodes_markdown,
    evaluate_episodes,
    parse_specs,
)
from components.evaluation.learning_setting import (
    learning_settings_markdown,
    pretraining_saw_test_images,
    setting_of,
)
from components.evaluation.sweep import Backbone
from components.models.resnet import ResNetConfig
from components.models.vit import ViTConfig, normalize_uint8
from components.training.adapt import Classifier, predict_proba
from components.training.meta import (
    MetaConfig,
    adapt_to_support,
    build_meta_encoder,
    check_episodes_possible,
    meta_adapt,
    meta_train,
    parse_episode_spec,
    sample_episode,
    support_statistics,
)
from components.training.recipes import meta_config

TINY_VIT = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, global_pool="avg")
TINY_RESNET = ResNetConfig.tiny(32)
LOOPS = dict(meta_steps=2, meta_batch=2, inner_steps=2, eval_inner_steps=2, device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_episode_has_n_distinct_classes_k_shots_and_disjoint_queries_from_the_pool_only():
    labels = np.repeat(np.arange(5), 12)
    pool = np.flatnonzero(np.arange(60) % 2 == 0)  # 6 per class
    ep = sample_episode(labels, 3, 2, 4, np.random.default_rng(0), pool=pool)
    assert len(set(ep.classes.tolist())) == 3
    assert np.bincount(ep.support_y).tolist() == [2, 2, 2] and np.bincount(ep.query_y).tolist() == [4, 4, 4]
    assert not set(ep.support) & set(ep.query) and set(ep.support) | set(ep.query) <= set(pool)
    # episode label i is original class ep.classes[i], for support and query alike
    assert (labels[ep.support] == ep.classes[ep.support_y]).all()
    assert (labels[ep.query] == ep.classes[ep.query_y]).all()


def test_too_few_images_per_class_is_a_clear_error():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(ValueError, match=r"3-way 2-shot .* need 3 classes with >= 4 images in the test split.*2: 3"):
        check_episodes_possible(labels, 3, 2, 2, "test split")


def test_episode_specs_parse_and_bad_ones_are_refused():
    assert parse_episode_spec("5way1shot") == (5, 1) and parse_episode_spec("4-way-5-shot") == (4, 5)
    assert parse_specs("4way1shot, 2w5s") == ((4, 1), (2, 5))
    for bad in ("1way5shot", "5way0shot", "five-way", ""):
        with pytest.raises(ValueError):
            parse_specs(bad)


def test_meta_config_rejects_bad_values_and_the_recipe_builds_both_methods():
    with pytest.raises(ValueError, match="reptile, maml"):
        MetaConfig(method="protonet")
    with pytest.raises(ValueError, match="n_way"):
        MetaConfig(n_way=1)
    with pytest.raises(ValueError, match="query"):
        MetaConfig(method="maml", query=0)
    assert meta_config("maml", "tiny").final_adapt.method == "probe"
    with pytest.raises(ValueError, match="meta-learning method"):
        meta_config("probe", "tiny")


def _episode_tensors(images, labels, cfg: MetaConfig, query: int):
    classes = check_episodes_possible(labels, cfg.n_way, cfg.k_shot, query, "x")
    ep = sample_episode(labels, cfg.n_way, cfg.k_shot, query, np.random.default_rng(cfg.seed), classes)
    t = lambda idx: normalize_uint8(torch.from_numpy(images[idx]))  # noqa: E731
    return ep, t(ep.support), torch.from_numpy(ep.support_y), t(ep.query), torch.from_numpy(ep.query_y)


@pytest.mark.parametrize("backbone_cfg", [TINY_RESNET, TINY_VIT], ids=["resnet", "vit"])
def test_reptile_with_epsilon_one_lands_on_the_task_adapted_weights(backbone_cfg):
    images, labels = banded_images(48, 4, 32, seed=0)
    cfg = MetaConfig(method="reptile", n_way=3, k_shot=2, meta_steps=1, meta_batch=1, inner_steps=3,
                     outer_lr=1.0, device="cpu")
    encoder = build_meta_encoder(backbone_cfg, None, seed=0)
    _, xs, ys, _, _ = _episode_tensors(images, labels, cfg, 0)
    expected, _ = adapt_to_support(encoder, xs, ys, cfg.n_way, cfg.inner_steps, cfg.inner_lr)
    initial = copy.deepcopy(encoder.state_dict())
    result = meta_train(encoder, images, labels, cfg, progress=False)
    moved = False
    for (name, p), q in zip(encoder.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, msg=f"{name} is not the adapted copy's")
        moved |= not torch.equal(p, initial[name])
    assert moved and result.steps == 1


def test_first_order_maml_steps_against_the_query_gradient_at_the_adapted_weights():
    images, labels = banded_images(48, 4, 32, seed=1)
    cfg = MetaConfig(method="maml", n_way=2, k_shot=3, query=3, meta_steps=1, meta_batch=1, inner_steps=2,
                     outer_lr=1e-3, device="cpu")
    encoder = build_meta_encoder(TINY_RESNET, None, seed=0)
    _, xs, ys, xq, yq = _episode_tensors(images, labels, cfg, cfg.query)
    fast, head = adapt_to_support(encoder, xs, ys, cfg.n_way, cfg.inner_steps, cfg.inner_lr)
    grads = torch.autograd.grad(F.cross_entropy(head(fast.forward_pool(xq)), yq), list(fast.parameters()))
    initial = [p.detach().clone() for p in encoder.parameters()]
    meta_train(encoder, images, labels, cfg, progress=False)
    checked = 0
    for p0, p, g in zip(initial, encoder.parameters(), grads):
        big = g.abs() > 1e-5  # Adam's first step: -lr * g / (|g| + eps), i.e. -lr * sign(g) where |g| >> eps
        if big.any():
            torch.testing.assert_close((p - p0)[big], -cfg.outer_lr * g.sign()[big], atol=2e-5, rtol=0.05)
            checked += int(big.sum())
    assert checked > 100


def test_meta_training_is_reproducible_from_its_seed():
    images, labels = banded_images(40, 4, 32, seed=2)
    cfg = MetaConfig(method="maml", n_way=2, k_shot=2, query=2, **LOOPS)
    states = []
    for _ in range(2):
        encoder = build_meta_encoder(TINY_RESNET, None, seed=0)
        states.append(meta_train(encoder, images, labels, cfg, progress=False).state)
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_support_statistics_make_eval_mode_score_the_network_the_inner_loop_trained():
    images, labels = banded_images(16, 4, 32, seed=3)
    encoder = build_meta_encoder(TINY_RESNET, None, seed=0)
    x = normalize_uint8(torch.from_numpy(images))
    with torch.no_grad():
        train_mode = encoder.train().forward_pool(x)
    support_statistics(encoder, x)
    with torch.no_grad():
        eval_mode = encoder.eval().forward_pool(x)
    torch.testing.assert_close(eval_mode, train_mode, atol=1e-4, rtol=1e-3)


def test_meta_adapt_registers_as_a_plain_classifier_that_learned_the_task():
    images, labels = banded_images(60, 2, 32, seed=4)
    test_images, test_labels = banded_images(30, 2, 32, seed=5)
    cfg = meta_config("reptile", "tiny")  # n_way 4 in the recipe: a 2-class task gets 2-way episodes
    clf, result = meta_adapt(TINY_VIT, None, images, labels, 2, cfg, progress=False)
    restored = Classifier.from_state(clf.state())
    assert restored.method == "reptile" and result.steps == cfg.meta_steps
    accuracy = (predict_proba(restored, test_images, device="cpu").argmax(1) == test_labels).mean()
    assert accuracy > 0.8


def test_episodic_evaluation_runs_every_method_on_the_same_episodes_with_intervals():
    images, labels = banded_images(72, 3, 32, seed=6)
    train_idx, test_idx = np.arange(36), np.arange(36, 72)
    cfg = EpisodeConfig(specs=((3, 1),), episodes=4, query=3, device="cpu", meta=MetaConfig(**LOOPS))
    result = evaluate_episodes([Backbone("scratch", TINY_RESNET, None)], images, labels, train_idx, test_idx, cfg,
                               progress=False)
    assert [r["method"] for r in result.rows] == ["prototype", "probe", "finetune", "reptile", "maml"]
    for row in result.rows:
        acc = row["accuracy"]
        assert row["n_episodes"] == 4 and acc["ci_low"] <= acc["value"] <= acc["ci_high"]
        assert row["setting"] == "inductive" and ("minus_prototype" in row) == (row["method"] != "prototype")
    # the bands are separable even by a random encoder's class means
    assert result.rows[0]["accuracy"]["value"] > 0.8
    assert {m["method"] for m in result.meta_training} == {"reptile", "maml"}
    md = episodes_markdown(result, cfg)
    assert "| scratch | 3way1shot | maml |" in md and "Meta-training" in md


def test_episodic_evaluation_refuses_a_test_split_too_small_before_training_anything():
    images, labels = banded_images(24, 3, 32, seed=7)
    cfg = EpisodeConfig(specs=((3, 5),), episodes=4, query=5, device="cpu", meta=MetaConfig(**LOOPS))
    with pytest.raises(ValueError, match="test split"):
        evaluate_episodes([Backbone("scratch", TINY_RESNET, None)], images, labels, np.arange(12),
                          np.arange(12, 24), cfg, progress=False)


def test_report_names_a_backbone_pretrained_on_the_evaluated_dataset_transductive():
    evaluated = SimpleNamespace(id=7, dataset_id=3)
    assert pretraining_saw_test_images(None, 7, evaluated) is True
    assert pretraining_saw_test_images(None, None, evaluated) is False
    assert setting_of("reptile", False) == "inductive" and setting_of("probe", True) == "transductive"
    md = learning_settings_markdown({"elpv-mae": True, "scratch": False}, ["probe", "maml"])
    assert "| elpv-mae | probe | this dataset's unlabeled images, test split included |" in md
    assert md.count("| transductive |") == 2 and md.count("| inductive |") == 2
    with pytest.raises(ValueError, match="unknown adaptation method"):
        setting_of("knn", False)
