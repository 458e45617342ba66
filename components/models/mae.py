"""Masked autoencoder (He et al. 2021): the model, its masking and its loss in one module.

The encoder is a :class:`VisionTransformer` (so its state dict is a plain ViT state dict);
it only sees the visible patches. A light decoder reconstructs the pixels of every patch
and the loss is the mean squared error on the per-patch normalized pixels of the masked
patches only.

Optionally (``contrastive_dim > 0``) two augmented, independently masked views of each
image are encoded and their pooled visible tokens are pulled together with an InfoNCE loss
(as in CAN, Mishra et al. 2022). Reconstruction alone teaches a small ViT to inpaint
texture; the contrastive term makes its pooled features separate images, which is what
a linear probe on few labels needs, at the price of a second (masked, so cheap) encoder pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.models.vit import Block, VisionTransformer, ViTConfig, sincos_pos_embed


class MaskedAutoencoder(nn.Module):
    def __init__(
        self,
        cfg: ViTConfig,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        contrastive_dim: int = 0,
        temperature: float = 0.2,
    ):
        super().__init__()
        self.cfg = cfg
        self.norm_pix_loss = norm_pix_loss
        self.temperature = temperature
        self.encoder = VisionTransformer(cfg)
        p, n = cfg.patch_size, cfg.num_patches
        self.decoder_embed = nn.Linear(cfg.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_dim, cfg.grid_size), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, cfg.mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * cfg.in_chans)
        assert self.decoder_pos_embed.shape[1] == n + 1
        self.projector = (
            nn.Sequential(nn.Linear(cfg.embed_dim, 2 * cfg.embed_dim), nn.GELU(), nn.Linear(2 * cfg.embed_dim, contrastive_dim))
            if contrastive_dim > 0
            else None
        )
        nn.init.normal_(self.mask_token, std=0.02)
        extra = list(self.projector.modules()) if self.projector is not None else []
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules(), *extra]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, N, p*p*C]`` in row-major patch order."""
        B, C, H, W = imgs.shape
        p = self.cfg.patch_size
        x = imgs.reshape(B, C, H // p, p, W // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, p*p*C]`` -> ``[B, C, H, W]``."""
        p, g, C = self.cfg.patch_size, self.cfg.grid_size, self.cfg.in_chans
        x = x.reshape(x.shape[0], g, g, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, g * p, g * p)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """Keep a random ``1 - mask_ratio`` share of tokens per sample.

        Returns the kept tokens ``[B, K, D]``, the binary mask ``[B, N]`` (1 = masked) and
        the permutation that restores the original order.
        """
        B, N, D = x.shape
        keep = max(1, int(round(N * (1 - mask_ratio))))
        # Noise from the generator's own device (a CPU generator keeps CUDA runs seeded too).
        gen_device = generator.device if generator is not None else x.device
        noise = torch.rand(B, N, device=gen_device, generator=generator).to(x.device)
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(B, N, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return kept, mask, ids_restore

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        enc = self.encoder
        x = enc.patch_embed(x) + enc.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in enc.blocks:
            x = blk(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        B, N = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(B, N + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on (per-patch normalized) pixels, averaged over masked patches."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None):
        """Returns ``(loss, pred [B, N, p*p*C], mask [B, N])``."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(imgs, pred, mask), pred, mask

    def info_nce(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE: each view must pick its partner among the 2B - 1 others."""
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        sim = z @ z.T / self.temperature
        sim.fill_diagonal_(float("-inf"))
        B = z1.shape[0]
        target = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)
        return F.cross_entropy(sim, target)

    def forward_views(
        self,
        view1: torch.Tensor,
        view2: torch.Tensor,
        mask_ratio: float = 0.75,
        contrastive_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction of view 1 + ``contrastive_weight`` * InfoNCE between both views.

        Returns ``(total, reconstruction, contrastive)``.
        """
        if self.projector is None:
            raise ValueError("this MaskedAutoencoder was built without a projector (contrastive_dim=0)")
        latent1, mask, ids_restore = self.forward_encoder(view1, mask_ratio, generator)
        latent2, _, _ = self.forward_encoder(view2, mask_ratio, generator)
        recon = self.loss(view1, self.forward_decoder(latent1, ids_restore), mask)
        nce = self.info_nce(self.projector(latent1[:, 1:].mean(1)), self.projector(latent2[:, 1:].mean(1)))
        return recon + contrastive_weight * nce, recon, nce
