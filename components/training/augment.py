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


def _rot90(t: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.rot90(t, k, dims=(-2, -1))`` from flips and a transpose, which ONNX exports (rot90 it does not)."""
    k %= 4
    if k == 1:
        return t.transpose(-2, -1).flip(-2)
    if k == 2:
        return t.flip(-2).flip(-1)
    return t.transpose(-2, -1).flip(-1) if k == 3 else t


def _turn(k: int, mirror: bool):
    return lambda t: (_rot90(t, k).flip(-1) if mirror else _rot90(t, k))


# The fixed views of test-time augmentation (and of the svm method's training, and of a descriptor
# backbone's fit), as functions on [..., S, S] tensors, identity first: ``flips`` keeps the axes
# (mirror images and the half turn), ``dihedral`` is all 8 symmetries of the square.
TTA_VIEWS = {"none": [_turn(0, False)],
             "flips": [_turn(0, False), _turn(2, False), _turn(0, True), _turn(2, True)],
             "dihedral": [_turn(k, m) for m in (False, True) for k in range(4)]}


@dataclass
class Augment:
    """Label-preserving augmentations for grayscale industrial images.

    Mild random-resized crops (a part stays a part: no 8 % crops as for ImageNet), flips,
    optional 90-degree turns (square sensors, cells, dies; with both flips: all 8 symmetries
    of the square), small brightness/contrast changes (exposure and gain drift between
    cameras) and sensor noise. Each random draw is made only when its augmentation is on,
    so turning one on or off never changes what the others draw.
    """

    crop_scale: tuple[float, float] = (0.6, 1.0)  # area fraction kept; (1, 1) = no crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = False
    brightness: float = 0.1  # additive, in units of the full gray range
    contrast: float = 0.1  # multiplicative: factor in [1 - c, 1 + c]
    noise: float = 0.0  # additive Gaussian noise, std drawn in [0, noise] per image (gray-range units)

    @classmethod
    def none(cls) -> "Augment":
        return cls(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, vflip=False, rot90=False, brightness=0.0, contrast=0.0)

    @classmethod
    def dihedral(cls, **kw) -> "Augment":
        """The 8 flips and quarter turns of the square and nothing else: exact pixel permutations
        (no interpolation), label-preserving wherever orientation carries no meaning."""
        return cls(**{"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "hflip": True, "vflip": True,
                      "rot90": True, "brightness": 0.0, "contrast": 0.0, **kw})

    @classmethod
    def joint_embedding(cls, **kw) -> "Augment":
        """Views for SimCLR / VICReg on grayscale industrial images: the 8 symmetries, crops down
        to a third of the area (still a part of the part), gain and exposure, sensor noise."""
        return cls(**{"crop_scale": (0.3, 1.0), "hflip": True, "vflip": True, "rot90": True,
                      "brightness": 0.2, "contrast": 0.3, "noise": 0.03, **kw})


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
    if bool((sx == 1).all() and (sy == 1).all()) and x.shape[-1] == x.shape[-2]:
        # No crop: each map is one of the square's 8 symmetries, an exact permutation of the
        # pixels. Done by index, it is bit-exact and several times cheaper than grid_sample.
        x = _apply_symmetries(x, theta)
    elif not torch.equal(theta, identity.expand(B, 2, 3)):
        grid = F.affine_grid(theta.float().to(dev), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    if aug.contrast or aug.brightness:
        c = uniform(1 - aug.contrast, 1 + aug.contrast).float().to(dev).view(B, 1, 1, 1)
        b = uniform(-aug.brightness, aug.brightness).float().to(dev).view(B, 1, 1, 1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = ((x - mean) * c + mean + b).clamp(0.0, 1.0)
    if aug.noise:
        std = uniform(0.0, aug.noise).float().view(B, 1, 1, 1)
        x = (x + (std * torch.randn(x.shape, generator=generator)).to(dev)).clamp(0.0, 1.0)
    return normalize_uint8(x * 255.0)


def _apply_symmetries(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``x`` [B, 1, S, S] mapped by per-image affine matrices that are each a signed permutation
    (a symmetry of the square), as ``grid_sample`` with ``align_corners=False`` would map it."""
    out = torch.empty_like(x)
    codes = (theta[:, :2, :2].round().long() + 1).reshape(len(x), 4) @ torch.tensor([27, 9, 3, 1])
    for code in codes.unique().tolist():
        members = (codes == code).nonzero().flatten()
        a = theta[int(members[0])].round()
        sel = members.to(x.device)
        y = x[sel]
        # output pixel (u, v) reads input (a00 u + a01 v, a10 u + a11 v) in centred coordinates
        if a[0, 0] == 0:  # the axes swap: out[v, u] = x.T[a01 v, a10 u]
            y = y.transpose(-1, -2)
            col, row = a[1, 0], a[0, 1]
        else:  # out[v, u] = x[a11 v, a00 u]
            col, row = a[0, 0], a[1, 1]
        dims = ([-1] if col < 0 else []) + ([-2] if row < 0 else [])
        out[sel] = y.flip(dims) if dims else y
    return out  # same normalization as un-augmented inputs
