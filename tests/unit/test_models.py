"""ViT and MAE: shapes, timm names, foreign-weight loading, masking and the MAE loss."""
from __future__ import annotations

import pytest
import torch

from components.models.mae import MaskedAutoencoder
from components.models.vit import (
    VisionTransformer,
    ViTConfig,
    normalize_uint8,
    sincos_pos_embed,
)
from components.models.weight_mapping import load_pretrained_weights

torch.set_num_threads(2)


def small_cfg(**kw) -> ViTConfig:
    return ViTConfig(**{"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3, **kw})


def test_config_presets_and_round_trip():
    ti = ViTConfig.tiny(96, 12)
    assert (ti.embed_dim, ti.depth, ti.num_heads, ti.grid_size) == (192, 12, 3, 8)
    assert ViTConfig.small().embed_dim == 384 and ViTConfig.base().num_heads == 12
    assert ViTConfig.tiny(64, 8, depth=6).depth == 6
    assert ViTConfig.from_dict(ti.to_dict()) == ti
    with pytest.raises(ValueError, match="unknown ViTConfig keys"):
        ViTConfig.from_dict({**ti.to_dict(), "depht": 3})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="global_pool"):
        ViTConfig(global_pool="max")


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_vit_shapes(pool):
    cfg = small_cfg(global_pool=pool)
    model = VisionTransformer(cfg, num_classes=5).eval()
    x = torch.randn(3, 1, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (3, 1 + 16, 48)
    pooled = model.forward_pool(x)
    assert pooled.shape == (3, 48)
    expected = tokens[:, 0] if pool == "token" else tokens[:, 1:].mean(1)
    torch.testing.assert_close(pooled, expected)
    assert model(x).shape == (3, 5)
    assert isinstance(VisionTransformer(cfg).head, torch.nn.Identity)


def test_normalize_uint8():
    x = normalize_uint8(torch.full((2, 4, 4), 255, dtype=torch.uint8))
    assert x.shape == (2, 1, 4, 4) and x.dtype == torch.float32
    assert torch.allclose(x, torch.tensor((1 - 0.449) / 0.226))


def test_timm_parameter_names():
    keys = set(VisionTransformer(small_cfg(), num_classes=4).state_dict())
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "norm.weight", "norm.bias", "head.weight", "head.bias"}
    for i in range(2):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    assert keys == expected


def test_sincos_pos_embed_is_distinct_per_position():
    pe = sincos_pos_embed(48, 4)
    assert pe.shape == (1, 17, 48)
    assert torch.all(pe[0, 0] == 0)
    d = torch.cdist(pe[0, 1:], pe[0, 1:])
    assert (d + torch.eye(16) * 10).min() > 0.1


def timm_style_rgb_state(dim=48, depth=2, grid=14, patch=16, with_head=True) -> dict:
    """A state dict shaped like timm's vit at 224 px (3 channels, 14x14 grid), in a DDP wrapper."""
    g = torch.Generator().manual_seed(1)
    ref = VisionTransformer(ViTConfig(img_size=grid * patch, patch_size=patch, in_chans=3, embed_dim=dim, depth=depth, num_heads=3), num_classes=1000)
    state = {k: torch.randn(v.shape, generator=g) for k, v in ref.state_dict().items()}
    if not with_head:
        state = {k: v for k, v in state.items() if not k.startswith("head")}
    return {"model": {"module." + k: v for k, v in state.items()}}


def test_load_timm_rgb_weights_into_gray_model():
    src = timm_style_rgb_state(patch=8)  # 112 px, 14x14 grid, 8 px patches
    model = VisionTransformer(small_cfg())  # 32 px -> 4x4 grid, 1 channel
    report = load_pretrained_weights(model, src)
    s = {k.removeprefix("module."): v for k, v in src["model"].items()}
    own = model.state_dict()
    # RGB kernels summed into the single gray channel
    torch.testing.assert_close(own["patch_embed.proj.weight"], s["patch_embed.proj.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(own["blocks.1.attn.qkv.weight"], s["blocks.1.attn.qkv.weight"])
    # cls slot of the position table kept, grid resized 14x14 -> 4x4
    assert own["pos_embed"].shape == (1, 17, 48)
    torch.testing.assert_close(own["pos_embed"][:, 0], s["pos_embed"][:, 0])
    assert "head.weight" in report.dropped and "head.bias" in report.dropped
    assert any("summed 3 input channels" in n for n in report.adapted)
    assert any("pos_embed" in n for n in report.adapted)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 48)


def test_load_resamples_patch_size_and_decoder_keys_are_dropped():
    src = timm_style_rgb_state(patch=16, with_head=False)["model"]
    src = {"encoder." + k.removeprefix("module."): v for k, v in src.items()}
    src["decoder_embed.weight"] = torch.zeros(8, 48)
    src["mask_token"] = torch.zeros(1, 1, 8)
    model = VisionTransformer(small_cfg())  # patch 8
    report = load_pretrained_weights(model, src)
    assert model.patch_embed.proj.weight.shape == (48, 1, 8, 8)
    assert {"decoder_embed.weight", "mask_token"} <= set(report.dropped)
    assert any("resampled 16x16" in n for n in report.adapted)


def test_load_hf_vit_names():
    ours = VisionTransformer(small_cfg(in_chans=3))
    s = ours.state_dict()
    hf = {
        "vit.embeddings.cls_token": s["cls_token"],
        "vit.embeddings.position_embeddings": s["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": s["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": s["patch_embed.proj.bias"],
        "vit.layernorm.weight": s["norm.weight"],
        "vit.layernorm.bias": s["norm.bias"],
        "classifier.weight": torch.zeros(10, 48),
        "classifier.bias": torch.zeros(10),
    }
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(2):
        for ours_name, hf_name in names.items():
            for kind in ("weight", "bias"):
                hf[f"vit.encoder.layer.{i}.{hf_name}.{kind}"] = s[f"blocks.{i}.{ours_name}.{kind}"]
        for kind in ("weight", "bias"):
            q, k, v = s[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)
            for n, t in zip(("query", "key", "value"), (q, k, v)):
                hf[f"vit.encoder.layer.{i}.attention.attention.{n}.{kind}"] = t
    model = VisionTransformer(small_cfg(in_chans=3))
    load_pretrained_weights(model, hf)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), ours.eval()(x))


def test_load_mismatch_raises_naming_keys():
    src = timm_style_rgb_state(dim=48)
    model = VisionTransformer(small_cfg(embed_dim=24))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight: checkpoint \(144, 48\) vs model \(72, 24\)"):
        load_pretrained_weights(model, src)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    deeper = VisionTransformer(small_cfg(depth=3))
    with pytest.raises(ValueError, match=r"missing keys: \['blocks\.2\."):
        load_pretrained_weights(deeper, src)
    with pytest.raises(ValueError, match=r"unexpected keys: \['extra\.weight'\]"):
        load_pretrained_weights(VisionTransformer(small_cfg()), {**VisionTransformer(small_cfg()).state_dict(), "extra.weight": torch.zeros(1)})


def test_mae_masking_keeps_right_number_of_tokens():
    mae = MaskedAutoencoder(small_cfg(), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    x = torch.randn(4, 16, 8)
    kept, mask, ids_restore = mae.random_masking(x, 0.75, torch.Generator().manual_seed(0))
    assert kept.shape == (4, 4, 8)
    assert mask.shape == (4, 16) and torch.all(mask.sum(1) == 12)
    # the kept tokens are exactly the unmasked ones, in some order
    for b in range(4):
        visible = x[b, mask[b] == 0]
        assert sorted(map(tuple, visible.tolist())) == sorted(map(tuple, kept[b].tolist()))
    # restore order inverts the shuffle
    assert torch.equal(ids_restore.sort(1).values, torch.arange(16).expand(4, 16))
    latent, _, _ = mae.forward_encoder(torch.randn(4, 1, 32, 32), 0.75)
    assert latent.shape == (4, 1 + 4, 48)


def test_mae_patchify_round_trip_and_forward_shapes():
    mae = MaskedAutoencoder(small_cfg(), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    x = torch.randn(2, 1, 32, 32)
    p = mae.patchify(x)
    assert p.shape == (2, 16, 64)
    torch.testing.assert_close(p[0, 1], x[0, 0, 0:8, 8:16].reshape(-1))  # row-major patches
    torch.testing.assert_close(mae.unpatchify(p), x)
    loss, pred, mask = mae(x, 0.5)
    assert loss.ndim == 0 and pred.shape == (2, 16, 64) and mask.shape == (2, 16)
    assert set(mae.encoder.state_dict()) == set(VisionTransformer(small_cfg()).state_dict())


def test_mae_loss_only_counts_masked_patches():
    mae = MaskedAutoencoder(small_cfg(), decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=False)
    x = torch.randn(1, 1, 32, 32)
    target = mae.patchify(x)
    mask = torch.zeros(1, 16)
    mask[0, :4] = 1
    pred = target.clone()
    pred[0, 4:] += 100.0  # wrong on visible patches only: no loss
    assert mae.loss(x, pred, mask).item() == pytest.approx(0.0, abs=1e-6)
    pred[0, 0] += 1.0  # wrong by 1 on one of 4 masked patches
    assert mae.loss(x, pred, mask).item() == pytest.approx(0.25, rel=1e-4)


def test_mae_loss_decreases_on_tiny_run():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(small_cfg(), decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=False)
    # smooth, structured images: partly predictable from their visible patches
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    phase = torch.rand(32, 1, 1) * 6.28
    imgs = torch.sin(6 * xx + phase) * torch.cos(4 * yy)
    imgs = imgs.unsqueeze(1)
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss, _, _ = mae(imgs, 0.75, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
