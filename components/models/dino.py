"""Self-distillation without labels (DINO, Caron et al. 2021): model, masking and loss in one module.

A student ViT and a teacher ViT (an exponential moving average of the student, no
gradients) each map augmented views of an image through a projection head to ``out_dim``
logits. The student is trained to predict the teacher's softmax on *another* view of the
same image (cross-entropy). Collapse is avoided as in DINO: the teacher's logits are
*centered* (a running mean of its outputs is subtracted, so no dimension can dominate) and
*sharpened* (a low teacher temperature, so the output cannot become uniform).

Optionally (``mask_ratio > 0``) the student sees only a random subset of each view's
patches, as in MSN (Assran et al. 2022), while the teacher sees them all: MSN reports that
predicting the whole view from a part of it favours features a linear probe can use with
few labels, and dropped tokens make the student's passes cheaper. ``centering="sinkhorn"``
replaces the running center by balanced Sinkhorn-Knopp targets and ``koleo_weight`` adds
DINOv2's KoLeo spreading term on the backbone features.

Measured (2026-11, ELPV 4-class, ViT depth 6 / width 192 / patch 8 at 64 px, 300 steps of
32 images, 5-7 min on CPU): none of these variants gave frozen features better than a
randomly initialized encoder's for a linear probe; the loss stays near ``log(out_dim)``
(nearly flat targets) at that budget. A cold teacher (0.04) resists that drift best.

Every view is at ``cfg.img_size`` (no small local crops: the fixed sin-cos position table
has one grid size, and on small grayscale images the crops are what carries the
invariance). The student's :attr:`encoder` is a plain :class:`VisionTransformer`.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from components.models.mae import MaskedAutoencoder
from components.models.vit import VisionTransformer, ViTConfig


class ProjectionHead(nn.Module):
    """DINO head: MLP -> L2-normalized bottleneck -> weight-normalized linear to ``out_dim``.

    The last layer's rows are normalized at every call (weight norm with the gain fixed at
    1, DINO's ``norm_last_layer``): the logits then stay in [-1, 1] times the bottleneck's
    unit norm, which keeps the temperatures meaningful and training stable.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        self.last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last.weight, dim=1))


class SelfDistillation(nn.Module):
    def __init__(
        self,
        cfg: ViTConfig,
        out_dim: int = 1024,
        hidden_dim: int = 1024,
        bottleneck_dim: int = 256,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        mask_ratio: float = 0.0,
        head_layers: int = 3,
        centering: str = "ema",
        sinkhorn_iters: int = 3,
        koleo_weight: float = 0.0,
    ):
        super().__init__()
        self.cfg = cfg
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.mask_ratio = mask_ratio
        if centering not in ("ema", "sinkhorn"):
            raise ValueError(f"centering must be 'ema' or 'sinkhorn', got {centering!r}")
        self.centering, self.sinkhorn_iters, self.koleo_weight = centering, sinkhorn_iters, koleo_weight
        self.encoder = VisionTransformer(cfg)
        self.head = ProjectionHead(cfg.embed_dim, out_dim, hidden_dim, bottleneck_dim, head_layers)
        # The teacher starts as a copy of the student and is only ever moved by update_teacher.
        self.teacher_encoder = copy.deepcopy(self.encoder)
        self.teacher_head = copy.deepcopy(self.head)
        for p in (*self.teacher_encoder.parameters(), *self.teacher_head.parameters()):
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def _student_features(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Pooled student features of a view, with a random ``mask_ratio`` of patches dropped."""
        enc = self.encoder
        if self.mask_ratio <= 0:
            return enc.forward_pool(x)
        tokens = enc.patch_embed(x) + enc.pos_embed[:, 1:]
        tokens, _, _ = MaskedAutoencoder.random_masking(tokens, self.mask_ratio, generator)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        for blk in enc.blocks:
            tokens = blk(tokens)
        return enc.pool(enc.norm(tokens))  # "avg" pools the visible patches only

    def forward(self, views: list[torch.Tensor], teacher_temp: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Views: augmented, normalized ``[B, 1, H, W]`` tensors (at least two); returns the scalar loss."""
        if len(views) < 2:
            raise ValueError("self-distillation needs at least two views of each image")
        B = views[0].shape[0]
        with torch.no_grad():
            # One batched pass per network: all views share the shape.
            t = self.teacher_head(self.teacher_encoder.forward_pool(torch.cat(views))).float()
            if self.centering == "sinkhorn":
                targets = sinkhorn_knopp(t / teacher_temp, self.sinkhorn_iters).chunk(len(views))
            else:
                targets = F.softmax((t - self.center) / teacher_temp, dim=-1).chunk(len(views))
        feats = self._student_features(torch.cat(views), generator)
        s = self.head(feats).float()
        log_probs = F.log_softmax(s / self.student_temp, dim=-1).chunk(len(views))
        # Each student view predicts the teacher on every *other* view (cross-view only: the
        # same view would be a shortcut).
        total, pairs = 0.0, 0
        for i, q in enumerate(targets):
            for j, lp in enumerate(log_probs):
                if i != j:
                    total = total + (-(q * lp).sum(dim=-1)).mean()
                    pairs += 1
        if self.training:
            self.update_center(t)
        loss = total / pairs
        if self.koleo_weight > 0:
            loss = loss + self.koleo_weight * sum(koleo(f) for f in feats.float().chunk(len(views))) / len(views)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the teacher's mean logit: subtracting it keeps any one dimension from winning."""
        self.center.mul_(self.center_momentum).add_(teacher_logits.mean(dim=0, keepdim=True), alpha=1 - self.center_momentum)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student; call after ``opt.step()``."""
        for student, teacher in ((self.encoder, self.teacher_encoder), (self.head, self.teacher_head)):
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """Teacher targets ``[N, K]`` whose prototypes are used equally often across the batch (SwAV,
    DINOv2): a hard constraint in place of the running center, so neither one prototype for
    every image nor the same flat distribution for every image can satisfy it."""
    q = torch.exp(scores - scores.max()).T  # [K, N]
    q /= q.sum()
    K, N = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True) * K  # every prototype gets mass 1/K
        q /= q.sum(dim=0, keepdim=True) * N  # every sample gets mass 1/N
    return (q * N).T


def koleo(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regularizer (DINOv2): -mean log distance to the nearest other sample in the batch,
    on L2-normalized features; it spreads the backbone's features over the sphere."""
    x = F.normalize(x, dim=-1)
    dist = torch.cdist(x, x) + torch.eye(len(x), device=x.device) * 1e3  # mask self-distance
    return -torch.log(dist.min(dim=1).values + eps).mean()


def teacher_temp_at(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07) -> float:
    """Teacher temperature: linear from ``start`` to ``end`` over ``warmup_steps``, then flat.

    A cold teacher early on gives sharp targets while the center is still adapting; too
    warm a teacher late makes targets near-uniform (collapse to the uniform distribution).
    """
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / max(1, warmup_steps)


def teacher_momentum_at(step: int, total: int, base: float = 0.996, final: float = 1.0) -> float:
    """EMA momentum: half-cosine from ``base`` to ``final`` (a teacher that settles as lr falls)."""
    return final - (final - base) * 0.5 * (1.0 + math.cos(math.pi * min(step / max(1, total), 1.0)))
