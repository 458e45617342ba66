"""Published ViT weights from a file (timm, MAE or Hugging Face; ``.safetensors`` or a
PyTorch checkpoint) converted into our grayscale :class:`VisionTransformer`.

Reading is strict and its errors are one line each, naming the file and the problem:
a missing file, a file that is not a readable weights file, a state dict that is not a
ViT, or a ViT of another shape than the one asked for (the parameter and both shapes).
The key mapping itself (HF names, RGB -> gray patch embedding, position-table resize)
is :func:`components.models.weight_mapping.load_pretrained_weights`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from components.models.vit import VisionTransformer, ViTConfig

# The same renaming load_pretrained_weights applies is used here to inspect the file
# (depth, width, patch size) before loading, so that errors can say what the file is.
from components.models.weight_mapping import (
    LoadReport,
    load_pretrained_weights,
    rename_hf_vit,
    strip_prefixes,
    unwrap,
)

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
ARCHS = {"tiny": ViTConfig.tiny, "small": ViTConfig.small, "base": ViTConfig.base}
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class ImportedWeights:
    """A converted backbone: what to store (config + state dict) and what to record about it."""

    vit_config: ViTConfig
    state_dict: dict[str, torch.Tensor]
    report: LoadReport
    source: dict  # file name, sha256, bytes, format, tensor count

    def params(self) -> dict:
        """Plain-JSON lineage for the registry: where the weights came from and how they were mapped."""
        return {"source": self.source, "vit_config": self.vit_config.to_dict(), "load_report": asdict(self.report)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    with open(path, "rb") as fh:  # no telling suffix: recognise the container by its first bytes
        head = fh.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save zip archive / legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    raise ValueError(f"{path.name}: unknown weights format (expected {', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)})")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors by name, format) from a ``.safetensors`` file or a PyTorch checkpoint, on the CPU.

    PyTorch files are read with ``weights_only=True``: a checkpoint that needs arbitrary
    code to unpickle is refused, not executed. Common wrappers (``{'model': ...}``,
    ``{'state_dict': ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    fmt = _format_of(path)
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # each reader has its own error types; all mean "unreadable"
        first_line = (str(exc).strip().splitlines() or [""])[0]
        what = "safetensors" if fmt == "safetensors" else "a PyTorch checkpoint"
        raise ValueError(f"cannot read {path.name} as {what} ({type(exc).__name__}"
                         + (f": {first_line})" if first_line else ")")) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path.name} holds a {type(obj).__name__}, not a state dict")
    state = unwrap(obj)
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path.name} is not a state dict of tensors: entries {_few(not_tensors)} are not tensors")
    if not state:
        raise ValueError(f"{path.name} holds no tensors")
    return state, fmt


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def vit_config_for(state: dict[str, torch.Tensor], *, img_size: int = 64, patch_size: int | None = None,
                   arch: str | None = None, embed_dim: int | None = None, depth: int | None = None,
                   num_heads: int | None = None, global_pool: str = "token") -> ViTConfig:
    """The grayscale ViTConfig to load ``state`` into: ``arch`` (tiny/small/base) and explicit
    sizes as given; width, depth and patch size the user left out are read off the file.
    The head count is not stored in weights, so it must come from ``arch`` or ``num_heads``."""
    canon = rename_hf_vit(strip_prefixes(dict(state)))
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"unknown ViT architecture {arch!r} (known: {', '.join(ARCHS)})")
    preset = ARCHS[arch](img_size) if arch else None
    if num_heads is None and preset is None:
        raise ValueError("the number of attention heads is not stored in the weights: give --arch tiny|small|base or --heads")
    blocks = {int(m.group(1)) for k in canon for m in [_BLOCK.match(k)] if m}
    patch = canon.get("patch_embed.proj.weight")
    return ViTConfig(
        img_size=img_size,
        patch_size=patch_size or (int(patch.shape[-1]) if patch is not None and patch.dim() == 4 else 8),
        in_chans=1,
        embed_dim=embed_dim or (preset.embed_dim if preset else int(patch.shape[0]) if patch is not None else 192),
        depth=depth or (preset.depth if preset else (max(blocks) + 1 if blocks else 12)),
        num_heads=num_heads or preset.num_heads,
        global_pool=global_pool,
    )


def check_vit_state(state: dict[str, torch.Tensor], cfg: ViTConfig, name: str = "weights") -> None:
    """Raise ``ValueError`` if ``state`` is not a ViT, or not one of ``cfg``'s depth and width;
    the message names the parameter and both shapes. Patch embedding and position table are
    exempt from the shape check: the loader adapts them (channels, kernel, grid)."""
    canon = rename_hf_vit(strip_prefixes(dict(state)))
    own = VisionTransformer(cfg).state_dict()
    if not any(k in own for k in canon):
        raise ValueError(f"{name} is not a ViT state dict: none of its {len(canon)} tensors has a ViT parameter name "
                         f"(it has {_few(sorted(canon), 3)}; a ViT has patch_embed.proj.weight, blocks.0.attn.qkv.weight, "
                         "... or Hugging Face's embeddings.*, encoder.layer.*)")
    blocks = {int(m.group(1)) for k in canon for m in [_BLOCK.match(k)] if m}
    depth = max(blocks) + 1 if blocks else cfg.depth
    width = next((int(canon[k].shape[-1]) for k in ("cls_token", "norm.weight") if k in canon), cfg.embed_dim)
    mismatched = [f"{k}: file {tuple(canon[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
                  if k in canon and k not in ("patch_embed.proj.weight", "pos_embed") and tuple(canon[k].shape) != tuple(v.shape)]
    if mismatched or depth != cfg.depth:
        problem = (f"shape mismatch in {name}: {mismatched[0]}" + (f" and {len(mismatched) - 1} more" if len(mismatched) > 1 else "")
                   if mismatched else f"{name} has {depth} transformer blocks, the model {cfg.depth}")
        raise ValueError(f"{problem}; the file is a {depth}-block ViT of width {width}, the model {cfg.depth} blocks "
                         f"of width {cfg.embed_dim}: give the matching --arch or --embed-dim/--depth")


def import_vit_weights(path: str | Path, **config) -> ImportedWeights:
    """Read a weights file and convert it into our grayscale ViT (``config``: see :func:`vit_config_for`).
    Raises ``FileNotFoundError`` / ``ValueError`` with one-line messages; nothing is kept on failure."""
    path = Path(path)
    state, fmt = read_state_dict(path)
    cfg = vit_config_for(state, **config)
    check_vit_state(state, cfg, path.name)
    model = VisionTransformer(cfg)
    try:
        report = load_pretrained_weights(model, state)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from exc
    source = {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size, "format": fmt,
              "n_tensors": len(state)}
    return ImportedWeights(cfg, {k: v.detach().clone() for k, v in model.state_dict().items()}, report, source)
