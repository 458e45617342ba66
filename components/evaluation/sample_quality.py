"""How close generated images are to real ones, in a stated, simple way: the Fréchet distance
between the Gaussians fitted to two sets of features (as FID, but on the domain model's own
pooled features instead of an ImageNet Inception network, which has never seen these images).

A distance alone means little, so it comes with two references on the same real images:

* ``reconstructions``: the real images encoded and decoded by the tokenizer, the floor a
  generator over these tokens can reach (what the tokenizer loses);
* ``shuffled_tokens``: the real images' own tokens in a random order per image, decoded: the
  right token statistics with no spatial structure, the baseline a generator must beat.

Lower is better. With fewer images than feature dimensions the covariances are rank-deficient
and the distance is noisy: compare values computed with the same ``n``.
"""
from __future__ import annotations

import numpy as np
import torch

from components.models.sequential import SequentialBackbone
from components.models.vit import normalize_uint8


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``[N, D]`` and ``b`` ``[M, D]``:
    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)``, the trace term through a symmetric
    eigendecomposition (stable for singular covariances)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two feature sets [N >= 2, D] of the same width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + max(trace, 0.0))


@torch.no_grad()
def pooled_features(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 ``[N, H, W]`` -> the model's pooled features ``[N, D]``."""
    model.eval()
    out = [model.forward_pool(normalize_uint8(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).float().numpy()


@torch.no_grad()
def reference_images(model: SequentialBackbone, real: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The two references of the module docstring for ``real`` uint8 images: their tokenizer
    reconstructions and their tokens shuffled per image, both decoded to uint8."""
    from components.inference.generate import to_uint8

    tokens = model.tokenizer.tokenize(normalize_uint8(torch.from_numpy(np.ascontiguousarray(real))))
    gen = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(tokens.shape[1], generator=gen) for _ in range(len(tokens))])
    shuffled = torch.gather(tokens, 1, order)
    return {"reconstructions": to_uint8(model.tokenizer.decode_tokens(tokens)),
            "shuffled_tokens": to_uint8(model.tokenizer.decode_tokens(shuffled))}


def sample_quality(model: SequentialBackbone, samples: np.ndarray, real: np.ndarray, seed: int = 0,
                   max_real: int = 512) -> dict:
    """Fréchet distances to ``real`` (at most ``max_real`` of them, a seeded draw) on ``model``'s
    pooled features: of the ``samples``, and of the two references (see the module docstring);
    with the counts they were computed on."""
    if len(real) > max_real:
        real = real[np.sort(np.random.default_rng(seed).choice(len(real), max_real, replace=False))]
    real_features = pooled_features(model, real)
    refs = reference_images(model, real, seed)
    distances = {"samples": frechet_distance(pooled_features(model, samples), real_features)}
    distances.update({name: frechet_distance(pooled_features(model, imgs), real_features)
                      for name, imgs in refs.items()})
    return {"frechet_distance": {k: round(v, 4) for k, v in distances.items()},
            "features": "the sequential backbone's pooled hidden states", "n_samples": int(len(samples)),
            "n_real": int(len(real))}
