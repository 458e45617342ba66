"""Dense local descriptors and their VLAD encoding, as torch modules.

Why a hand-designed front end beside the learned backbones: on ELPV (2,624 cells) every
network trained from scratch on 2 CPU cores stopped at 0.72-0.745 accuracy, while dense
oriented-gradient descriptors at the cell's full 300 px, VLAD-encoded against a k-means
codebook and classified by an RBF-SVM, reached 0.769 (docs/BENCHMARKS.md) -- the kind of
model behind the published 0.8244 SVM. Cracks are thin, local, oriented structures; a fixed
gradient front end sees them at full resolution for a few milliseconds an image, where a
network must spend its budget learning the same filters.

:class:`DenseDescriptor` is DAISY-like (Tola et al. 2010): half-wave rectified gradient
projections on ``orientations`` directions, Gaussian-smoothed, sampled at a grid point and
on ``rings`` rings of ``histograms`` points around it, each histogram L1-normalized and the
whole square-rooted (Hellinger, which makes Euclidean distances compare histograms fairly).
:func:`vlad_encode` sums, per codebook centre, the residuals of the descriptors nearest it
(signed square root, per-centre then global L2 normalization). Both are plain tensor maths,
so the model exports to ONNX as any other.

:class:`DescriptorBackbone` is the backbone family built from them (``forward_pool`` like every
other family): descriptors -> VLAD against ``clusters`` k-means centres -> an RBF kernel's
Nystrom feature map on ``landmarks`` VLAD vectors, so that a *linear* head on its features is
an RBF-kernel machine (a linear SVM on them is an RBF-SVM, the adaptation method ``svm``). Its
"pretraining" is unsupervised and takes seconds to minutes: :func:`fit_descriptor_state`
(k-means on descriptors of unlabeled images, landmarks from their VLAD vectors).
Dihedral views of an image permute its descriptors' dimensions (orientations and ring
positions turn with the image), so :meth:`DescriptorBackbone.forward_pool_views` gets the
features of every flip and quarter turn from one descriptor pass (``histograms`` must be a
multiple of 4 for the quarter turns).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FAMILY = "descriptor"


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalized 1-D Gaussian, 3 sigma each side."""
    half = max(1, math.ceil(3 * sigma))
    x = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``[B, C, H, W]`` (reflect padding), channel by channel."""
    k = gaussian_kernel(sigma)
    # plain ints and materialized kernels: an export traces them as constants (ONNX needs known kernel shapes)
    c, half = int(maps.shape[1]), len(k) // 2
    pad = min(half, int(maps.shape[-1]) - 1, int(maps.shape[-2]) - 1)
    if pad < half:  # a kernel wider than the image: reflect what there is, cut the kernel to fit
        k = k[half - pad: half + pad + 1] / k[half - pad: half + pad + 1].sum()
    row, col = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1).to(maps), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1).to(maps)
    x = F.conv2d(F.pad(maps, (pad, pad, 0, 0), mode="reflect"), row, groups=c)
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), col, groups=c)


def orientation_maps(gray: torch.Tensor, orientations: int) -> torch.Tensor:
    """``[B, orientations, H, W]``: the image gradient projected on each direction, negatives cut."""
    gx = F.pad(gray[..., :, 2:] - gray[..., :, :-2], (1, 1, 0, 0), mode="replicate") / 2
    gy = F.pad(gray[..., 2:, :] - gray[..., :-2, :], (0, 0, 1, 1), mode="replicate") / 2
    angles = torch.arange(orientations, dtype=gray.dtype, device=gray.device) * (2 * math.pi / orientations)
    proj = torch.cos(angles).view(1, -1, 1, 1) * gx + torch.sin(angles).view(1, -1, 1, 1) * gy
    return proj.clamp_min(0)


class DenseDescriptor(torch.nn.Module):
    """``[B, 1, H, W]`` grayscale (any scale: the histograms are normalized) -> ``[B, N, dim]``
    descriptors on a grid every ``step`` pixels, one set per radius in ``radii`` (stacked along N),
    each at the points whose outermost ring stays inside the image."""

    def __init__(self, step: int = 8, radii: tuple[int, ...] = (10, 20, 30), rings: int = 2,
                 histograms: int = 6, orientations: int = 8):
        super().__init__()
        if step < 1 or not radii or min(radii) < rings or rings < 1 or histograms < 1 or orientations < 2:
            raise ValueError(f"bad descriptor geometry: step {step}, radii {radii}, rings {rings}, "
                             f"histograms {histograms}, orientations {orientations}")
        self.step, self.radii, self.rings = step, tuple(radii), rings
        self.histograms, self.orientations = histograms, orientations

    @property
    def dim(self) -> int:
        return (1 + self.rings * self.histograms) * self.orientations

    def grid_sides(self, size: int) -> list[int]:
        """Per radius, the side of the square grid of descriptors a ``size`` x ``size`` image gives."""
        return [len(range(r, size - r, self.step)) for r in self.radii]

    def grid_points(self, size: int) -> int:
        """How many descriptors a ``size`` x ``size`` image gives."""
        return sum(g * g for g in self.grid_sides(size))

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        maps = orientation_maps(gray, self.orientations)
        h, w = maps.shape[-2:]
        smoothed: dict[float, tuple[int, torch.Tensor]] = {}
        sets = []
        for radius in self.radii:
            if 2 * radius >= min(h, w):
                raise ValueError(f"descriptor radius {radius} does not fit a {h}x{w} image")
            ys, xs = range(radius, h - radius, self.step), range(radius, w - radius, self.step)
            parts = []
            # the centre is smoothed like the first ring; ring r lies at radius*r/rings, sigma radius*r/(2 rings)
            for r in range(self.rings + 1):
                sigma = radius * max(r, 1) / (2 * self.rings)
                if sigma not in smoothed:
                    smoothed[sigma] = pooled_blur(maps, sigma)
                factor, blurred = smoothed[sigma]
                offsets = [(0.0, 0.0)] if r == 0 else [
                    (radius * r / self.rings * math.sin(2 * math.pi * j / self.histograms),
                     radius * r / self.rings * math.cos(2 * math.pi * j / self.histograms))
                    for j in range(self.histograms)]
                for dy, dx in offsets:
                    rows = torch.tensor([min((y + round(dy)) // factor, blurred.shape[-2] - 1) for y in ys])
                    cols = torch.tensor([min((x + round(dx)) // factor, blurred.shape[-1] - 1) for x in xs])
                    parts.append(blurred[..., rows, :][..., cols])
            hist = torch.stack(parts, 1)  # [B, 1 + rings*histograms, orientations, gy, gx]
            hist = hist / (hist.sum(2, keepdim=True) + 1e-7)
            sets.append(hist.flatten(1, 2).flatten(2).transpose(1, 2))  # [B, gy*gx, dim]
        d = torch.cat(sets, 1)
        return torch.sqrt(d / (1 + self.rings * self.histograms))


def pooled_blur(maps: torch.Tensor, sigma: float) -> tuple[int, torch.Tensor]:
    """(factor, maps average-pooled by ``factor`` then blurred to an overall ``sigma``): a wide
    blur needs no full resolution, and pooling first makes it up to 64x cheaper (factor 4)."""
    factor = 1
    while factor < 4 and sigma / (2 * factor) >= 2:
        factor *= 2
    pooled = F.avg_pool2d(maps, factor, ceil_mode=True) if factor > 1 else maps
    # a box of width f already blurred by about f/sqrt(12); the rest is the Gaussian's
    rest = math.sqrt(max(sigma ** 2 - (factor ** 2 - 1) / 12, 0.25)) / factor
    return factor, blur(pooled, rest)


class IntensityPatches(torch.nn.Module):
    """``[B, 1, H, W]`` grayscale -> per block size in ``blocks`` ``[B, L, side*side]``: the image
    standardized (zero mean, unit variance), average-pooled in ``block`` x ``block`` squares, and
    every ``side`` x ``side`` window of those squares. Why beside the gradient histograms: those are
    normalized histogram by histogram, so they keep a crack's direction but not how dark it is,
    and an inactive (dark) area has no edges to histogram; the pooled intensities keep both. The
    image is cut to a centred multiple of the block first, so a flip of the image permutes the
    windows' values (:func:`patch_permutation`) instead of shifting the squares."""

    def __init__(self, blocks: tuple[int, ...] = (4, 8), side: int = 5):
        super().__init__()
        if not blocks or min(blocks) < 1 or side < 1:
            raise ValueError(f"bad intensity patches: blocks {blocks}, side {side}")
        self.blocks, self.side = tuple(blocks), side

    @property
    def dim(self) -> int:
        return self.side * self.side

    def forward(self, gray: torch.Tensor) -> list[torch.Tensor]:
        x = (gray - gray.mean((-2, -1), keepdim=True)) / (gray.std((-2, -1), keepdim=True) + 1e-6)
        h, w = x.shape[-2:]
        out = []
        for b in self.blocks:
            if min(h, w) // b < self.side:
                raise ValueError(f"{self.side} blocks of {b} px do not fit a {h}x{w} image")
            top, left = (h - h // b * b) // 2, (w - w // b * b) // 2
            pooled = F.avg_pool2d(x[..., top: top + h // b * b, left: left + w // b * b], b)[:, 0]
            gy, gx = pooled.shape[-2] - self.side + 1, pooled.shape[-1] - self.side + 1
            # windows by slicing (not unfold): plain ops an ONNX export takes
            win = torch.stack([pooled[:, dy: dy + gy, dx: dx + gx] for dy in range(self.side)
                               for dx in range(self.side)], -1)  # [B, gy, gx, side*side]
            out.append(win.flatten(1, 2))
        return out


def patch_permutation(side: int, view) -> torch.Tensor:
    """Indices ``perm`` with ``windows(view(image))`` ~ ``windows(image)[..., perm]`` (as an orderless
    set): each window's values move as the view moves the image's pixels."""
    return view(torch.arange(side * side).view(side, side)).flatten()


def vlad_encode(descriptors: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]`` descriptors and ``[K, D]`` centres -> ``[B, K*D]`` VLAD vectors: per centre,
    the summed residuals of the descriptors nearest it; signed square root, L2 per centre, L2 overall."""
    dist = descriptors.pow(2).sum(-1, keepdim=True) - 2 * descriptors @ centres.T + centres.pow(2).sum(-1)
    assign = F.one_hot(dist.argmin(-1), centres.shape[0]).to(descriptors.dtype)  # [B, N, K]
    v = assign.transpose(1, 2) @ descriptors - assign.sum(1).unsqueeze(-1) * centres  # [B, K, D]
    v = torch.sign(v) * torch.sqrt(v.abs() + 1e-12)
    v = F.normalize(v, dim=-1, eps=1e-7).flatten(1)
    return F.normalize(v, dim=-1, eps=1e-7)


def position_novelty(query: torch.Tensor, bank: torch.Tensor, reach: int = 1, k: int = 1,
                     query_ids: torch.Tensor | None = None, bank_ids: torch.Tensor | None = None,
                     chunk: int | None = 64) -> torch.Tensor:
    """``[B, gy, gx, D]`` descriptors on one grid and a ``bank`` ``[M, gy, gx, D]`` of normal
    images' descriptors on the same grid -> ``[B, gy, gx]``: each descriptor's mean distance to
    its ``k`` nearest bank descriptors at its own grid position or up to ``reach`` positions
    away. Why position-aware: ELPV cells are cropped and aligned, so a defect is what the
    normal cells do not show *there*; VLAD's sums dilute one small crack among a thousand
    descriptors, its worst distance here does not. ``query_ids`` / ``bank_ids`` (``[B]`` /
    ``[M]`` image ids): an image is never its own neighbour (leave-one-out on training images).
    Queries go ``chunk`` images at a time (memory: chunk x M x gy x gx distances; None: all at
    once, as an exported graph with a free batch axis needs)."""
    if query.ndim != 4 or bank.shape[1:] != query.shape[1:]:
        raise ValueError(f"query {tuple(query.shape)} and bank {tuple(bank.shape)} must be [*, gy, gx, D] on one grid")
    if not 1 <= k <= len(bank) * (2 * reach + 1) ** 2 or reach < 0:
        raise ValueError(f"k {k} and reach {reach} do not fit a bank of {len(bank)} images")
    b, gy, gx, d = query.shape
    keys = bank.permute(1, 2, 3, 0).reshape(gy * gx, d, len(bank))  # position-major: one matmul per grid position
    ksq = keys.pow(2).sum(1, keepdim=True)  # [P, 1, M]
    same = (query_ids[:, None] == bank_ids[None]) if query_ids is not None else None  # [B, M]

    def smallest(x: torch.Tensor) -> torch.Tensor:  # the k smallest along the last axis (amin: 3x min's speed)
        return x.amin(-1, keepdim=True) if k == 1 else x.topk(k, -1, largest=False).values
    out = []
    for s in range(0, b, chunk or max(b, 1)):
        part = query[s: s + chunk] if chunk else query
        found = []
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                # the queries move, not the bank: query[i, j] meets bank[i + dy, j + dx]; the nearest
                # distances move back after; where i + dy or j + dx leaves the grid there is no neighbour
                q = torch.roll(part, (dy, dx), (1, 2)).permute(1, 2, 0, 3).reshape(gy * gx, -1, d)  # -1: free batch
                # |q|^2 is the same for every bank entry: added after the k smallest, not to [P, c, M] values;
                # 16 positions at a time keep the distances in cache (2-3x faster on a CPU); a traced
                # graph takes them all at once (one node, not one per block)
                step = gy * gx if torch.jit.is_tracing() else 16
                near = []
                for p in range(0, gy * gx, step):
                    dist = torch.baddbmm(ksq[p: p + step], q[p: p + step], keys[p: p + step], alpha=-2)  # |k|^2-2q.k
                    if same is not None:
                        dist.masked_fill_(same[None, s: s + len(part)], float("inf"))
                    near.append(smallest(dist))
                near = torch.cat(near) + q.pow(2).sum(-1, keepdim=True)
                near = torch.roll(near.reshape(gy, gx, -1, k), (-dy, -dx), (0, 1))
                rows, cols = torch.arange(gy) + dy, torch.arange(gx) + dx
                outside = ((rows < 0) | (rows >= gy))[:, None] | ((cols < 0) | (cols >= gx))[None]
                found.append(near.masked_fill(outside[:, :, None, None], float("inf")))
        out.append(smallest(torch.cat(found, -1)).clamp_min(0).sqrt().mean(-1).permute(2, 0, 1))
    return torch.cat(out) if out else query.new_zeros((0, gy, gx))


NOVELTY_STATISTICS = 9  # per radius, novelty_statistics' columns


def novelty_statistics(maps: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``[B, gy, gx]`` novelty maps and two ``thresholds`` (normal images' 99th and 99.9th
    percentiles) -> ``[B, 9]`` log statistics: the largest value, the means of the top 1 %,
    5 % and 10 %, the mean, median and spread, and the fractions above each threshold."""
    flat = maps.flatten(1)
    top = flat.sort(1, descending=True).values
    n = flat.shape[1]
    median = top[:, n - 1 - (n - 1) // 2]  # torch.median's (the lower middle value), in ops ONNX has
    stats = [top[:, 0], top[:, : max(1, n // 100)].mean(1), top[:, : max(1, n // 20)].mean(1),
             top[:, : max(1, n // 10)].mean(1), flat.mean(1), median, flat.std(1)]
    stats += [(flat > t).float().mean(1) for t in thresholds]
    return torch.log(torch.stack(stats, 1) + 1e-4)


# ------------------------------------------------------------------------------ the backbone family


@dataclass
class DescriptorConfig:
    """Shape of a descriptor backbone. ``img_size``: the square input (ELPV cells: their full
    300 px, where cracks are a few pixels wide); the descriptor geometry as
    :class:`DenseDescriptor`'s; ``clusters`` VLAD centres; ``landmarks`` Nystrom landmarks (the
    feature width); the RBF's gamma is ``gamma_scale`` / (VLAD width x landmark variance),
    scikit-learn's ``gamma="scale"`` when 1.

    Defaults measured on ELPV 4-class (docs/BENCHMARKS.md): 32 centres beat 64; 8 histograms
    (so quarter turns are permutations) match 6."""

    img_size: int = 300
    in_chans: int = 1
    step: int = 8
    radii: tuple[int, ...] = (10, 20, 30)
    rings: int = 2
    histograms: int = 8
    orientations: int = 8
    clusters: int = 32
    landmarks: int = 2048
    gamma_scale: float = 1.0
    novelty_bank: int = 0  # normal images in the position-aware novelty bank; 0: none (adapt sets it)
    novelty_dim: int = 32  # the bank's dimensions: principal directions of the normal images' descriptors
    novelty_reach: int = 0  # grid steps a descriptor's bank neighbours may lie away (1: 9x the time, ELPV no better)
    patch_blocks: tuple[int, ...] = (4, 8)  # intensity patches' square sizes, px, each its own VLAD; (): none
    patch_side: int = 5  # an intensity patch: side x side squares

    def __post_init__(self) -> None:
        self.radii = tuple(int(r) for r in self.radii)
        self.patch_blocks = tuple(int(b) for b in self.patch_blocks)
        if self.in_chans != 1:
            raise ValueError(f"a descriptor backbone reads grayscale images (in_chans 1), got {self.in_chans}")
        if self.clusters < 1 or self.landmarks < 1 or not self.gamma_scale > 0:
            raise ValueError(f"clusters and landmarks must be >= 1 and gamma_scale > 0, got {self.clusters}, "
                             f"{self.landmarks}, {self.gamma_scale}")
        if 2 * max(self.radii or (0,)) >= self.img_size:
            raise ValueError(f"descriptor radius {max(self.radii)} does not fit a {self.img_size} px input")
        dim = self.descriptor().dim  # checks the geometry
        if self.patch_blocks and (min(self.patch_blocks) < 1 or self.patch_side < 1
                                  or self.img_size // max(self.patch_blocks) < self.patch_side):
            raise ValueError(f"intensity patches of {self.patch_side} x {self.patch_side} blocks of "
                             f"{self.patch_blocks} px do not fit a {self.img_size} px input")
        if self.novelty_bank < 0 or not 1 <= self.novelty_dim <= dim or self.novelty_reach < 0:
            raise ValueError(f"novelty_bank must be >= 0, novelty_dim in [1, {dim}] and novelty_reach >= 0, got "
                             f"{self.novelty_bank}, {self.novelty_dim}, {self.novelty_reach}")

    family = FAMILY

    def descriptor(self) -> DenseDescriptor:
        return DenseDescriptor(self.step, self.radii, self.rings, self.histograms, self.orientations)

    def patches(self) -> IntensityPatches | None:
        return IntensityPatches(self.patch_blocks, self.patch_side) if self.patch_blocks else None

    @property
    def vlad_dim(self) -> int:
        return self.clusters * (self.descriptor().dim + len(self.patch_blocks) * self.patch_side ** 2)

    @property
    def num_novelty_features(self) -> int:
        return NOVELTY_STATISTICS * len(self.radii) if self.novelty_bank else 0

    @property
    def num_features(self) -> int:
        return self.landmarks + self.num_novelty_features

    @property
    def embed_dim(self) -> int:  # the pooled feature width, under the ViT's name for it
        return self.num_features

    def to_dict(self) -> dict:
        return {"family": FAMILY, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "DescriptorConfig":
        d = {k: v for k, v in d.items() if k != "family"}
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown DescriptorConfig keys: {unknown}")
        d.setdefault("patch_blocks", ())  # saved before intensity patches existed: a backbone without them
        return cls(**d)


def view_coordinate_map(view, size: int = 5) -> np.ndarray:
    """The 2x2 matrix ``A`` with ``q = A p'`` (centred ``(x, y)`` pixel coordinates): where the
    pixel now at ``p'`` was before ``view`` (a function on ``[..., H, W]`` tensors, e.g. a flip)."""
    c = (size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64) - c, torch.arange(size, dtype=torch.float64) - c,
                            indexing="ij")
    X, Y = view(xs), view(ys)  # at each new location, the old coordinates
    P = np.stack([(xs.flatten()).numpy(), (ys.flatten()).numpy()])  # new locations
    Q = np.stack([X.flatten().numpy(), Y.flatten().numpy()])
    A = Q @ np.linalg.pinv(P)
    if not np.allclose(A @ P, Q, atol=1e-9) or not np.allclose(np.abs(A).sum(0), 1):
        raise ValueError("not a symmetry of the square (a flip or a quarter turn)")
    return np.rint(A)


def _angle_permutation(A: np.ndarray, n: int) -> list[int]:
    """Index ``k`` of the direction ``A u_j`` for each of ``n`` directions ``u_j`` at ``2 pi j / n``."""
    out = []
    for j in range(n):
        v = A @ np.array([math.cos(2 * math.pi * j / n), math.sin(2 * math.pi * j / n)])
        k = math.atan2(v[1], v[0]) / (2 * math.pi / n)
        if abs(k - round(k)) > 1e-6:
            raise ValueError(f"this view does not map {n} directions onto themselves: "
                             f"quarter turns need histograms and orientations divisible by 4")
        out.append(int(round(k)) % n)
    return out


def view_permutation(desc: DenseDescriptor, view) -> torch.Tensor:
    """Indices ``perm`` with ``descriptors(view(image))`` ~ ``descriptors(image)[..., perm]`` (as an
    orderless set: the grid points move too): the histogram at ring offset ``o`` and orientation
    ``a`` of the viewed image is the original's at ``A o`` and ``A a``."""
    A = view_coordinate_map(view)
    po, ph = _angle_permutation(A, desc.orientations), _angle_permutation(A, desc.histograms)
    pos = [0] + [1 + r * desc.histograms + ph[j] for r in range(desc.rings) for j in range(desc.histograms)]
    n_pos = 1 + desc.rings * desc.histograms
    return torch.tensor([pos[p] * desc.orientations + po[o] for p in range(n_pos) for o in range(desc.orientations)])


def nystrom_features(vlads: torch.Tensor, landmarks: torch.Tensor, projection: torch.Tensor,
                     gamma: torch.Tensor) -> torch.Tensor:
    """``[B, K*D]`` -> ``[B, M]``: ``exp(-gamma |v - l|^2)`` against the landmarks, times the
    projection (dot products of these features approximate the RBF kernel)."""
    sq = vlads.pow(2).sum(-1, keepdim=True) - 2 * vlads @ landmarks.T + landmarks.pow(2).sum(-1)
    return torch.exp(-gamma * sq.clamp_min(0)) @ projection


class PositionNovelty(nn.Module):
    """A descriptor backbone's novelty features: per radius, its descriptors on ``novelty_dim``
    principal directions of the normal images' descriptors, :func:`position_novelty` against a
    bank of ``novelty_bank`` normal images at the same grid positions, the map's
    :func:`novelty_statistics`, standardized on the training images and weighted to the kernel
    features' width. The bank is most of the model's size, so it is kept as float16 (ELPV's
    1,131 functional cells at 3 radii and 32 dimensions: 233 MB). Fitted by
    :func:`fit_novelty_projection` and :func:`fit_position_novelty` when a classifier is adapted; the statistics do not depend on
    the view (a flip's descriptors would need a flipped bank), so every view gets the same."""

    def __init__(self, cfg: DescriptorConfig):
        super().__init__()
        self.reach = cfg.novelty_reach
        self.grids = cfg.descriptor().grid_sides(cfg.img_size)
        r, d, k = len(cfg.radii), cfg.descriptor().dim, cfg.novelty_dim
        self.register_buffer("mean", torch.zeros(r, d))
        self.register_buffer("projection", torch.zeros(r, d, k))
        for i, g in enumerate(self.grids):
            self.register_buffer(f"bank{i}", torch.zeros(cfg.novelty_bank, g, g, k, dtype=torch.float16))
        self.register_buffer("thresholds", torch.zeros(r, 2))  # per radius, the normal maps' 99th, 99.9th percentiles
        self.register_buffer("centre", torch.zeros(r * NOVELTY_STATISTICS))
        self.register_buffer("scale", torch.ones(r * NOVELTY_STATISTICS))

    def per_radius(self, descriptors: torch.Tensor) -> list[torch.Tensor]:
        """A backbone's descriptors ``[B, N, D]`` (the radii stacked along N) -> per radius ``[B, g*g, D]``."""
        return list(descriptors.split([g * g for g in self.grids], 1))

    def project(self, descriptors: torch.Tensor) -> list[torch.Tensor]:
        """A backbone's descriptors ``[B, N, D]`` -> per radius ``[B, g, g, novelty_dim]``."""
        return [((part - self.mean[i]) @ self.projection[i]).unflatten(1, (g, g))
                for i, (part, g) in enumerate(zip(self.per_radius(descriptors), self.grids))]

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        """``[B, radii x 9]``: the standardized, weighted statistics of each radius's map (chunk None:
        the whole batch at once, as an exported graph with a free batch axis needs)."""
        stats = torch.cat([novelty_statistics(position_novelty(q, getattr(self, f"bank{i}").float(), self.reach, 1,
                                                               chunk=None), self.thresholds[i])
                           for i, q in enumerate(self.project(descriptors))], 1)
        return (stats - self.centre) / self.scale


@torch.no_grad()
def fit_novelty_projection(backbone: "DescriptorBackbone", normal_images: np.ndarray) -> None:
    """Set ``backbone.novelty``'s projection: per radius, the mean and the ``novelty_dim``
    principal directions of the descriptors of up to 64 of the ``normal_images`` (uint8
    ``[n, S, S]``, evenly drawn; 64 cells give ~200,000 descriptors, plenty for a 136 x 136
    covariance)."""
    from components.models.vit import normalize_uint8

    nov = backbone.novelty
    rows = np.linspace(0, len(normal_images) - 1, min(64, len(normal_images))).astype(int)
    sample = backbone.describe(normalize_uint8(torch.from_numpy(normal_images[rows])))
    for i, part in enumerate(nov.per_radius(sample)):
        part = part.flatten(0, 1).double()
        mean = part.mean(0)
        _, vectors = torch.linalg.eigh(torch.cov((part - mean).T))
        nov.mean[i] = mean.float()
        nov.projection[i] = vectors[:, -nov.projection.shape[-1]:].flip(-1).float()


@torch.no_grad()
def fit_position_novelty(backbone: "DescriptorBackbone", projected: list[torch.Tensor], normal: np.ndarray,
                         width: float, batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """Fit the rest of ``backbone.novelty`` from the training images' descriptors on its
    projection (``projected``: per radius ``[N, g, g, novelty_dim]``, ``novelty.project`` of each
    image's descriptors, after :func:`fit_novelty_projection`): the bank is the images whose
    ``normal`` mask is set (``cfg.novelty_bank`` of them), the thresholds come from their maps,
    the statistics are standardized on the training images and scaled so that each weighs what
    a kernel feature of root-mean-square ``width`` does. Returns every training image's novelty
    features ``[N, radii x 9]``, each image left out of its own bank (as an unseen one will be)."""
    from tqdm.auto import tqdm

    nov = backbone.novelty
    normal_idx = np.flatnonzero(normal)
    if nov is None or len(normal_idx) != backbone.cfg.novelty_bank:
        raise ValueError(f"{len(normal_idx)} normal images for a novelty bank of "
                         f"{backbone.cfg.novelty_bank if nov is not None else 0}")
    n = len(normal)
    ids, bank_ids = torch.arange(n), torch.from_numpy(normal_idx)
    columns = []
    for i, q in enumerate(projected):
        bank = getattr(nov, f"bank{i}")
        bank.copy_(q[bank_ids])
        maps = torch.cat([position_novelty(q[s: s + batch_size], bank.float(), nov.reach, 1,
                                           ids[s: s + batch_size], bank_ids)
                          for s in tqdm(range(0, n, batch_size), desc=f"novelty maps, radius {i + 1}/{len(projected)}",
                                        disable=not progress, leave=False)])
        # every 7th value: quantile refuses inputs over 16 M values, and a subsample estimates these as well
        nov.thresholds[i] = torch.quantile(maps[bank_ids].flatten()[::7], torch.tensor([0.99, 0.999]))
        columns.append(novelty_statistics(maps, nov.thresholds[i]))
    stats = torch.cat(columns, 1)
    nov.centre.copy_(stats.mean(0))
    nov.scale.copy_((stats.std(0) + 1e-6) / (width or 1.0))
    return (stats - nov.centre) / nov.scale


class DescriptorBackbone(nn.Module):
    """Dense descriptors -> VLAD -> RBF Nystrom features; a fixed (not trained by gradient)
    encoder with the backbone interface. The buffers come from :func:`fit_descriptor_state`."""

    def __init__(self, cfg: DescriptorConfig):
        super().__init__()
        self.cfg = cfg
        self.describe = cfg.descriptor()
        self.patches = cfg.patches()
        d = self.describe.dim
        self.register_buffer("centres", torch.zeros(cfg.clusters, d))
        if self.patches is not None:  # one codebook per block size
            self.register_buffer("patch_centres", torch.zeros(len(cfg.patch_blocks), cfg.clusters, self.patches.dim))
        self.register_buffer("landmarks", torch.zeros(cfg.landmarks, cfg.vlad_dim))
        self.register_buffer("projection", torch.zeros(cfg.landmarks, cfg.landmarks))
        self.register_buffer("gamma", torch.zeros(()))
        self.novelty = PositionNovelty(cfg) if cfg.novelty_bank else None
        self.num_features = cfg.num_features

    def set_drop_path(self, rate: float) -> None:  # the interface's; nothing to drop
        return None

    def kernel_features(self, vlads: torch.Tensor) -> torch.Tensor:
        """VLAD vectors ``[..., K*D]`` -> the Nystrom features ``[..., M]``."""
        return nystrom_features(vlads, self.landmarks, self.projection, self.gamma)

    def forward_pool(self, x: torch.Tensor) -> torch.Tensor:
        d = self.describe(x.float())
        return self.with_novelty(self.kernel_features(self.encode(d, self.describe_patches(x))[None]), d)[0]

    def describe_patches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per block size the image's intensity patches (none without them)."""
        return [] if self.patches is None else self.patches(x.float())

    def encode(self, descriptors: torch.Tensor, patches: list[torch.Tensor], view=None) -> torch.Tensor:
        """``[B, vlad_dim]``: the VLAD vector of ``view(image)`` (None: the image) from the image's
        descriptors and intensity patches; with patches, the descriptors' VLAD and the patches'
        (each block size its own) weigh half each in the unit-length whole."""
        if view is not None:  # a view permutes each descriptor's and each patch's values
            descriptors = descriptors[..., view_permutation(self.describe, view).to(descriptors.device)]
            patches = [p[..., patch_permutation(self.patches.side, view).to(p.device)] for p in patches]
        v = vlad_encode(descriptors, self.centres)
        if not patches:
            return v
        parts = [vlad_encode(p, c) for p, c in zip(patches, self.patch_centres)]
        return torch.cat([v / math.sqrt(2)] + [q / math.sqrt(2 * len(parts)) for q in parts], -1)

    def vlad_views(self, x: torch.Tensor, views, descriptors: torch.Tensor | None = None) -> torch.Tensor:
        """``[V, B, vlad_dim]``: the VLAD vectors of each ``view(x)``, from one descriptor pass."""
        d = self.describe(x.float()) if descriptors is None else descriptors
        patches = self.describe_patches(x)
        return torch.stack([self.encode(d, patches, v) for v in views])

    def forward_pool_views(self, x: torch.Tensor, views) -> torch.Tensor:
        """``[V, B, M]``: the features of each ``view(x)``, from one descriptor pass (the novelty
        features, when there is a bank, are the unviewed image's for every view)."""
        d = self.describe(x.float())
        return self.with_novelty(self.kernel_features(self.vlad_views(x, views, d)), d)

    def with_novelty(self, feats: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Kernel features ``[V, B, M]`` of the views of images whose (unviewed) ``descriptors`` these
        are -> ``[V, B, num_features]``: the novelty features appended when there is a bank."""
        if self.novelty is None:
            return feats
        return torch.cat([feats, self.novelty(descriptors)[None].repeat(len(feats), 1, 1)], -1)  # no batch baked in

    @torch.no_grad()
    def set_landmarks(self, vlads: torch.Tensor, seed: int = 0) -> int:
        """Redraw the landmarks from ``vlads`` ``[n, K*D]`` (a classifier's training images: an SVM's
        solution lies in the span of its training points' kernels, and landmarks drawn from them
        span it; on ELPV this was worth about +0.02 accuracy over landmarks drawn from every image).
        Fewer than ``landmarks`` vectors: all of them, the rest kept from the fit. Returns how many
        landmarks are new."""
        m = self.cfg.landmarks
        gen = torch.Generator().manual_seed(seed)
        vlads = vlads.to(self.landmarks)
        if len(vlads) >= m:
            new = vlads[torch.randperm(len(vlads), generator=gen)[:m]]
        else:
            kept = self.landmarks[torch.randperm(m, generator=gen)[: m - len(vlads)]]
            new = torch.cat([vlads, kept])
        projection, gamma = kernel_map(new, self.cfg.gamma_scale)
        self.landmarks.copy_(new)
        self.projection.copy_(projection)
        self.gamma.copy_(gamma)
        return min(len(vlads), m)


def kernel_map(landmarks: torch.Tensor, gamma_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(projection ``[M, M]``, gamma) of the RBF Nystrom map on ``landmarks`` ``[M, K*D]``: gamma is
    ``gamma_scale`` / (width x variance of the landmarks); the projection is the inverse square
    root of the landmarks' kernel matrix, its tiny eigenvalues floored (they are noise)."""
    gamma = torch.tensor(gamma_scale / (landmarks.shape[1] * float(landmarks.var())))
    kernel = torch.exp(-gamma * torch.cdist(landmarks.double(), landmarks.double()).pow(2))
    w, U = torch.linalg.eigh(kernel)
    return (U / w.clamp_min(float(w.max()) * 1e-6).sqrt()).float(), gamma.float()


def fit_descriptor_state(images: np.ndarray, cfg: DescriptorConfig, views=(lambda t: t,), seed: int = 0,
                         per_image: int = 200, batch_size: int = 16, progress: bool = True) -> tuple[dict, float]:
    """(the buffers of a :class:`DescriptorBackbone` fitted on unlabeled uint8 images ``[N, S, S]``,
    the k-means loss: mean squared distance of a descriptor to its centre): k-means centres from
    ``per_image`` random descriptors of each image (each under a random one of ``views``), the
    same for each block size of intensity patches, then landmarks: the VLAD vectors of random
    (image, view) pairs."""
    from sklearn.cluster import MiniBatchKMeans
    from tqdm.auto import tqdm

    from components.models.vit import normalize_uint8

    if images.ndim != 3 or images.shape[1:] != (cfg.img_size, cfg.img_size):
        raise ValueError(f"images must be [N, {cfg.img_size}, {cfg.img_size}], got {images.shape}")
    n_pairs = len(images) * len(views)
    if n_pairs < cfg.landmarks:
        raise ValueError(f"{len(images)} images x {len(views)} views give {n_pairs} VLAD vectors, fewer than the "
                         f"{cfg.landmarks} landmarks asked for: lower landmarks or add unlabeled images")
    rng = np.random.default_rng(seed)
    backbone = DescriptorBackbone(cfg)
    perms = [view_permutation(backbone.describe, v) for v in views]
    patch_perms = [patch_permutation(cfg.patch_side, v) for v in views]
    pairs = rng.choice(n_pairs, cfg.landmarks, replace=False)
    keep = {}  # image index -> its descriptors and patches, for the images that give a landmark
    landmark_images = set((pairs // len(views)).tolist())
    sample, patch_samples = [], [[] for _ in cfg.patch_blocks]

    def draw(x: torch.Tensor, view_perms: list[torch.Tensor]) -> torch.Tensor:  # per_image rows, one random view
        pick = rng.choice(len(x), min(per_image, len(x)), replace=False)
        return x[pick][:, view_perms[rng.integers(len(view_perms))]]
    with torch.no_grad():
        for i in tqdm(range(0, len(images), batch_size), desc="descriptors", disable=not progress, leave=False):
            x = normalize_uint8(torch.from_numpy(images[i: i + batch_size]))
            d, patches = backbone.describe(x), backbone.describe_patches(x)
            for j in range(len(d)):
                sample.append(draw(d[j], perms))
                for b, p in enumerate(patches):
                    patch_samples[b].append(draw(p[j], patch_perms))
                if i + j in landmark_images:  # copies: a row of the batch keeps the whole batch alive (10 -> 5 GB)
                    keep[i + j] = (d[j].clone(), [p[j].clone() for p in patches])
        sample = torch.cat(sample).numpy()
        if len(sample) < cfg.clusters:
            raise ValueError(f"{len(sample)} descriptors cannot make {cfg.clusters} clusters: lower clusters")

        def kmeans(x: np.ndarray) -> tuple[torch.Tensor, float]:
            km = MiniBatchKMeans(cfg.clusters, random_state=seed, batch_size=4096, n_init=3).fit(x)
            return torch.from_numpy(km.cluster_centers_.astype(np.float32)), float(km.inertia_) / len(x)
        backbone.centres, loss = kmeans(sample)
        if backbone.patches is not None:
            backbone.patch_centres = torch.stack([kmeans(torch.cat(p).numpy())[0] for p in patch_samples])
        landmarks = torch.cat([backbone.encode(keep[int(p) // len(views)][0][None],
                                               [q[None] for q in keep[int(p) // len(views)][1]],
                                               views[int(p) % len(views)]) for p in pairs])
        projection, gamma = kernel_map(landmarks, cfg.gamma_scale)
    state = {"centres": backbone.centres, "landmarks": landmarks, "projection": projection, "gamma": gamma}
    if backbone.patches is not None:
        state["patch_centres"] = backbone.patch_centres
    return state, loss
