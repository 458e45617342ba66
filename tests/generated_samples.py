"""A sequential backbone in a registry with the sample grid `dlvm generate` leaves behind (a
real PNG in the artifact store, a `samples` model artifact of v1 with its Fréchet distances),
and a v2 with none: what the API and dashboard tests read."""
from __future__ import annotations

import numpy as np

from components.inference.generate import grid_png
from components.registry import usage, writes
from components.registry.db import session_scope
from components.settings import Settings
from components.storage import open_store

SEQUENTIAL = "elpv-sequential"
FRECHET = {"samples": 1.234, "reconstructions": 0.567, "shuffled_tokens": 8.901}


def register_sequential_samples(settings: Settings) -> bytes:
    """Register ``SEQUENTIAL`` v1 (with 6 samples) and v2 (without); returns the grid's PNG bytes."""
    images = (np.arange(6 * 32 * 32) % 251).astype(np.uint8).reshape(6, 32, 32)
    png = grid_png(images)
    stored = open_store(settings).put_bytes(png, "samples", f"{SEQUENTIAL}-v1-samples.png")
    with session_scope(settings) as s:
        writes.get_or_create_model(s, SEQUENTIAL, "backbone")
        family = {"family": "sequential"}
        v1 = writes.add_model_version(s, SEQUENTIAL, artifact_uri="file:///b/s1", sha256="5" * 64, params=family)
        writes.add_model_version(s, SEQUENTIAL, artifact_uri="file:///b/s2", sha256="6" * 64, params=family)
        usage.add_model_artifact(
            s, model_version_id=v1.id, kind="samples", artifact_uri=stored.uri, sha256=stored.sha256,
            size=stored.size, details={"n": 6, "temperature": 1.0, "top_k": 20, "seed": 0,
                                       "against": {"dataset": "elpv", "version": 1},
                                       "quality": {"frechet_distance": FRECHET, "n_real": 40, "n_samples": 6}})
    return png
