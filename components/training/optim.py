"""Optimizer pieces shared by pretraining and adaptation: AdamW parameter groups and the
learning-rate schedule."""
from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float, lr_scale=None) -> list[dict]:
    """AdamW groups: no decay on biases, norms, tokens and position tables.

    ``lr_scale(name) -> float`` optionally scales the learning rate per parameter (layer decay).
    """
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.ndim < 2 or name.endswith(("cls_token", "pos_embed", "mask_token")) else weight_decay
        scale = lr_scale(name) if lr_scale else 1.0
        groups.setdefault((wd, scale), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_scale": s} for (wd, s), ps in groups.items()]


def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warmup to ``peak`` then half-cosine down to ``floor``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
