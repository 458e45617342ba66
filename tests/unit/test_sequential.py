"""The visual tokenizer (FSQ autoencoder), its training loop, and the sequential backbone:
quantization round trip, codebook usage, learning on tiny data, resume, the causal mask,
pooled features, sampling, and sequential pretraining through pretrain()."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from components.data.images import Preprocess
from components.models.backbones import (
    build_backbone,
    config_from_dict,
    config_to_dict,
    family_of,
    load_backbone_weights,
)
from components.models.sequential import SequentialBackbone, SequentialConfig
from components.models.tokenizer import (
    FSQ,
    TokenizerConfig,
    VisualTokenizer,
    codebook_usage,
    psnr,
)
from components.models.vit import normalize_uint8
from components.training.pretrain import PretrainConfig, pretrain
from components.training.recipes import sequential_recipe
from components.training.tokenizer import (
    evaluate_tokenizer,
    holdout_split,
    tiny_tokenizer_config,
    tokenizer_parts,
    train_tokenizer,
)

TINY_TOK = TokenizerConfig(32, channels=(8, 16), levels=(5, 5, 5))


def stripes(n: int = 48, seed: int = 0) -> np.ndarray:
    """Images with structure a tokenizer can learn: sine stripes of random frequency and phase."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[:32, :32][1][None].astype(np.float64)
    freq, phase = 0.2 + rng.random((n, 1, 1)) * 0.6, rng.random((n, 1, 1)) * 6.28
    return ((np.sin(xx * freq + phase) + 1) * 120 + 5).astype(np.uint8)


def tiny_sequential() -> SequentialBackbone:
    torch.manual_seed(0)
    return SequentialBackbone(SequentialConfig(tokenizer=TINY_TOK, embed_dim=32, depth=2, num_heads=2)).eval()


# ------------------------------------------------------------------------------ FSQ


def test_fsq_indices_and_codes_round_trip_over_the_whole_codebook():
    q = FSQ((8, 5, 5, 5))
    assert q.codebook_size == 1000
    idx = torch.arange(1000)
    codes = q.indices_to_codes(idx)
    assert codes.shape == (1000, 4) and codes.min() == -1 and codes.max() <= 1
    assert torch.equal(q.codes_to_indices(codes), idx)
    assert len({tuple(c) for c in codes.tolist()}) == 1000  # every index is its own grid point


def test_fsq_quantizes_to_the_grid_with_a_straight_through_gradient():
    q = FSQ((8, 5, 5, 5))
    z = (torch.randn(4000, 4) * 2).requires_grad_(True)
    codes, idx = q(z)
    assert idx.min() >= 0 and idx.max() < 1000
    assert torch.equal(q.indices_to_codes(idx), codes.detach())
    assert len(idx.unique()) > 500  # spread latents reach most of the codebook
    codes.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # rounding does not block the gradient


def test_codebook_usage_counts_used_codes_and_their_perplexity():
    u = codebook_usage(torch.tensor([0, 0, 1, 1]), 8)
    assert u["usage"] == pytest.approx(2 / 8) and u["perplexity"] == pytest.approx(2.0)


def test_psnr_is_infinite_like_for_identical_and_20db_for_a_tenth_error():
    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x, x) > 100
    from components.models.vit import PIXEL_STD
    assert psnr(x + 0.1 / PIXEL_STD, x) == pytest.approx(20.0, abs=1e-4)


def test_tokenizer_shapes_and_config_checks():
    tok = VisualTokenizer(TINY_TOK)
    x = normalize_uint8(torch.from_numpy(stripes(3)))
    loss, recon, idx = tok(x)
    assert recon.shape == x.shape and idx.shape == (3, 64) and idx.max() < 125
    assert tok.decode_tokens(idx).shape == x.shape
    assert TINY_TOK.num_tokens == 64 and TINY_TOK.codebook_size == 125
    with pytest.raises(ValueError, match="multiple of 4"):
        TokenizerConfig(30)
    with pytest.raises(ValueError, match="levels"):
        TokenizerConfig(levels=(1, 5))


# ------------------------------------------------------------------------------ training the tokenizer


