"""A sweep's full-label classifiers, kept for the pipeline's candidate step.

Why: the pipeline adapts its candidate with the same backbone, the same training labels, the
same settings and the same seed as the sweep's 100 % run of the chosen method, so training it
again repeats minutes of work (the ELPV demo's svm with a novelty bank: about 8 minutes on one
CPU thread). The sweep writes those runs' classifiers into a folder; the candidate step looks
its own run up by *content* (:func:`training_key`: the backbone's state, the training images
and labels, the adaptation settings) and trains only when nothing there matches. A run whose
inputs differ in anything, or a folder another machine wrote and this one cannot see, just
means training as before.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from components.data.files import write_atomically
from components.models.backbones import config_to_dict
from components.models.checkpoint import load_checkpoint, save_checkpoint


def training_key(backbone_cfg, state: dict | None, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 cfg) -> str:
    """A hex digest of everything ``adapt`` trains from: equal digests, equal classifiers."""
    h = hashlib.sha256()
    settings = {"backbone": config_to_dict(backbone_cfg), "adapt": cfg.to_dict(), "num_classes": int(num_classes)}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in sorted(state or {}):
        t = state[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for a in (np.ascontiguousarray(images), np.ascontiguousarray(labels, dtype=np.int64)):
        h.update(f"{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def keep_run(folder: str | Path, key: str, classifier) -> Path:
    """Write ``classifier`` under ``key`` (whole or not at all)."""
    path = Path(folder) / f"{key}.pt"
    write_atomically(path, save_checkpoint(classifier.state()))
    return path


def take_run(folder: str | Path | None, key: str):
    """The classifier kept under ``key`` in ``folder`` (removed from there), or None."""
    from components.training.adapt import Classifier

    path = Path(folder) / f"{key}.pt" if folder else None
    if path is None or not path.is_file():
        return None
    classifier = Classifier.from_state(load_checkpoint(path.read_bytes()))
    path.unlink()
    return classifier


@contextmanager
def kept_runs_folder(parent: str | Path):
    """A fresh folder under ``parent`` for one pipeline run's kept classifiers, removed with all
    that is left in it (the runs the candidate did not take) when the block ends."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="kept-runs-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
