"""Small synthetic image sets for tests that need a learnable task in seconds."""
from __future__ import annotations

import hashlib

import numpy as np


def banded_images(n: int, num_classes: int = 3, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy uint8 images whose class is a bright horizontal band at a class-specific height."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    images = rng.integers(0, 90, size=(n, size, size)).astype(np.uint8)
    band = size // num_classes
    for i, c in enumerate(labels):
        images[i, c * band:(c + 1) * band] += 120
    return images, labels


def fake_shas(n: int, tag: str = "img") -> list[str]:
    """``n`` distinct sha256 hex strings, as image hashes for split tests."""
    return [hashlib.sha256(f"{tag}{i}".encode()).hexdigest() for i in range(n)]