def test_tokenizer_training_lowers_the_loss_and_reconstructs_held_out_images():
    images = stripes(64)
    train, held = holdout_split(len(images), 0.25, seed=0)
    assert len(held) == 16 and not set(train) & set(held)
    cfg = tiny_tokenizer_config()
    res = train_tokenizer(images[train], cfg, progress=False)
    assert np.mean(res.losses[-5:]) < 0.5 * np.mean(res.losses[:5])
    model = VisualTokenizer(cfg.tokenizer)
    model.load_state_dict(res.state)
    trained = evaluate_tokenizer(model, images[held])
    untrained = evaluate_tokenizer(VisualTokenizer(cfg.tokenizer), images[held])
    assert trained["psnr"] > untrained["psnr"] + 3
    assert 0 < trained["codebook_usage"] <= 1 and trained["n_images"] == 16


def test_tokenizer_training_resumes_to_the_same_weights(tmp_path):
    images = stripes(32)
    cfg = tiny_tokenizer_config(steps=12, checkpoint_every=6)
    ckpt = tmp_path / "tok.pt"
    full = train_tokenizer(images, cfg, progress=False, checkpoint_path=ckpt)
    assert ckpt.exists()  # the step-6 state stays (the last step writes none)
    resumed = train_tokenizer(images, cfg, progress=False, checkpoint_path=ckpt)
    assert resumed.resumed_from_step == 6 and resumed.losses == full.losses
    assert all(torch.equal(full.state[k], resumed.state[k]) for k in full.state)
    with pytest.raises(ValueError, match="different config"):
        train_tokenizer(images, dataclasses.replace(cfg, lr=1e-3), progress=False, checkpoint_path=ckpt)


# ------------------------------------------------------------------------------ the sequential backbone


def test_causal_mask_position_t_does_not_see_later_tokens():
    model = tiny_sequential()
    seq = torch.randint(0, 125, (2, 65))
    seq[:, 0] = model.cfg.start_token
    changed = seq.clone()
    t = 20
    changed[:, t + 1 :] = torch.randint(0, 125, (2, 65 - t - 1))
    with torch.no_grad():
        a, b = model.hidden(seq), model.hidden(changed)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # and later positions do see them
    later = seq.clone()
    later[:, t] = (later[:, t] + 1) % 125
    with torch.no_grad():
        assert not torch.allclose(model.hidden(later)[:, t], a[:, t])


def test_next_token_logits_predict_each_token_from_the_ones_before():
    model = tiny_sequential()
    tokens = torch.randint(0, 125, (2, 64))
    logits = model.logits(tokens)
    assert logits.shape == (2, 64, 125)
    edited = tokens.clone()
    edited[:, 10] = (edited[:, 10] + 7) % 125
    with torch.no_grad():  # position 10 predicts token 10: it must not see it
        assert torch.allclose(model.logits(edited)[:, :11], logits[:, :11], atol=1e-6)


def test_sampling_shapes_top_k_and_decoding():
    model = tiny_sequential()
    g = torch.Generator().manual_seed(0)
    tokens = model.sample(3, temperature=0.8, top_k=5, generator=g)
    assert tokens.shape == (3, 64) and tokens.min() >= 0 and tokens.max() < 125
    greedy = model.sample(2, top_k=1, generator=g)
    assert torch.equal(greedy[0], greedy[1])  # top-1 is deterministic
    assert model.generate(2, generator=g).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        model.sample(1, top_k=0)


def test_sequential_is_a_backbone_family_with_pooled_features():
    cfg = SequentialConfig(tokenizer=TINY_TOK, embed_dim=32, depth=2, num_heads=2)
    d = config_to_dict(cfg)
    assert d["family"] == "sequential" and config_from_dict(d) == cfg and family_of(cfg) == "sequential"
    enc = build_backbone(cfg, seed=0)
    x = normalize_uint8(torch.from_numpy(stripes(4)))
    assert enc.forward_pool(x).shape == (4, 32) and enc.num_features == 32
    # a trained backbone's state loads whole; a tokenizer's alone starts pretraining
    other = build_backbone(cfg, seed=1)
    assert load_backbone_weights(other, enc.state_dict()) == []
    assert torch.equal(other.forward_pool(x), enc.forward_pool(x))
    tok_only = {k: v for k, v in enc.state_dict().items() if k.startswith("tokenizer.")}
    fresh = build_backbone(cfg, seed=2)
    missing = load_backbone_weights(fresh, tok_only)
    assert missing and not any(k.startswith("tokenizer.") for k in missing)
    assert torch.equal(fresh.tokenizer.tokenize(x), enc.tokenizer.tokenize(x))
    with pytest.raises(ValueError, match="tokenizer"):
        load_backbone_weights(fresh, {k: v for k, v in enc.state_dict().items() if not k.startswith("tokenizer.")})
    with pytest.raises(ValueError, match="unexpected"):
        load_backbone_weights(fresh, {**enc.state_dict(), "head.weight": torch.zeros(1)})


