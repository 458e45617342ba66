"""PatchCore-style anomaly detection: a memory bank of patch features from good images.

Fitting needs no defect labels: the patch features of good images (components/anomaly/
features.py) go into a memory bank, thinned by greedy k-centre coreset selection so that
it covers the same feature space with a fraction of the patches (nearest-neighbour search
cost falls with it, the farthest-point coverage barely changes). A new image's patches are
scored by their distance to the nearest bank entry: far from every good patch = anomalous.
The image score is its worst patch; the heat map is the patch scores upsampled to the
image and smoothed. The threshold that turns scores into decisions is chosen on held-out
good images for a stated false-alarm rate (:func:`false_alarm_threshold`), because good
images are what a new line has plenty of.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from components.anomaly.features import FeatureConfig, patch_features
from components.models.backbones import BackboneConfig, build_backbone, config_from_dict, config_to_dict

METHOD = "patchcore"


@dataclass(frozen=True)
class PatchCoreConfig:
    """``coreset_fraction`` of the good patches (at most ``max_bank``) are kept; the coreset's
    distances use a random projection to ``projection_dim`` (distances survive it, the cost
    falls); ``blur_sigma`` smooths the heat map (in pixels of the model's input).

    ``fit_dihedral``: fit the bank on the 8 flips and quarter turns of every good image, not
    only on the image as shot. Why: on orientation-free parts (circuit boards, wafer dies) a
    handful of good images shows traces and pads in only some orientations, and a good
    diagonal trace whose mirror image the bank never saw is as far from the bank as a defect
    (DeepPCB heat maps: the hottest good patches lie on 45-degree trace bundles). Leave it
    off where orientation is part of normal (a busbar always vertical, text on a label).

    ``image_coreset_fraction`` < 1: each good image's patches are first thinned by the same
    greedy selection to this fraction, then the bank is chosen from what is left. Why: the
    greedy k-centre costs (patches x bank) distance evaluations; 40 DeepPCB boards at 512 px
    with stage-1 features are 2.6 M patches and took 7 min of one CPU thread for a 6.5 k bank,
    most of the patches being flat copper or substrate identical to thousands of others. The
    per-image pass keeps each image's rare patches (its farthest points, which a random
    subsample would drop) at a fraction of the cost and holds only the thinned patches in
    memory. ``coreset_fraction`` still counts all good patches."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    coreset_fraction: float = 0.1
    max_bank: int = 20_000
    projection_dim: int = 128
    batch_size: int = 16
    blur_sigma: float = 4.0
    fit_dihedral: bool = False
    image_coreset_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.coreset_fraction <= 1:
            raise ValueError(f"coreset_fraction must be in (0, 1], got {self.coreset_fraction}")
        if not 0 < self.image_coreset_fraction <= 1:
            raise ValueError(f"image_coreset_fraction must be in (0, 1], got {self.image_coreset_fraction}")
        if self.max_bank < 1 or self.batch_size < 1 or self.projection_dim < 1 or self.blur_sigma < 0:
            raise ValueError(f"max_bank, batch_size and projection_dim must be >= 1, blur_sigma >= 0: {self}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["features"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PatchCoreConfig":
        d = dict(d)
        feats = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(d.pop("features", {})).items()}
        return cls(features=FeatureConfig(**feats), **d)


