"""The convolutional backbone family: shapes, timm names, weight loading with RGB stems,
configs that round-trip through checkpoints, and the family-neutral backbone interface."""
from __future__ import annotations

import pytest
import torch

from components.models.backbones import (
    build_backbone,
    checkpoint_config,
    config_from_dict,
    config_to_dict,
    family_of,
    load_backbone_weights,
    parameter_count,
)
from components.models.resnet import ResNet, ResNetConfig
from components.models.vit import ViTConfig


@pytest.mark.parametrize("cfg, width, params_m", [
    (ResNetConfig.tiny(64), 128, 0.31), (ResNetConfig.small(64), 256, 2.79),
    (ResNetConfig.resnet18(64), 512, 11.17), (ResNetConfig.resnet50(64), 2048, 23.50)])
def test_sizes_and_pooled_features(cfg, width, params_m):
    model = build_backbone(cfg, seed=0).eval()
    out = model.forward_pool(torch.randn(3, 1, 64, 64))
    assert out.shape == (3, width) == (3, model.num_features) == (3, cfg.embed_dim)
    assert parameter_count(cfg) / 1e6 == pytest.approx(params_m, abs=0.01)


def test_timm_parameter_names():
    names = set(ResNet(ResNetConfig.resnet18()).state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.weight", "layer4.1.bn2.weight"):
        assert key in names
    assert "layer1.0.conv3.weight" in set(ResNet(ResNetConfig.resnet50()).state_dict())


def test_rgb_weights_load_into_the_gray_stem_and_heads_are_dropped():
    rgb = ResNet(ResNetConfig.tiny(32, in_chans=3), num_classes=1000).state_dict()
    gray = ResNet(ResNetConfig.tiny(32))
    report = load_backbone_weights(gray, {"model": {f"module.{k}": v for k, v in rgb.items()}})
    assert torch.allclose(gray.conv1.weight, rgb["conv1.weight"].sum(dim=1, keepdim=True))
    assert "fc.weight" in report.dropped and any("summed 3 input channels" in n for n in report.adapted)
    with pytest.raises(ValueError, match=r"shape mismatch: conv1.weight: checkpoint \(16, 1, 3, 3\) vs model \(32, 1, 3, 3\).*\(and 57 more\)"):
        load_backbone_weights(ResNet(ResNetConfig.small(32)), rgb)
    with pytest.raises(ValueError, match="missing keys"):
        load_backbone_weights(ResNet(ResNetConfig.tiny(32)), {"conv1.weight": rgb["conv1.weight"]})


def test_seeded_builds_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a, b = build_backbone(ResNetConfig.tiny(32), seed=3), build_backbone(ResNetConfig.tiny(32), seed=3)
    assert torch.rand(1) == before
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_configs_round_trip_and_old_vit_checkpoints_still_read():
    for cfg in (ResNetConfig.small(96), ViTConfig.tiny(64, 8, depth=2)):
        assert config_from_dict(config_to_dict(cfg)) == cfg
    assert family_of(ResNetConfig.tiny()) == "resnet" and family_of(ViTConfig()) == "vit"
    old = {"vit_config": ViTConfig(img_size=32, patch_size=8, depth=2).to_dict()}
    assert checkpoint_config(old) == ViTConfig(img_size=32, patch_size=8, depth=2)
    with pytest.raises(ValueError, match="unknown backbone family 'convnext'"):
        config_from_dict({"family": "convnext"})
    with pytest.raises(ValueError, match="layers .* and widths .* must name the same stages"):
        ResNetConfig(layers=(1, 1), widths=(8,))


def test_drop_path_only_in_training():
    model = build_backbone(ResNetConfig.tiny(32), seed=0)
    model.set_drop_path(0.5)
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    assert torch.equal(model.forward_pool(x), model.forward_pool(x))


def test_input_norm_image_standardizes_each_image_inside_the_model():
    from components.models.resnet import standardize_images

    x = torch.randn(4, 1, 32, 32) * torch.tensor([0.5, 1.0, 2.0, 3.0]).view(4, 1, 1, 1) + 5.0
    z = standardize_images(x)
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(4, 1), atol=1e-5)
    assert torch.allclose(z.pow(2).mean(dim=(2, 3)), torch.ones(4, 1), atol=1e-4)
    assert torch.equal(standardize_images(torch.full((1, 1, 8, 8), 3.0)), torch.zeros(1, 1, 8, 8))  # flat: 0, no NaN
    torch.manual_seed(0)
    cfg = ResNetConfig.tiny(32, input_norm="image")
    model = ResNet(cfg, num_classes=3).eval()
    # a change of exposure and gain does not change the answer; with the default input it does
    with torch.no_grad():
        assert torch.allclose(model(x), model(x * 1.7 - 0.4), atol=1e-4)
        plain = ResNet(ResNetConfig.tiny(32), num_classes=3).eval()
        assert not torch.allclose(plain(x), plain(x * 1.7 - 0.4), atol=1e-4)
    # recorded in the architecture only when not the default (older configs stay equal)
    assert cfg.to_dict()["input_norm"] == "image" and "input_norm" not in ResNetConfig.tiny(32).to_dict()
    assert ResNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="input_norm must be one of"):
        ResNetConfig.tiny(32, input_norm="batch")
