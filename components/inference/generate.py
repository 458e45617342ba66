"""Sampling new domain images from a sequential backbone (components/models/sequential.py):
token sequences drawn one token at a time (temperature, top-k), decoded by the backbone's own
tokenizer, and laid out as one grid PNG (what `dlvm generate` stores as an artifact).
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from components.data.images import Preprocess
from components.models.backbones import build_backbone, checkpoint_config, family_of, load_backbone_weights
from components.models.vit import PIXEL_MEAN, PIXEL_STD


@dataclass
class GenerateConfig:
    n: int = 16
    temperature: float = 1.0
    top_k: int | None = None  # None: the whole codebook
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n <= 1024:
            raise ValueError(f"n must be in [1, 1024], got {self.n}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")

    def to_dict(self) -> dict:
        return asdict(self)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Normalized ``[N, 1, H, W]`` -> uint8 ``[N, H, W]`` (clipped to the gray range)."""
    x = (images.float()[:, 0] * PIXEL_STD + PIXEL_MEAN).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).numpy()


def load_generator(checkpoint: dict, top_k: int | None = None):
    """The sequential backbone a backbone checkpoint holds (eval mode, CPU); refuses anything else
    (and a ``top_k`` larger than its codebook)."""
    if checkpoint.get("kind") != "backbone":
        raise ValueError(f"generation needs a sequential backbone; this checkpoint is a {checkpoint.get('kind')!r}")
    backbone_cfg = checkpoint_config(checkpoint)
    if family_of(backbone_cfg) != "sequential":
        raise ValueError(f"generation needs a sequential backbone (`dlvm pretrain --method sequential`); "
                         f"this one is a {family_of(backbone_cfg)}")
    if top_k is not None and top_k > backbone_cfg.tokenizer.codebook_size:
        raise ValueError(f"top_k {top_k} is larger than the codebook ({backbone_cfg.tokenizer.codebook_size})")
    model = build_backbone(backbone_cfg, seed=0)
    load_backbone_weights(model, checkpoint["state_dict"])
    return model.eval()


def generator_input(checkpoint: dict) -> Preprocess:
    """How the backbone's images are decoded (what real images are compared with samples at)."""
    return Preprocess.coerce(checkpoint.get("preprocess") or checkpoint_config(checkpoint).img_size)


@torch.no_grad()
def sample(model, cfg: GenerateConfig) -> np.ndarray:
    """``cfg.n`` images (uint8 ``[n, H, W]``) from a sequential backbone; a seed fixes them on CPU."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return to_uint8(model.generate(cfg.n, cfg.temperature, cfg.top_k, gen))


def generate_images(checkpoint: dict, cfg: GenerateConfig) -> np.ndarray:
    """:func:`sample` from the sequential backbone a backbone checkpoint holds."""
    return sample(load_generator(checkpoint, cfg.top_k), cfg)


def grid_png(images: np.ndarray, cols: int | None = None, pad: int = 2) -> bytes:
    """uint8 ``[N, H, W]`` -> one PNG, images in rows of ``cols`` (default: a near-square grid)."""
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"images must be a non-empty uint8 [N, H, W], got {images.dtype} {images.shape}")
    n, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    buf = io.BytesIO()
    Image.fromarray(canvas, mode="L").save(buf, format="PNG")
    return buf.getvalue()