def greedy_coreset(features: torch.Tensor, n: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` rows of ``features [N, D]`` chosen by greedy k-centre (farthest point) selection.

    Each step adds the row farthest from everything chosen so far, so the chosen set covers
    the whole feature cloud, rare patches included (random sampling would drop them, and a
    rare good patch left out of the bank becomes a false alarm)."""
    N = features.shape[0]
    if n >= N:
        return torch.arange(N)
    if n < 1:
        raise ValueError(f"a coreset needs at least one row, asked for {n}")
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if x.shape[1] > projection_dim:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj
    # squared distances as |x|^2 - 2 x.c + |c|^2: one matrix-vector product per step, no [N, d] temporary
    sq = (x * x).sum(1)

    def dist_to(i: int) -> torch.Tensor:
        return (sq - 2 * (x @ x[i]) + sq[i]).clamp_min_(0)

    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = int(torch.randint(N, (1,), generator=gen))
    min_dist = dist_to(int(chosen[0]))
    for i in range(1, n):
        nxt = int(torch.argmax(min_dist))
        chosen[i] = nxt
        torch.minimum(min_dist, dist_to(nxt), out=min_dist)
    return chosen


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Euclidean distance of each row of ``queries [M, D]`` to its nearest row of ``bank [K, D]``."""
    out = torch.empty(queries.shape[0])
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start:start + chunk], bank, compute_mode="use_mm_for_euclid_dist")
        out[start:start + chunk] = d.min(dim=1).values
    return out


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``[B, 1, H, W]`` maps (reflect-padded)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def false_alarm_threshold(good_scores: np.ndarray, rate: float) -> float:
    """The score above which an image is flagged, so that at most ``rate`` of these good images would be.

    Flagging is ``score > threshold``; with ``n`` good images at most ``floor(rate * n)`` of
    them exceed it (fewer with ties). With too few images for the rate (rate * n < 1) it is
    the highest good score: no good image of this set is flagged."""
    scores = np.sort(np.asarray(good_scores, dtype=np.float64))[::-1]
    if scores.size == 0:
        raise ValueError("a threshold needs held-out good images; none given")
    if not 0 <= rate < 1:
        raise ValueError(f"false-alarm rate must be in [0, 1), got {rate}")
    return float(scores[int(math.floor(rate * scores.size))])


class PatchCore:
    """A fitted memory bank with the backbone that makes its features; scores uint8 images."""

    def __init__(self, backbone: nn.Module, backbone_cfg: BackboneConfig, cfg: PatchCoreConfig,
                 bank: torch.Tensor, img_size: int, threshold: float | None = None,
                 false_alarm_rate: float | None = None, n_good: int = 0):
        self.backbone, self.backbone_cfg, self.cfg = backbone.eval(), backbone_cfg, cfg
        self.bank, self.img_size = bank.float(), int(img_size)
        self.threshold, self.false_alarm_rate, self.n_good = threshold, false_alarm_rate, n_good

    def _features(self, images: np.ndarray, progress: bool, desc: str):
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
        if images.shape[1] != self.img_size or images.shape[2] != self.img_size:
            raise ValueError(f"this model was fitted on {self.img_size} px images, got {images.shape[1:]}")
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(images), bs), desc=desc, disable=not progress, leave=False):
            yield patch_features(self.backbone, torch.from_numpy(images[start:start + bs]), self.cfg.features)

    def score(self, images: np.ndarray, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(image scores ``[N]``, heat maps ``float32 [N, H, W]``) for uint8 images ``[N, H, W]``."""
        scores, heatmaps = [], []
        for feats in self._features(images, progress, "anomaly scores"):
            b, h, w, d = feats.shape
            patch = nearest_distances(feats.reshape(-1, d), self.bank).reshape(b, 1, h, w)
            scores.append(patch.flatten(1).max(dim=1).values)
            up = F.interpolate(patch, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            heatmaps.append(_gaussian_blur(up, self.cfg.blur_sigma)[:, 0])
        return torch.cat(scores).numpy(), torch.cat(heatmaps).numpy().astype(np.float32)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            raise ValueError("this anomaly model has no threshold yet: calibrate it on held-out good images")
        return np.asarray(scores) > self.threshold

    def calibrate(self, good_images: np.ndarray, false_alarm_rate: float, progress: bool = False) -> np.ndarray:
        """Set the threshold from held-out good images for ``false_alarm_rate``; their scores."""
        scores, _ = self.score(good_images, progress=progress)
        self.threshold = false_alarm_threshold(scores, false_alarm_rate)
        self.false_alarm_rate = float(false_alarm_rate)
        return scores

    def state(self) -> dict:
        """Everything needed to score again, as a checkpoint dict (kind ``anomaly``)."""
        return {"kind": "anomaly", "method": METHOD, "backbone_config": config_to_dict(self.backbone_cfg),
                "state_dict": self.backbone.state_dict(), "patchcore": self.cfg.to_dict(),
                "memory_bank": self.bank.to(torch.float32), "img_size": self.img_size,
                "threshold": self.threshold, "false_alarm_rate": self.false_alarm_rate, "n_good": self.n_good}

    @classmethod
    def from_state(cls, state: dict) -> "PatchCore":
        if state.get("kind") != "anomaly" or state.get("method") != METHOD:
            raise ValueError(f"not a {METHOD} anomaly checkpoint (kind {state.get('kind')!r})")
        backbone_cfg = config_from_dict(dict(state["backbone_config"]))
        backbone = build_backbone(backbone_cfg, seed=0)
        backbone.load_state_dict(state["state_dict"])
        return cls(backbone, backbone_cfg, PatchCoreConfig.from_dict(state["patchcore"]), state["memory_bank"],
                   state["img_size"], state.get("threshold"), state.get("false_alarm_rate"), state.get("n_good", 0))


def dihedral_images(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W]`` square images -> ``[8N, H, W]``: each image under the 8 symmetries of the square."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"the 8 symmetries of the square need square images, got {images.shape[1:]}")
    turns = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return np.ascontiguousarray(np.concatenate(turns + [t[:, :, ::-1] for t in turns]))


def fit_patchcore(backbone: nn.Module, backbone_cfg: BackboneConfig, good_images: np.ndarray,
                  cfg: PatchCoreConfig | None = None, progress: bool = False) -> PatchCore:
    """A memory bank from good uint8 images ``[N, H, W]`` (no threshold yet: see :meth:`PatchCore.calibrate`)."""
    cfg = cfg or PatchCoreConfig()
    if len(good_images) == 0:
        raise ValueError("an anomaly model needs good images to fit on; none given")
    model = PatchCore(backbone, backbone_cfg, cfg, torch.zeros(0), good_images.shape[1], n_good=len(good_images))
    bank_images = dihedral_images(good_images) if cfg.fit_dihedral else good_images
    kept, n_patches = [], 0
    for batch in model._features(bank_images, progress, "good patches"):
        for image_feats in batch.reshape(batch.shape[0], -1, batch.shape[-1]):
            n_patches += image_feats.shape[0]
            if cfg.image_coreset_fraction < 1:
                k = max(1, math.ceil(cfg.image_coreset_fraction * image_feats.shape[0]))
                image_feats = image_feats[greedy_coreset(image_feats, k, cfg.projection_dim, cfg.seed)]
            kept.append(image_feats)
    feats = torch.cat(kept)
    n = min(cfg.max_bank, max(1, math.ceil(cfg.coreset_fraction * n_patches)))
    model.bank = feats[greedy_coreset(feats, n, cfg.projection_dim, cfg.seed)].clone()
    return model
