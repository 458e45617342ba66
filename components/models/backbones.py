"""The backbone families behind one interface.

A backbone config (:class:`ViTConfig`, :class:`ResNetConfig`, :class:`SequentialConfig`,
a tokenizer and a causal transformer over its tokens, or :class:`DescriptorConfig`, dense
descriptors and a kernel feature map fitted without gradients) has ``img_size``,
``embed_dim`` (the pooled feature width), ``family`` and ``to_dict``; the module built from
it has ``forward_pool(images) -> [B, D]``, ``num_features`` and ``set_drop_path``. Every
pretraining method, adaptation method and evaluation works through this interface; the
family-specific parts (MAE and DINO's patch masking, LoRA on attention) say so when given
the other family.

Checkpoints written before the ResNet family existed hold a ``vit_config`` without a
``family`` key: :func:`config_from_dict` reads them as ViTs.
"""
from __future__ import annotations

import torch
from torch import nn

from components.models.descriptors import DescriptorBackbone, DescriptorConfig
from components.models.resnet import ResNet, ResNetConfig
from components.models.sequential import SequentialBackbone, SequentialConfig, load_sequential_weights
from components.models.vit import VisionTransformer, ViTConfig

BackboneConfig = ViTConfig | ResNetConfig | SequentialConfig | DescriptorConfig
FAMILIES = ("vit", "resnet", "sequential", "descriptor")


def family_of(cfg: BackboneConfig) -> str:
    if isinstance(cfg, SequentialConfig):
        return "sequential"
    if isinstance(cfg, DescriptorConfig):
        return "descriptor"
    return "resnet" if isinstance(cfg, ResNetConfig) else "vit"


def has_scratch_form(cfg: BackboneConfig) -> bool:
    """Whether an untrained instance of ``cfg``'s family is a model worth comparing with: a network
    trained from scratch on the labels is (the sweep's ``scratch`` rows); a descriptor backbone is
    not, since its encoder learns nothing from labels and unfitted it is a one-centre bag of
    descriptors (0.619 on ELPV, below every sanity baseline, for 6 of the demo's 20 minutes)."""
    return family_of(cfg) != "descriptor"


def config_to_dict(cfg: BackboneConfig) -> dict:
    return {**cfg.to_dict(), "family": family_of(cfg)}


def config_from_dict(d: dict) -> BackboneConfig:
    """A backbone config from :func:`config_to_dict`'s output (or an older ViT-only dict)."""
    d = dict(d)
    family = d.pop("family", "vit")
    if family == "resnet":
        return ResNetConfig.from_dict(d)
    if family == "vit":
        return ViTConfig.from_dict(d)
    if family == "sequential":
        return SequentialConfig.from_dict(d)
    if family == "descriptor":
        return DescriptorConfig.from_dict(d)
    raise ValueError(f"unknown backbone family {family!r} (families: {', '.join(FAMILIES)})")


def checkpoint_config(checkpoint: dict) -> BackboneConfig:
    """The backbone config a backbone or classifier checkpoint records (old ones: ``vit_config``)."""
    raw = checkpoint.get("backbone_config", checkpoint.get("vit_config"))
    if raw is None:
        raise ValueError("checkpoint records no backbone config")
    return config_from_dict(dict(raw))


def build_backbone(cfg: BackboneConfig, seed: int | None = None) -> nn.Module:
    """A randomly initialised encoder of ``cfg`` (seeded without touching the global RNG when ``seed`` is given)."""
    make = {"resnet": ResNet, "vit": VisionTransformer, "sequential": SequentialBackbone,
            "descriptor": DescriptorBackbone}[family_of(cfg)]
    if seed is None:
        return make(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make(cfg)


def load_backbone_weights(model: nn.Module, state: dict):
    """Load ``state`` (ours, or timm / MAE / Hugging Face / torchvision names) into ``model``; the load report."""
    from components.models.weight_mapping import load_pretrained_weights, load_resnet_weights

    if isinstance(model, ResNet):
        return load_resnet_weights(model, state)
    if isinstance(model, SequentialBackbone):
        return load_sequential_weights(model, state)
    if isinstance(model, DescriptorBackbone):  # fitted buffers, ours only: every key must match
        return model.load_state_dict(state, strict=True)
    return load_pretrained_weights(model, state)


def parameter_count(cfg: BackboneConfig) -> int:
    return sum(p.numel() for p in build_backbone(cfg, seed=0).parameters())