def test_sequential_pretraining_learns_keeps_the_tokenizer_frozen_and_resumes(tmp_path):
    images = stripes(48)
    tok_cfg = tiny_tokenizer_config(steps=30)
    tok = train_tokenizer(images, tok_cfg, progress=False)
    checkpoint = {"kind": "tokenizer", "tokenizer_config": tok_cfg.tokenizer.to_dict(),
                  "preprocess": Preprocess(32).to_dict(), "state_dict": tok.state}
    tcfg, pre, init = tokenizer_parts(checkpoint)
    cfg = dataclasses.replace(sequential_recipe("tiny", tcfg, pre).pretrain, steps=40, checkpoint_every=20)
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    ckpt = tmp_path / "seq.pt"
    res = pretrain(images, cfg, progress=False, init_encoder_state=init, checkpoint_path=ckpt)
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5]) - 0.3  # next-token loss falls from ~ln(125)
    assert all(torch.equal(res.encoder_state[k], v) for k, v in init.items())  # the tokenizer did not move
    resumed = pretrain(images, cfg, progress=False, init_encoder_state=init, checkpoint_path=ckpt)
    assert resumed.resumed_from_step == 20 and resumed.losses == res.losses
    assert all(torch.equal(res.encoder_state[k], resumed.encoder_state[k]) for k in res.encoder_state)


def test_sequential_method_and_backbone_go_together():
    seq = SequentialConfig(tokenizer=TINY_TOK, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ValueError, match="go together"):
        PretrainConfig(method="simclr", backbone=seq)
    with pytest.raises(ValueError, match="go together"):
        PretrainConfig(method="sequential")
    with pytest.raises(ValueError, match="not a tokenizer"):
        tokenizer_parts({"kind": "backbone"})


def test_the_pretrain_flow_refuses_sequential_without_a_tokenizer_and_a_tokenizer_without_sequential():
    from flows.pretrain import pretrain_flow

    with pytest.raises(ValueError, match="needs --tokenizer"):
        pretrain_flow.fn("elpv", method="sequential")
    with pytest.raises(ValueError, match="needs --tokenizer"):
        pretrain_flow.fn("elpv", method="simclr", tokenizer="elpv-tokenizer")
    with pytest.raises(ValueError, match="init-from"):
        pretrain_flow.fn("elpv", method="sequential", tokenizer="elpv-tokenizer", init_from="generic")


# ------------------------------------------------------------------------------ visual sentences


def sentence_model(k: int) -> SequentialBackbone:
    torch.manual_seed(0)
    return SequentialBackbone(SequentialConfig(tokenizer=TINY_TOK, embed_dim=32, depth=2, num_heads=2,
                                               sentence_length=k)).eval()


def test_a_visual_sentence_is_its_images_tokens_each_after_a_start_token():
    model = sentence_model(3)
    tokens = torch.randint(0, 125, (2, 3, 64))
    seq = model.sentence(tokens)
    start = model.cfg.start_token
    assert seq.shape == (2, 3 * 65) and model.pos_embed.shape[1] == 3 * 65 == model.cfg.sentence_tokens
    assert (seq[:, [0, 65, 130]] == start).all() and (seq != start).sum() == 2 * 3 * 64
    for k in range(3):
        assert torch.equal(seq[:, 65 * k + 1 : 65 * (k + 1)], tokens[:, k])


