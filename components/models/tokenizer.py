"""A visual tokenizer for grayscale domain images: a small convolutional autoencoder whose
bottleneck is quantized with finite scalar quantization (FSQ, Mentzer et al. 2023), so an
image becomes a grid of discrete tokens (32 px -> 8 x 8 = 64 tokens with two stride-2
stages) and a token grid decodes back to an image.

Why FSQ in plain torch and not ``vector-quantize-pytorch``: FSQ has no codebook to learn,
no commitment loss, no EMA updates and no dead-code restarts: each latent channel is
bounded with ``tanh`` and rounded to one of ``levels[i]`` values (straight-through
gradient), and the code index is the mixed-radix number of those digits. That is the
:class:`FSQ` class below, about twenty lines; the library would add a dependency (and its
own dependencies) for them and make the checkpoint's state dict depend on its parameter
names. Codebook collapse, the usual VQ-VAE failure, cannot happen by construction; the
codebook usage is still measured (:func:`codebook_usage`) and recorded with every tokenizer.

Inputs are normalized float images ``[B, 1, H, W]`` (components/models/vit.py:
``normalize_uint8``), the same as every backbone's; the reconstruction loss is the mean
squared error in that space and PSNR is reported on the [0, 1] gray range.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from components.models.vit import PIXEL_STD


@dataclass
class TokenizerConfig:
    """Shape of the tokenizer: ``channels`` has one entry per stride-2 stage (the token grid
    is ``img_size / 2**len(channels)`` on a side); ``levels`` are FSQ's per-channel levels
    (the codebook has their product entries: (8, 5, 5, 5) = 1,000 as in the FSQ paper)."""

    img_size: int = 32
    in_chans: int = 1
    channels: tuple[int, ...] = (32, 64)
    levels: tuple[int, ...] = (8, 5, 5, 5)

    def __post_init__(self) -> None:
        self.channels, self.levels = tuple(int(c) for c in self.channels), tuple(int(v) for v in self.levels)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be one or more positive widths, got {self.channels}")
        if not self.levels or any(v < 2 for v in self.levels):
            raise ValueError(f"FSQ levels must each be >= 2, got {self.levels}")
        if self.img_size % (2 ** len(self.channels)):
            raise ValueError(f"img_size {self.img_size} is not a multiple of {2 ** len(self.channels)} "
                             f"({len(self.channels)} stride-2 stages)")

    @property
    def grid_size(self) -> int:
        return self.img_size // 2 ** len(self.channels)

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TokenizerConfig keys: {unknown}")
        return cls(**d)


class FSQ(nn.Module):
    """Finite scalar quantization: ``[..., d]`` latents -> codes on a fixed grid and integer indices."""

    def __init__(self, levels: tuple[int, ...], eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        lv = torch.tensor(levels, dtype=torch.long)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), lv[:-1]]), 0),
                             persistent=False)
        self.codebook_size = math.prod(levels)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each channel into (-L/2, L/2) so rounding gives exactly L values (even L: shifted by 1/2)."""
        half_l = (self.levels - 1) * (1 + self.eps) / 2
        offset = (self.levels % 2 == 0).to(z.dtype) * 0.5
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes in [-1, 1] with a straight-through gradient, indices ``[...]``)."""
        b = self.bound(z.float())
        digits = b + (b.round() - b).detach()
        codes = digits / (self.levels // 2)
        return codes, self.codes_to_indices(codes)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        half = self.levels // 2
        digits = (codes * half + half).round().long()
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        half = self.levels // 2
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        return (digits - half).float() / half


def _stage(cin: int, cout: int, down: bool) -> nn.Sequential:
    conv = (nn.Conv2d(cin, cout, 4, stride=2, padding=1) if down
            else nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
    return nn.Sequential(conv, nn.GroupNorm(1, cout), nn.GELU(), nn.Conv2d(cout, cout, 3, padding=1), nn.GELU())


class VisualTokenizer(nn.Module):
    """Conv encoder -> FSQ -> conv decoder. No BatchNorm: train and eval modes compute the same."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        widths = (cfg.in_chans, *cfg.channels)
        self.encoder = nn.Sequential(*(_stage(widths[i], widths[i + 1], True) for i in range(len(cfg.channels))),
                                     nn.Conv2d(cfg.channels[-1], len(cfg.levels), 1))
        back = tuple(reversed(cfg.channels))
        self.decoder = nn.Sequential(nn.Conv2d(len(cfg.levels), back[0], 3, padding=1), nn.GELU(),
                                     *(_stage(back[i], back[i + 1] if i + 1 < len(back) else back[-1], False)
                                       for i in range(len(back))),
                                     nn.Conv2d(back[-1], cfg.in_chans, 3, padding=1))
        self.quantizer = FSQ(cfg.levels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, 1, H, W]`` -> (codes ``[B, d, g, g]``, token indices ``[B, g*g]`` in raster order)."""
        z = self.encoder(x).permute(0, 2, 3, 1)  # [B, g, g, d]
        codes, idx = self.quantizer(z)
        return codes.permute(0, 3, 1, 2), idx.flatten(1)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[1]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token indices ``[B, g*g]`` (raster order) -> normalized images ``[B, 1, H, W]``."""
        g = self.cfg.grid_size
        codes = self.quantizer.indices_to_codes(tokens.reshape(-1, g, g)).permute(0, 3, 1, 2)
        return self.decoder(codes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction loss, reconstruction, token indices)."""
        codes, idx = self.encode(x)
        recon = self.decode_codes(codes)
        return F.mse_loss(recon.float(), x.float()), recon, idx


def psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB on the [0, 1] gray range, from normalized images (one mean squared error over the set)."""
    mse = float(((recon.float() - target.float()) * PIXEL_STD).clamp(-1, 1).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def codebook_usage(tokens: torch.Tensor, codebook_size: int) -> dict:
    """Share of the codebook's entries used at least once, and the perplexity of their use
    (exp of the token entropy: the number of equally used codes it amounts to)."""
    counts = torch.bincount(tokens.flatten().long(), minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}
