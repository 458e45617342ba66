"""Patch features from a backbone of either family, for nearest-neighbour anomaly scoring.

Why mid-level features: the last stage of a CNN (or the last ViT block) has seen whole
objects and generalises away exactly the small local deviations a defect is made of; the
first stage sees only edges. PatchCore takes the middle stages of a CNN, averages each
feature over its 3x3 neighbourhood (a little context, a little robustness to misalignment)
and stacks the deeper map, upsampled, onto the shallower one. A ViT has one resolution: its
patch tokens, from the chosen blocks, each layer-normalised so that no block dominates the
distance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from components.models.resnet import ResNet
from components.models.vit import VisionTransformer, normalize_uint8


@dataclass(frozen=True)
class FeatureConfig:
    """Which features: ``cnn_stages`` (1-based ResNet stages, e.g. (2, 3)), ``vit_blocks``
    (0-based block indices, negative from the end) and the neighbourhood averaged over."""

    cnn_stages: tuple[int, ...] = (2, 3)
    vit_blocks: tuple[int, ...] = (-1,)
    neighbourhood: int = 3

    def __post_init__(self) -> None:
        if not self.cnn_stages or not self.vit_blocks:
            raise ValueError("cnn_stages and vit_blocks must name at least one stage / block")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be an odd size >= 1, got {self.neighbourhood}")


def _resnet_maps(model: ResNet, x: torch.Tensor, stages: tuple[int, ...]) -> list[torch.Tensor]:
    n = len(model.stages)
    if min(stages) < 1 or max(stages) > n:
        raise ValueError(f"cnn_stages {stages} outside this ResNet's stages 1..{n}")
    x = model.stem(x)
    maps = []
    for i, stage in enumerate(model.stages[:max(stages)], start=1):
        x = stage(x)
        if i in stages:
            maps.append(x)
    return maps


def _vit_maps(model: VisionTransformer, x: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
    depth = len(model.blocks)
    if any(not -depth <= b < depth for b in blocks):
        raise ValueError(f"vit_blocks {blocks} outside this ViT's blocks 0..{depth - 1}")
    wanted = sorted({b % depth for b in blocks})
    if x.shape[-1] != model.cfg.img_size or x.shape[-2] != model.cfg.img_size:
        raise ValueError(f"this ViT takes {model.cfg.img_size} px images, got {tuple(x.shape[-2:])}")
    tokens, (gh, gw) = model.embed_tokens(x)
    maps = []
    for i, blk in enumerate(model.blocks[:wanted[-1] + 1]):
        tokens = blk(tokens)
        if i in wanted:
            patches = F.layer_norm(tokens[:, 1:], tokens.shape[-1:])
            maps.append(patches.transpose(1, 2).reshape(x.shape[0], -1, gh, gw))
    return maps


@torch.no_grad()
def patch_features(model: nn.Module, images: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """uint8 images ``[B, H, W]`` -> patch features ``[B, h, w, D]`` (h, w: the finest chosen map)."""
    model.eval()
    x = normalize_uint8(images)
    if isinstance(model, ResNet):
        maps = _resnet_maps(model, x, tuple(sorted(cfg.cnn_stages)))
    elif isinstance(model, VisionTransformer):
        maps = _vit_maps(model, x, cfg.vit_blocks)
    else:
        raise TypeError(f"no patch features for a {type(model).__name__}")
    k = cfg.neighbourhood
    if k > 1:
        maps = [F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False) for m in maps]
    size = maps[0].shape[-2:]
    maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps]
    return torch.cat(maps, dim=1).permute(0, 2, 3, 1).contiguous()


def feature_backbone(checkpoint: dict | None, img_size: int | None = None, seed: int = 0):
    """(module, config) of the backbone whose patch features an anomaly model uses.

    ``checkpoint``: a registered backbone's checkpoint (``backbone_config``/``vit_config`` +
    ``state_dict``); ``None`` is a randomly initialised small ResNet, the from-scratch
    reference (random convolutions are local texture detectors, not nothing). ``img_size`` may
    change the input size: a ResNet takes any; a ViT any multiple of its patch, its position
    table resized to the new grid."""
    from dataclasses import replace

    from components.models.backbones import build_backbone, checkpoint_config, family_of
    from components.models.resnet import ResNetConfig
    from components.models.weight_mapping import resize_pos_embed

    if checkpoint is None:
        cfg = ResNetConfig.small(img_size=img_size or 128)
        return build_backbone(cfg, seed=seed), cfg
    cfg = checkpoint_config(checkpoint)
    state = checkpoint["state_dict"]
    if img_size and img_size != cfg.img_size:
        if family_of(cfg) == "vit" and img_size % cfg.patch_size:
            raise ValueError(f"this ViT backbone cuts {cfg.patch_size} px patches: the image size must be a "
                             f"multiple of {cfg.patch_size}, got {img_size}")
        cfg = replace(cfg, img_size=img_size)
    model = build_backbone(cfg, seed=seed)
    if family_of(cfg) == "vit" and state["pos_embed"].shape != model.pos_embed.shape:
        state = {**state, "pos_embed": resize_pos_embed(state["pos_embed"], model.pos_embed)}
    model.load_state_dict(state)
    return model, cfg
