"""The joint-embedding pieces (lightly-style: each loss and head on its own)."""
from __future__ import annotations

import math

import pytest
import torch

from components.models.backbones import build_backbone
from components.models.joint_embedding import (
    JointEmbedding,
    ProjectionHead,
    nt_xent_loss,
    vicreg_loss,
)
from components.models.resnet import ResNetConfig


def test_nt_xent_is_low_for_matching_views_and_log_n_for_uninformative_ones():
    z = torch.randn(16, 8)
    assert nt_xent_loss(z, z, temperature=0.05) < 0.1
    # Identical projections for every image: each view's partner is as likely as any of 2B - 1.
    same = torch.ones(16, 8)
    assert nt_xent_loss(same, same).item() == pytest.approx(math.log(31), rel=1e-5)
    with pytest.raises(ValueError, match="two \\[B, D\\] batches"):
        nt_xent_loss(z, z[:3])


def test_vicreg_punishes_collapse_and_correlation():
    torch.manual_seed(0)
    spread = torch.randn(64, 16)
    collapsed = torch.zeros(64, 16)
    assert vicreg_loss(collapsed, collapsed) > vicreg_loss(spread, spread)
    correlated = spread[:, :1].repeat(1, 16)
    assert vicreg_loss(correlated, correlated) > vicreg_loss(spread, spread)
    assert vicreg_loss(spread, spread + 1.0) > vicreg_loss(spread, spread)  # invariance term


def test_projection_head_shapes_and_the_model_learns_to_agree():
    assert ProjectionHead([8, 32, 4])(torch.randn(5, 8)).shape == (5, 4)
    torch.manual_seed(0)
    model = JointEmbedding(build_backbone(ResNetConfig.tiny(16), seed=0), "simclr", (32, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images = torch.randn(32, 1, 16, 16)
    losses = []
    for _ in range(25):
        noisy_a, noisy_b = images + 0.1 * torch.randn_like(images), images + 0.1 * torch.randn_like(images)
        loss = model(noisy_a, noisy_b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    with pytest.raises(ValueError, match="one of simclr, vicreg"):
        JointEmbedding(build_backbone(ResNetConfig.tiny(16), seed=0), "byol")