def test_sentence_loss_predicts_each_image_with_the_ones_before_in_context():
    model = sentence_model(2)
    tokens = torch.randint(0, 125, (3, 2, 64))
    with torch.no_grad():
        seq = model.sentence(tokens)
        logits = model.lm_head(model.hidden(seq[:, :-1]))
        # the first image's predictions are the single image's: features and sampling see what training saw
        assert torch.allclose(logits[:, :64], model.logits(tokens[:, 0]), atol=1e-5)
        # the second image's are predicted from the first: change the first, they change
        other = tokens.clone()
        other[:, 0] = torch.randint(0, 125, (3, 64))
        logits_other = model.lm_head(model.hidden(model.sentence(other)[:, :-1]))
        assert not torch.allclose(logits_other[:, 65:], logits[:, 65:])
        # the loss: cross-entropy over the 2 x 64 image tokens, never over the separating start token
        targets = seq[:, 1:]
        keep = torch.ones(129, dtype=torch.bool)
        keep[64] = False  # position 64 (after image 1's last token) would predict image 2's start token
        expected = torch.nn.functional.cross_entropy(logits[:, keep].reshape(-1, 125), targets[:, keep].reshape(-1))
        assert model.sentence_loss(tokens).item() == pytest.approx(expected.item(), rel=1e-6)
        # one image per sentence is the plain next-token loss
        single = sentence_model(1)
        assert single.sentence_loss(tokens[:, :1]).item() == pytest.approx(
            single.next_token_loss(tokens[:, 0]).item(), rel=1e-6)


def test_sentence_length_is_recorded_only_when_set_and_checked():
    one = SequentialConfig(tokenizer=TINY_TOK, embed_dim=32, depth=2, num_heads=2)
    assert "sentence_length" not in one.to_dict()  # K=1 dicts (registered, resume keys) are unchanged
    four = dataclasses.replace(one, sentence_length=4)
    assert four.to_dict()["sentence_length"] == 4 and config_from_dict(config_to_dict(four)) == four
    for bad in (0, 65, 2.5, True):
        with pytest.raises(ValueError, match="sentence_length"):
            dataclasses.replace(one, sentence_length=bad)
    with pytest.raises(ValueError, match="not a multiple of the sentence length 3"):
        PretrainConfig(method="sequential", backbone=dataclasses.replace(one, sentence_length=3), batch_size=16)
    # the sentence-trained backbone's features are per image, as any backbone's
    x = normalize_uint8(torch.from_numpy(stripes(5)))
    assert build_backbone(four, seed=0).forward_pool(x).shape == (5, 32)
    from flows.pretrain import pretrain_flow
    with pytest.raises(ValueError, match="only for --method sequential"):
        pretrain_flow.fn("elpv", method="simclr", sentence_length=2)


def test_sentence_pretraining_learns_and_resumes_bit_identically(tmp_path):
    images = stripes(48)
    tok_cfg = tiny_tokenizer_config(steps=30)
    tok = train_tokenizer(images, tok_cfg, progress=False)
    tcfg, pre, init = tokenizer_parts({"kind": "tokenizer", "tokenizer_config": tok_cfg.tokenizer.to_dict(),
                                       "preprocess": Preprocess(32).to_dict(), "state_dict": tok.state})
    recipe = sequential_recipe("tiny", tcfg, pre, sentence_length=4)
    assert any("visual sentences of 4 images" in r for r in recipe.reasons)
    cfg = dataclasses.replace(recipe.pretrain, steps=40, checkpoint_every=20)
    assert cfg.backbone.sentence_length == 4 and PretrainConfig.from_dict(cfg.to_dict()) == cfg
    ckpt = tmp_path / "sentences.pt"
    res = pretrain(images, cfg, progress=False, init_encoder_state=init, checkpoint_path=ckpt)
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5]) - 0.3
    assert res.encoder_state["pos_embed"].shape == (1, 4 * 65, 32)
    resumed = pretrain(images, cfg, progress=False, init_encoder_state=init, checkpoint_path=ckpt)
    assert resumed.resumed_from_step == 20 and resumed.losses == res.losses
    assert all(torch.equal(res.encoder_state[k], resumed.encoder_state[k]) for k in res.encoder_state)
    with pytest.raises(ValueError, match="does not split into sentences of 4"):
        pretrain(images[:6], cfg, progress=False, init_encoder_state=init)  # a batch of 6: no whole sentences


# ------------------------------------------------------------------------------ generation


