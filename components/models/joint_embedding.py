"""Joint-embedding self-supervision: two augmented views of an image should embed alike.

At small scale these beat reconstruction (Lightly's Imagenette table at equal budget:
SimCLR 0.889 kNN vs MAE ViT-S 0.610), and they work on any encoder with a pooled output,
so the convolutional family (components/models/resnet.py) can be pretrained with them.
Each piece is small and tested on its own, as in lightly:

* :class:`ProjectionHead` — the MLP between the encoder's pooled features and the loss
  (thrown away after pretraining: the encoder's features, not the projection's, transfer);
* :func:`nt_xent_loss` — SimCLR's normalized-temperature cross-entropy: each view must
  pick its partner out of the 2B - 1 other views of the batch;
* :func:`vicreg_loss` — VICReg: invariance (views close), variance (every dimension keeps
  a spread, which prevents collapse without negatives) and covariance (dimensions
  decorrelated); works with small batches, where SimCLR's negatives run short;
* :class:`JointEmbedding` — encoder + head + loss: ``forward(view_a, view_b) -> loss``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

JOINT_EMBEDDING_METHODS = ("simclr", "vicreg")


class ProjectionHead(nn.Module):
    """Linear -> BatchNorm -> ReLU blocks, a plain linear last layer: ``dims = [in, hidden..., out]``."""

    def __init__(self, dims: list[int]):
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"a projection head needs at least input and output sizes, got {dims}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            layers.append(nn.Linear(d_in, d_out, bias=last))
            if not last:
                layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss for ``B`` positive pairs ``(z_a[i], z_b[i])``: cross-entropy of each view's
    cosine similarities (over ``temperature``) to all other ``2B - 1`` views, its partner the target."""
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"expected two [B, D] batches of projections, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    b = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own negative
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, partner)


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, invariance: float = 25.0, variance: float = 25.0,
                covariance: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg (Bardes et al. 2022) with its published weights 25 / 25 / 1."""
    if z_a.shape != z_b.shape or z_a.dim() != 2 or z_a.shape[0] < 2:
        raise ValueError(f"expected two [B>=2, D] batches of projections, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    z_a, z_b = z_a.float(), z_b.float()
    n, d = z_a.shape
    inv = F.mse_loss(z_a, z_b)

    def spread(z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(z.var(dim=0) + eps)
        return F.relu(1.0 - std).mean()

    def decorrelation(z: torch.Tensor) -> torch.Tensor:
        z = z - z.mean(dim=0)
        cov = (z.T @ z) / (n - 1)
        off = cov - torch.diag(torch.diagonal(cov))
        return off.pow(2).sum() / d

    var = spread(z_a) + spread(z_b)
    cov = decorrelation(z_a) + decorrelation(z_b)
    return invariance * inv + variance * var + covariance * cov


class JointEmbedding(nn.Module):
    """An encoder with ``forward_pool`` and a projection head, trained so two views agree."""

    def __init__(self, encoder: nn.Module, method: str = "simclr", proj_dims: tuple[int, ...] = (512, 128),
                 temperature: float = 0.2):
        super().__init__()
        if method not in JOINT_EMBEDDING_METHODS:
            raise ValueError(f"joint-embedding method must be one of {', '.join(JOINT_EMBEDDING_METHODS)}, "
                             f"got {method!r}")
        self.encoder, self.method, self.temperature = encoder, method, temperature
        self.head = ProjectionHead([encoder.num_features, *proj_dims])

    def forward(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        # One pass over both views: batch-norm statistics see the whole 2B batch.
        z = self.head(self.encoder.forward_pool(torch.cat([view_a, view_b])))
        z_a, z_b = z.chunk(2)
        if self.method == "simclr":
            return nt_xent_loss(z_a, z_b, self.temperature)
        return vicreg_loss(z_a, z_b)
