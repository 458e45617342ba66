"""Label-preserving augmentations for grayscale industrial images, on the device.

Pretraining and adaptation share them: uint8 batches stay on the device and one affine
``grid_sample`` per view does crop, flips and 90-degree turns; brightness and contrast
follow. All random numbers come from a CPU generator, so a seed fixes the result on any
device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from components.models.vit import normalize_uint8


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
