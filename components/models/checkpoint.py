"""Checkpoints as bytes: ``torch.save`` into memory, loaded back with ``weights_only=True``.

The artifact store deals in bytes (content-addressed, sha256-verified), so checkpoints
never touch a path here. ``weights_only`` loading means a checkpoint can hold tensors,
numbers, strings, lists and dicts, and cannot run code when opened.
"""
from __future__ import annotations

import io

import numpy as np
import torch


def to_plain(obj):
    """Make ``obj`` loadable with ``weights_only=True`` (numpy -> tensors/lists, tuples -> lists)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().contiguous()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def save_checkpoint(obj: dict) -> bytes:
    """Serialize a checkpoint dict (e.g. ``{'kind', 'vit_config', 'state_dict', ...}``) to bytes."""
    if not isinstance(obj, dict):
        raise TypeError(f"a checkpoint is a dict, got {type(obj).__name__}")
    buf = io.BytesIO()
    torch.save(to_plain(obj), buf)
    return buf.getvalue()


def load_checkpoint(data: bytes) -> dict:
    """Inverse of :func:`save_checkpoint`; tensors come back on the CPU."""
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError("checkpoint does not hold a dict")
    return obj
