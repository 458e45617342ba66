"""Which torch device to train on, and the matching autocast context."""
from __future__ import annotations

import contextlib

import torch


def pick_device(pref: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU if there is one, else CPU; ``cpu``/``cuda``/``cuda:N`` as given.

    Asking for CUDA on a machine without it raises ``RuntimeError`` rather than silently
    training on the CPU for hours.
    """
    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {pref!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {pref!r} (use auto, cpu, cuda or cuda:N)")
    return device


def autocast_for(device: torch.device | str):
    """bf16 autocast on CUDA (fast, no loss scaling needed); full fp32 on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