def test_generate_images_from_a_sequential_backbone_checkpoint_and_grid_png():
    import io

    from PIL import Image

    from components.inference.generate import GenerateConfig, generate_images, grid_png

    model = tiny_sequential()
    checkpoint = {"kind": "backbone", "backbone_config": config_to_dict(model.cfg), "state_dict": model.state_dict()}
    images = generate_images(checkpoint, GenerateConfig(n=5, top_k=10, seed=3))
    assert images.shape == (5, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images, generate_images(checkpoint, GenerateConfig(n=5, top_k=10, seed=3)))
    assert not np.array_equal(images, generate_images(checkpoint, GenerateConfig(n=5, top_k=10, seed=4)))
    grid = Image.open(io.BytesIO(grid_png(images, pad=2)))
    assert grid.size == (3 * 34 + 2, 2 * 34 + 2)  # 5 images: 3 columns, 2 rows
    assert np.array_equal(np.asarray(grid)[2:34, 2:34], images[0])
    with pytest.raises(ValueError, match="larger than the codebook"):
        generate_images(checkpoint, GenerateConfig(n=1, top_k=126))
    with pytest.raises(ValueError, match="sequential backbone"):
        generate_images({**checkpoint, "kind": "tokenizer"}, GenerateConfig(n=1))
    vit = {"kind": "backbone", "backbone_config": {"family": "vit", "img_size": 32, "patch_size": 8}, "state_dict": {}}
    with pytest.raises(ValueError, match="this one is a vit"):
        generate_images(vit, GenerateConfig(n=1))
    with pytest.raises(ValueError, match="temperature"):
        GenerateConfig(temperature=0)


@pytest.mark.parametrize("method", ["probe", "prototype", "finetune"])
def test_a_sequential_backbone_adapts_like_any_backbone(method):
    from components.training.adapt import Classifier, adapt, predict_proba
    from components.training.recipes import tiny_adapt

    model = tiny_sequential()
    images = stripes(24)
    labels = (np.arange(24) % 2).astype(np.int64)
    clf = adapt(model.cfg, model.state_dict(), images, labels, 2, tiny_adapt(method), progress=False)
    proba = predict_proba(clf, images, device="cpu")
    assert proba.shape == (24, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    reloaded = Classifier.from_state(clf.state())  # what a classifier checkpoint holds
    assert np.allclose(predict_proba(reloaded, images, device="cpu"), proba, atol=1e-5)
    if method == "finetune":  # the transformer moved, the tokenizer did not
        tok = {k: v for k, v in model.state_dict().items() if k.startswith("tokenizer.")}
        after = clf.encoder.state_dict()
        assert all(torch.equal(after[k], v) for k, v in tok.items())
    with pytest.raises(ValueError, match="lora"):
        adapt(model.cfg, model.state_dict(), images, labels, 2, tiny_adapt("lora"), progress=False)


def test_tokenizer_training_checkpoints_on_sigterm_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import os
    import signal

    import components.training.tokenizer as tokenizer_training

    class Stopped(Exception):
        pass

    def handler(signum, frame):
        raise Stopped

    images = stripes(32)
    cfg = tiny_tokenizer_config(steps=10, checkpoint_every=0)  # no periodic checkpoints: only the signal's
    full = train_tokenizer(images, cfg, progress=False)
    calls = []
    real = tokenizer_training.augment_batch

    def augment_then_signal(*args):
        calls.append(1)
        if len(calls) == 4:  # during step 3: acted on before step 4, after a checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        monkeypatch.setattr(tokenizer_training, "augment_batch", augment_then_signal)
        ckpt = tmp_path / "tok.pt"
        with pytest.raises(Stopped):
            train_tokenizer(images, cfg, progress=False, checkpoint_path=ckpt)
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.setattr(tokenizer_training, "augment_batch", real)
    resumed = train_tokenizer(images, cfg, progress=False, checkpoint_path=ckpt)
    assert resumed.resumed_from_step == 4 and resumed.losses == full.losses
    assert all(torch.equal(full.state[k], resumed.state[k]) for k in full.state)


@pytest.mark.parametrize("method", ["reptile", "maml"])
def test_a_sequential_backbone_meta_learns_with_its_tokenizer_frozen(method):
    from components.training.meta import meta_adapt
    from components.training.recipes import meta_config

    model = tiny_sequential()
    images, labels = stripes(24), (np.arange(24) % 2).astype(np.int64)
    clf, result = meta_adapt(model.cfg, model.state_dict(), images, labels, 2, meta_config(method, "tiny"),
                             progress=False)
    before = model.state_dict()
    assert all(torch.equal(result.state[k], v) for k, v in before.items() if k.startswith("tokenizer."))
    assert any(not torch.equal(result.state[k], v) for k, v in before.items() if k.startswith("blocks."))
    assert clf.encoder.cfg == model.cfg


def test_frechet_distance_is_zero_for_one_gaussian_and_grows_with_the_shift():
    from components.evaluation.sample_quality import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) < 0.02
    assert frechet_distance(a, a + [2.0, 0, 0]) == pytest.approx(4.0)  # |mu_a - mu_b|^2, same covariance
    # scaled by 3: Tr(S + 9 S - 2 (9 S^2)^1/2) = 4 Tr(S), plus the means' 4 |mu|^2
    scaled = 4 * np.trace(np.cov(a, rowvar=False)) + 4 * (a.mean(0) ** 2).sum()
    assert frechet_distance(a, 3 * a) == pytest.approx(scaled, rel=1e-6)
    with pytest.raises(ValueError, match="same width"):
        frechet_distance(a, b[:, :2])


