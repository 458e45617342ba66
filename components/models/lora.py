"""Low-rank adapters (LoRA, Hu et al. 2021) for the attention projections of a ViT.

A frozen linear ``W x + b`` gets a trainable low-rank update: ``W x + b + (alpha / r) B A x``
with ``A [r, in]`` and ``B [out, r]``. ``B`` starts at zero, so the adapted model starts
exactly as the pretrained one. After training the update is folded into ``W``
(:func:`merge_lora`): the result is a plain :class:`VisionTransformer` with the same
parameter names, so checkpoints, loading and serving do not know LoRA ever happened.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from components.models.vit import VisionTransformer

LORA_TARGETS = ("qkv", "proj")  # the attention projections of a block that can be adapted


def check_lora_args(rank: int, alpha: float, dropout: float = 0.0) -> None:
    """Raise ``ValueError`` for a rank below 1, a non-positive alpha or a dropout outside [0, 1)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        check_lora_args(rank, alpha, dropout)
        if rank > min(base.in_features, base.out_features):
            raise ValueError(f"LoRA rank {rank} exceeds the layer's size {base.out_features}x{base.in_features}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear / the LoRA paper's code
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta(self) -> torch.Tensor:
        """The weight update ``[out, in]`` this adapter adds to the base weight."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matmuls instead of materializing the [out, in] delta every step.
        return self.base(x) + (self.dropout(x) @ self.lora_a.T @ self.lora_b.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """The base linear with the update folded into its weight (the base is modified in place)."""
        self.base.weight.add_(self.delta().to(self.base.weight.dtype))
        return self.base


def inject_lora(model: VisionTransformer, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                targets: tuple[str, ...] = ("qkv",)) -> list[LoRALinear]:
    """Wrap ``attn.<target>`` of every block in a :class:`LoRALinear` and freeze everything else
    in ``model``; returns the adapters (their ``lora_a``/``lora_b`` are the only trainable parameters)."""
    check_lora_args(rank, alpha, dropout)
    targets = tuple(dict.fromkeys(targets))
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be a non-empty subset of {LORA_TARGETS}, got {tuple(targets)}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters; merge them first")
    # Remembered so that merge_lora hands back the model exactly as trainable as it came
    # (pos_embed, for one, is a frozen parameter of a plain ViT).
    model._lora_requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    for blk in model.blocks:
        for name in targets:
            adapter = LoRALinear(getattr(blk.attn, name), rank, alpha, dropout)
            setattr(blk.attn, name, adapter)
            adapters.append(adapter)
    return adapters


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every :class:`LoRALinear` in ``model`` into its base linear and put the plain linear
    back in its place; parameters get back the ``requires_grad`` they had before :func:`inject_lora`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merge())
    for m in model.modules():  # the injected model may be a submodule of ``model``
        before = m.__dict__.pop("_lora_requires_grad", None)
        if before is not None:
            for name, p in m.named_parameters():
                p.requires_grad_(before.get(name, True))
    return model
