"""A ResNet for grayscale domain images, with timm parameter names.

Why a convolutional family beside the ViT: with a few thousand images on a CPU, a small
CNN with batch norm learns far more per second than a ViT (its locality and translation
priors are what a transformer must learn from data). The names follow timm's ``ResNet``
(``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3],downsample.{0,1}}``,
``fc``) so that timm / torchvision ResNet weights load with
:func:`components.models.weight_mapping.load_resnet_weights`.

Sizes run from a 0.3 M-parameter CPU model (``ResNetConfig.tiny``) to ResNet-50
(``ResNetConfig.resnet50``). Inputs are float ``[B, C, H, W]`` normalized by
:func:`components.models.vit.normalize_uint8`, as for the ViT.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

FAMILY = "resnet"
INPUT_NORMS = ("dataset", "image")


def standardize_images(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each image ``[B, C, H, W]`` (each channel) to zero mean and unit variance; a flat image to 0."""
    centered = x - x.mean(dim=(2, 3), keepdim=True)
    return centered / centered.pow(2).mean(dim=(2, 3), keepdim=True).add(eps).sqrt()


@dataclass
class ResNetConfig:
    """Shape of a ResNet encoder: ``layers`` blocks per stage, ``widths`` channels per stage
    (times 4 at the output of bottleneck blocks), and the stem (timm's is a 7x7 stride-2
    convolution and a max pool; small inputs keep more resolution with a 3x3 stem).

    ``input_norm``: ``dataset`` takes the inputs as :func:`normalize_uint8` gives them (one fixed
    mean and scale for every image); ``image`` first standardizes each image to zero mean and
    unit variance, inside the model, so training, prediction and export all do it. Why: the
    brightness and contrast of electroluminescence cells vary from module to module and camera
    to camera, and the defects are local dark structure; per-image standardization removes
    the global gain as HOG's block normalization does (ELPV 4-class, same 160 px recipe and
    seed: accuracy 0.705 -> 0.737, macro-F1 0.419 -> 0.480; docs/BENCHMARKS.md)."""

    img_size: int = 128
    in_chans: int = 1
    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    bottleneck: bool = False
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True
    input_norm: str = "dataset"

    def __post_init__(self) -> None:
        self.layers, self.widths = tuple(int(n) for n in self.layers), tuple(int(w) for w in self.widths)
        if len(self.layers) != len(self.widths) or not self.layers:
            raise ValueError(f"layers {self.layers} and widths {self.widths} must name the same stages")
        if min(self.layers) < 1 or min(self.widths) < 1 or self.img_size < 8:
            raise ValueError(f"layers and widths must be >= 1 and img_size >= 8, got {self}")
        if self.stem_kernel not in (3, 5, 7) or self.stem_stride not in (1, 2):
            raise ValueError(f"stem_kernel must be 3, 5 or 7 and stem_stride 1 or 2, got {self.stem_kernel}, "
                             f"{self.stem_stride}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {self.input_norm!r}")

    family = FAMILY  # not a field: the kind of backbone, for code that handles both families

    @property
    def num_features(self) -> int:
        return self.widths[-1] * (4 if self.bottleneck else 1)

    @property
    def embed_dim(self) -> int:  # the pooled feature width, under the ViT's name for it
        return self.num_features

    # Presets: tiny/small for CPUs, then the standard ImageNet shapes.
    @classmethod
    def tiny(cls, img_size: int = 128, **kw) -> "ResNetConfig":
        """0.3 M parameters: one basic block per stage, 16-128 channels, 3x3 stride-2 stem."""
        return cls(img_size=img_size, **{"layers": (1, 1, 1, 1), "widths": (16, 32, 64, 128), "stem_kernel": 3,
                                         "stem_pool": False, **kw})

    @classmethod
    def small(cls, img_size: int = 128, **kw) -> "ResNetConfig":
        """2.8 M parameters: ResNet-18's depth at half its width."""
        return cls(img_size=img_size, **{"layers": (2, 2, 2, 2), "widths": (32, 64, 128, 256), "stem_kernel": 3,
                                         "stem_pool": False, **kw})

    @classmethod
    def resnet18(cls, img_size: int = 224, **kw) -> "ResNetConfig":
        return cls(img_size=img_size, **kw)

    @classmethod
    def resnet50(cls, img_size: int = 224, **kw) -> "ResNetConfig":
        return cls(img_size=img_size, **{"layers": (3, 4, 6, 3), "bottleneck": True, **kw})

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["input_norm"] == "dataset":  # the default is left out: configs from before it stay equal
            del d["input_norm"]
        return {"family": FAMILY, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "ResNetConfig":
        d = {k: v for k, v in d.items() if k != "family"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ResNetConfig keys: {unknown}")
        return cls(**d)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (per sample), off at ``p = 0`` and in eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *(1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.act = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(*_conv_bn(c_in, width, 1, stride)) if stride != 1 or c_in != width else None
        self.drop_path = DropPath()
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: deep nets train from step one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        return self.act(self.drop_path(self.bn2(self.conv2(x))) + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        out = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(c_in, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, out, 1)
        self.act = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(*_conv_bn(c_in, out, 1, stride)) if stride != 1 or c_in != out else None
        self.drop_path = DropPath()
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.act(self.drop_path(self.bn3(self.conv3(x))) + shortcut)


class ResNet(nn.Module):
    """ResNet encoder (+ optional linear head ``fc``) with timm parameter names."""

    def __init__(self, cfg: ResNetConfig, num_classes: int = 0):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.embed_dim = self.num_features = cfg.num_features
        self.conv1, self.bn1 = _conv_bn(cfg.in_chans, cfg.widths[0], cfg.stem_kernel, cfg.stem_stride)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if cfg.stem_pool else nn.Identity()
        block = Bottleneck if cfg.bottleneck else BasicBlock
        c_in = cfg.widths[0]
        for i, (n, width) in enumerate(zip(cfg.layers, cfg.widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, width, 2 if j == 0 and i > 0 else 1))
                c_in = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.cfg.layers))]

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly to ``rate`` at the last block (fine-tuning)."""
        blocks = [b for stage in self.stages for b in stage]
        for i, blk in enumerate(blocks):
            blk.drop_path.p = rate * i / max(len(blocks) - 1, 1)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the first stage's input (input normalization, stem convolution, pooling):
        every reader of intermediate stages (patch features, detection) starts here."""
        if self.cfg.input_norm == "image":
            x = standardize_images(x)
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` -> the last stage's feature map ``[B, D, h, w]``."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> globally average-pooled features ``[B, D]`` (what probes and heads see)."""
        return self.forward_features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_pool(x))