def test_sample_quality_has_the_tokenizer_floor_below_the_shuffled_token_baseline():
    from components.evaluation.sample_quality import reference_images, sample_quality

    images = stripes(64)
    tok_cfg = tiny_tokenizer_config(steps=40)
    tok = train_tokenizer(images, tok_cfg, progress=False)
    model = tiny_sequential()
    model.tokenizer.load_state_dict(tok.state)
    refs = reference_images(model, images[:8], seed=0)
    assert refs["shuffled_tokens"].shape == (8, 32, 32) and refs["reconstructions"].dtype == np.uint8
    samples = model.generate(16, generator=torch.Generator().manual_seed(0))
    from components.inference.generate import to_uint8
    q = sample_quality(model, to_uint8(samples), images, max_real=48)
    fd = q["frechet_distance"]
    assert q["n_real"] == 48 and q["n_samples"] == 16 and set(fd) == {"samples", "reconstructions", "shuffled_tokens"}
    assert 0 <= fd["reconstructions"] < fd["shuffled_tokens"]  # stripes reconstructed beat stripes scrambled


def test_the_report_embeds_the_newest_sample_grid_with_its_frechet_distances():
    import base64
    import re

    from components.evaluation.report import samples_section
    from components.inference.generate import grid_png

    png = grid_png(stripes(6))
    quality = {"frechet_distance": {"samples": 1.25, "reconstructions": 0.5, "shuffled_tokens": 3.0},
               "n_real": 40, "n_samples": 6}
    artifact = {"id": 7, "version": 2, "artifact_uri": "file:///store/samples/ab/elpv-sequential-v2-samples.png",
                "sha256": "ab" * 32, "size": len(png), "created_at": "2026-11-30T03:50:00+00:00",
                "details": {"n": 6, "temperature": 1.0, "top_k": 20, "seed": 0,
                            "against": {"dataset": "elpv", "version": 1}, "quality": quality}}
    text = "\n".join(samples_section([{"backbone": "elpv-sequential", "artifact": artifact, "png": png}]))
    embedded = re.search(r"!\[6 samples of elpv-sequential v2\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert embedded and base64.b64decode(embedded.group(1)) == png  # the grid itself, not a link to it
    assert "Fréchet distance to 40 images of elpv v1: samples **1.250**" in text
    assert "(floor) 0.500" in text and "(baseline) 3.000: below the shuffled-token baseline" in text
    assert "top-k 20" in text and artifact["artifact_uri"] in text

    worse = {**artifact, "details": {**artifact["details"], "quality": {
        **quality, "frechet_distance": {**quality["frechet_distance"], "samples": 4.0}}}}
    text = "\n".join(samples_section([{"backbone": "elpv-sequential", "artifact": worse, "png": png}]))
    assert "**not below the shuffled-token baseline**" in text  # a loss is said plainly

    big = "\n".join(samples_section([{"backbone": "elpv-sequential", "artifact": artifact, "png": png}],
                                    max_embed_bytes=len(png) - 1))
    assert "base64" not in big and "too large to embed" in big and artifact["artifact_uri"] in big
    unread = "\n".join(samples_section([{"backbone": "s", "artifact": artifact, "png": None, "error": "missing"}]))
    assert "could not be read (missing)" in unread and "base64" not in unread
    none_yet = "\n".join(samples_section([{"backbone": "elpv-sequential", "artifact": None}]))
    assert "No samples yet: `dlvm generate elpv-sequential --n 64 --against DATASET`" in none_yet
    assert samples_section([]) == []  # no sequential backbone evaluated: no section
