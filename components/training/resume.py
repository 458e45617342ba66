"""Where a training run keeps its resume checkpoint, and the check that a checkpoint found
there belongs to the run about to use it. Shared by pretraining, tokenizer and detector
training (each loop writes and restores its own state)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

import numpy as np

from components.models.checkpoint import load_checkpoint, to_plain

# Fields that change how a run executes, not what it computes: a run may resume under new values.
RUNTIME_FIELDS = ("device", "compile", "channels_last", "checkpoint_every", "max_seconds")


class TrainingConfig(Protocol):
    def to_dict(self) -> dict: ...


def resume_path(state_dir: Path, dataset_version_id: int, cfg: TrainingConfig, init_sha256: str | None,
                kind: str = "pretrain", inputs: dict | None = None) -> Path:
    """Where one exact run (data, recipe, starting weights) keeps its resume checkpoint under
    ``state_dir``: a rerun with the same three finds it; runtime knobs do not change it.
    (``cfg``: any config with ``to_dict`` and the runtime fields above, e.g. a pretraining,
    tokenizer or detector config; ``inputs``: whatever else picks the training data, e.g. a
    detector's label snapshot and size.)"""
    recipe = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    what = {"dataset_version": dataset_version_id, "recipe": recipe, "init": init_sha256}
    if inputs is not None:  # absent from the key otherwise: earlier runs' checkpoints keep their paths
        what["inputs"] = inputs
    key = json.dumps(what, sort_keys=True, default=str)
    return Path(state_dir) / "resume" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def checkpoint_due(path: Path | None, every: int, done: int, steps: int) -> bool:
    """Whether a training loop writes its periodic resume checkpoint after ``done`` of ``steps``
    steps: it has a path and a period (0: never), ``done`` is a multiple of it, and the run is not finished
    (a finished run hands back its result; nothing is left to resume)."""
    return bool(path) and bool(every) and done % every == 0 and done < steps


def images_fingerprint(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


def read_resume_state(path: Path, cfg: TrainingConfig, fingerprint: str) -> dict:
    """The saved training state at ``path``, after checking it belongs to this config and these images."""
    try:
        state = load_checkpoint(path.read_bytes())
    except Exception as exc:  # a torn or foreign file: say which and stop, never train on garbage
        raise ValueError(f"resume checkpoint {path} is unreadable ({exc}); delete it to start over") from exc
    saved, now = state.get("config", {}), to_plain(cfg.to_dict())
    changed = sorted(k for k in set(saved) | set(now) if k not in RUNTIME_FIELDS and saved.get(k) != now.get(k))
    if changed:
        raise ValueError(f"resume checkpoint {path} was written with a different config "
                         f"(changed: {', '.join(changed)}); delete it or rerun with the same config")
    if state.get("images_sha256") != fingerprint:
        raise ValueError(f"resume checkpoint {path} was written for other images; delete it to start over")
    return state
