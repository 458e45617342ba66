"""Self-supervised pretraining of a ViT encoder with a masked autoencoder.

One readable loop, top to bottom (data -> model -> optimizer -> steps -> encoder weights),
every knob in :class:`PretrainConfig`. Images arrive as one uint8 array ``[N, H, W]`` at the
encoder's resolution, live on the device as uint8 and are augmented there in torch, so a
step costs one gather, one ``grid_sample`` and the model.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from components.models.mae import MaskedAutoencoder
from components.models.vit import ViTConfig, load_pretrained_weights, normalize_uint8
from components.training.device import autocast_for, pick_device


# ------------------------------------------------------------------------------ augmentation


@dataclass
class Augment:
    """Label-preserving augmentations for grayscale industrial images.

    Mild random-resized crops (a part stays a part: no 8 % crops as for ImageNet), flips,
    optional 90-degree turns (square sensors, cells, dies) and small brightness/contrast
    changes (exposure and gain drift between cameras).
    """

    crop_scale: tuple[float, float] = (0.6, 1.0)  # area fraction kept; (1, 1) = no crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = False
    brightness: float = 0.1  # additive, in units of the full gray range
    contrast: float = 0.1  # multiplicative: factor in [1 - c, 1 + c]

    @classmethod
    def none(cls) -> "Augment":
        return cls(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, vflip=False, rot90=False, brightness=0.0, contrast=0.0)


def augment_batch(images: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """uint8 ``[B, H, W]`` on any device -> augmented, normalized float ``[B, 1, H, W]``.

    All random numbers come from ``generator`` (a CPU generator), so a seed fixes the
    result whatever the device.
    """
    B = images.shape[0]
    x = images.unsqueeze(1).float() / 255.0
    dev = images.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64)

    # One affine map per image (crop, flips, 90-degree turns) and one grid_sample.
    area = uniform(*aug.crop_scale)
    log_r = uniform(math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]))
    sx = torch.sqrt(area * log_r.exp()).clamp(max=1.0)
    sy = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    cx = (1 - sx) * uniform(-1.0, 1.0)
    cy = (1 - sy) * uniform(-1.0, 1.0)
    fx = torch.where(torch.rand(B, generator=generator) < 0.5, -1.0, 1.0).double() if aug.hflip else torch.ones(B, dtype=torch.float64)
    fy = torch.where(torch.rand(B, generator=generator) < 0.5, -1.0, 1.0).double() if aug.vflip else torch.ones(B, dtype=torch.float64)
    k = torch.randint(0, 4, (B,), generator=generator).double() if aug.rot90 else torch.zeros(B, dtype=torch.float64)
    cos, sin = torch.cos(k * math.pi / 2).round(), torch.sin(k * math.pi / 2).round()
    theta = torch.zeros(B, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx * fx, -sin * sy * fy
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx * fx, cos * sy * fy
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    if not torch.equal(theta, identity.expand(B, 2, 3)):
        grid = F.affine_grid(theta.float().to(dev), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    if aug.contrast or aug.brightness:
        c = uniform(1 - aug.contrast, 1 + aug.contrast).float().to(dev).view(B, 1, 1, 1)
        b = uniform(-aug.brightness, aug.brightness).float().to(dev).view(B, 1, 1, 1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = ((x - mean) * c + mean + b).clamp(0.0, 1.0)
    return normalize_uint8(x * 255.0)  # same normalization as un-augmented inputs


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


# ------------------------------------------------------------------------------ config + loop


@dataclass
class PretrainConfig:
    """Every knob of MAE pretraining. ``lr`` is the absolute peak learning rate."""

    vit: ViTConfig = field(default_factory=lambda: ViTConfig.tiny(64, 8, depth=6, global_pool="avg"))
    mask_ratio: float = 0.75
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1.5e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 0.0  # 0 = off
    seed: int = 0
    device: str = "auto"
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    contrastive_weight: float = 0.0  # > 0: add InfoNCE between two masked views (see mae.py)
    contrastive_dim: int = 128
    temperature: float = 0.2
    augment: Augment = field(default_factory=Augment)
    max_seconds: float | None = None  # hard stop (the schedule is not shortened)

    @classmethod
    def demo(cls, **kw) -> "PretrainConfig":
        """The CPU demo recipe: ~7 min on 2 cores for the 2,624 ELPV images (see benchmarks)."""
        return cls(**kw)

    @classmethod
    def tiny(cls, img_size: int = 32, **kw) -> "PretrainConfig":
        """A seconds-long run for tests."""
        base = dict(
            vit=ViTConfig(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool="avg"),
            steps=30, batch_size=16, lr=2e-3, warmup_steps=5, decoder_dim=32, decoder_depth=1, decoder_heads=2,
            device="cpu",
        )
        return cls(**{**base, **kw})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vit"] = self.vit.to_dict()
        return d


@dataclass
class PretrainResult:
    encoder_state: dict  # VisionTransformer state dict (CPU tensors, no head)
    losses: list[float]  # one per step
    seconds: float
    images_per_s: float


def pretrain(
    images: np.ndarray,
    cfg: PretrainConfig,
    progress: bool = True,
    init_encoder_state: dict | None = None,
) -> PretrainResult:
    """MAE-pretrain a ViT encoder on uint8 grayscale images ``[N, H, W]`` (H = W = ``cfg.vit.img_size``).

    ``init_encoder_state`` continues from existing weights (ours, timm, MAE or HF ViT).
    Deterministic on CPU for a given ``cfg.seed``.
    """
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
    if images.shape[1:] != (cfg.vit.img_size, cfg.vit.img_size):
        raise ValueError(f"images are {images.shape[1:]}, the encoder expects {cfg.vit.img_size}px squares")
    if cfg.vit.in_chans != 1:
        raise ValueError("pretraining works on grayscale images: vit.in_chans must be 1")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    # data: the whole set stays on the device as uint8
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    n = data.shape[0]
    batch_size = min(cfg.batch_size, n)

    # model
    contrastive = cfg.contrastive_weight > 0
    model = MaskedAutoencoder(
        cfg.vit, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.norm_pix_loss,
        contrastive_dim=cfg.contrastive_dim if contrastive else 0, temperature=cfg.temperature,
    )
    if init_encoder_state is not None:
        load_pretrained_weights(model.encoder, init_encoder_state)
    model.to(device).train()

    # optimizer
    groups = param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")

    # loop: epochs of random permutations, cut into batches (last partial batch dropped)
    losses: list[float] = []
    order = torch.randperm(n, generator=gen)
    cursor = 0
    bar = tqdm(total=cfg.steps, desc="pretrain (MAE)", disable=not progress, leave=False)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if cursor + batch_size > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        batch = data[idx.to(device)]
        x = augment_batch(batch, cfg.augment, gen)
        x2 = augment_batch(batch, cfg.augment, gen) if contrastive else None

        lr = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        with autocast_for(device):
            if contrastive:
                loss, _, _ = model.forward_views(x, x2, cfg.mask_ratio, cfg.contrastive_weight, generator=gen)
            else:
                loss, _, _ = model(x, cfg.mask_ratio, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

        losses.append(float(loss.item()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"MAE loss is {losses[-1]} at step {step}; lower cfg.lr")
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
            break
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    encoder_state = {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}
    return PretrainResult(encoder_state, losses, seconds, len(losses) * batch_size / max(seconds, 1e-9))
