"""A plain Vision Transformer for grayscale domain images, with timm parameter names.

The parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``, ``head``) so that timm, MAE and (after renaming) Hugging Face ViT weights load
into it with :func:`components.models.weight_mapping.load_pretrained_weights`.

Inputs are float tensors ``[B, C, H, W]`` already normalized; :func:`normalize_uint8`
turns the platform's uint8 grayscale arrays into that form (one place, so pretraining,
adaptation and serving agree on it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

# Gray-level normalization: the mean of ImageNet's RGB means/stds, so that a grayscale image
# fed to RGB weights whose patch-embed channels were summed sees the statistics they expect.
PIXEL_MEAN = 0.449
PIXEL_STD = 0.226


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W]`` (or ``[B, 1, H, W]``) -> normalized float32 ``[B, 1, H, W]``."""
    x = images if images.dim() == 4 else images.unsqueeze(1)
    return (x.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


@dataclass
class ViTConfig:
    """Shape of a ViT encoder. ``global_pool``: ``token`` (cls token) or ``avg`` (mean of patch tokens)."""

    img_size: int = 64
    patch_size: int = 8
    in_chans: int = 1
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    global_pool: str = "token"

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    # Presets with the usual ViT widths (Ti/S/B); depth and pooling can be overridden.
    @classmethod
    def tiny(cls, img_size: int = 64, patch_size: int = 8, **kw) -> "ViTConfig":
        return cls(img_size=img_size, patch_size=patch_size, **{"embed_dim": 192, "depth": 12, "num_heads": 3, **kw})

    @classmethod
    def small(cls, img_size: int = 64, patch_size: int = 8, **kw) -> "ViTConfig":
        return cls(img_size=img_size, patch_size=patch_size, **{"embed_dim": 384, "depth": 12, "num_heads": 6, **kw})

    @classmethod
    def base(cls, img_size: int = 64, patch_size: int = 8, **kw) -> "ViTConfig":
        return cls(img_size=img_size, patch_size=patch_size, **{"embed_dim": 768, "depth": 12, "num_heads": 12, **kw})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig keys: {unknown}")
        return cls(**d)


def sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``[1, (1+) grid^2, D]`` (as in MAE)."""
    if embed_dim % 4:
        raise ValueError("sin-cos position embedding needs embed_dim divisible by 4")
    coords = torch.arange(grid_size, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))

    def enc(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([enc(gy), enc(gx)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]


class Attention(nn.Module):
    """Multi-head self-attention; ``causal`` lets token t attend only to tokens <= t (the
    sequential model of components/models/sequential.py)."""

    def __init__(self, dim: int, num_heads: int, causal: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0, causal: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, causal)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT encoder (+ optional linear head) with timm parameter names.

    ``pos_embed`` is a fixed 2-D sin-cos table (not trained, as in MAE: with a few thousand
    images a learned table is one more thing to overfit); it is still a parameter so that
    pretrained tables load into it.
    """

    def __init__(self, cfg: ViTConfig, num_classes: int = 0, drop_path_rate: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.embed_dim = self.num_features = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(cfg.embed_dim, cfg.grid_size), requires_grad=False)
        dpr = [drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, dpr[i]) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(cfg.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE/timm initialization: xavier for linears and the patch projection (viewed as a
        # linear), small normal for the cls token.
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly to ``rate`` at the last block (fine-tuning)."""
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            blk.drop_path.p = rate * i / max(n - 1, 1)

    def grid_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The patch part of the position table for a ``grid_h x grid_w`` grid of patches: the
        model's own at its input size; for another size (a detector on larger images, or on
        crops of them) the table's grid resized bicubically, as ViTDet does."""
        table, g = self.pos_embed[:, 1:], self.cfg.grid_size
        if (grid_h, grid_w) == (g, g):
            return table
        grid = table.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)

    def embed_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images ``[B, C, H, W]`` (sides multiples of the patch size) -> the tokens the first block
        takes ``[B, 1 + N, D]`` (cls first, positions added) and the patch grid ``(H/p, W/p)``."""
        p = self.cfg.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"this ViT cuts {p} px patches: image sides must be multiples of {p}, "
                             f"got {tuple(x.shape[-2:])}")
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        tokens = self.patch_embed(x) + self.grid_pos_embed(*grid)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1), grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` -> normalized tokens ``[B, 1 + N, D]`` (cls first)."""
        x, _ = self.embed_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` -> the last block's normalized patch tokens as a feature map
        ``[B, D, H/p, W/p]`` (what a dense head, e.g. the detector's, works on)."""
        p = self.cfg.patch_size
        tokens = self.forward_features(x)
        return tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, x.shape[-2] // p, x.shape[-1] // p)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, 1 + N, D]`` -> ``[B, D]`` by the configured ``global_pool``."""
        return tokens[:, 1:].mean(dim=1) if self.cfg.global_pool == "avg" else tokens[:, 0]

    def forward_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> pooled features ``[B, D]`` (what probes and heads see)."""
        return self.pool(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_pool(x))
