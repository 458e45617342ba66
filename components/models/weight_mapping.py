"""Foreign weights -> our modules: what a published checkpoint's keys and shapes become.

timm, MAE and Hugging Face checkpoints wrap, prefix and name their tensors differently,
and they are RGB: :func:`load_pretrained_weights` unwraps them, renames Hugging Face ViT
keys to timm's, sums RGB patch-embedding weights to our one gray channel, resizes the
position table to the model's grid, drops heads and decoders, and refuses anything else
that does not fit before the model is touched.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from components.models.vit import VisionTransformer


@dataclass
class LoadReport:
    """What :func:`load_pretrained_weights` did with a foreign state dict."""

    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # human-readable notes on reshaped tensors


# Keys of heads, decoders and poolers that an encoder never needs.
_DROP_PREFIXES = ("head_dist.", "decoder", "mask_token", "pre_logits.", "attn_pool.", "pooler.", "classifier.")
_HF_LAYER = re.compile(r"^layer\.(\d+)\.(.+)$")
_HF_NAMES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def unwrap(state: dict) -> dict:
    """Take the weights out of common checkpoint wrappers ({'model': ...}, {'state_dict': ...})."""
    for key in ("model", "state_dict", "module"):
        if key in state and isinstance(state[key], dict) and not isinstance(state[key], torch.Tensor):
            return unwrap(state[key])
    return state


def strip_prefixes(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in ("module.", "_orig_mod.", "encoder.", "backbone.", "vit.", "model."):
                if k.startswith(p) and not k.startswith("encoder.layer."):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def rename_hf_vit(state: dict) -> dict:
    """Rename Hugging Face ``ViTModel`` keys to timm names (q/k/v fused into qkv)."""
    if not any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        return state
    out: dict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if k == "embeddings.cls_token":
            out["cls_token"] = v
        elif k == "embeddings.position_embeddings":
            out["pos_embed"] = v
        elif k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("layernorm."):
            out["norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("encoder.layer."):
            i, rest = _HF_LAYER.match(k[len("encoder."):]).groups()
            m = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
            if m:
                qkv.setdefault((int(i), m.group(2)), {})[m.group(1)] = v
                continue
            name, kind = rest.rsplit(".", 1)
            out[f"blocks.{i}.{_HF_NAMES.get(name, name)}.{kind}"] = v
        else:
            out[k] = v  # pooler.*, classifier.* : reported as unexpected unless dropped
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"incomplete q/k/v for layer {i} ({kind}): have {sorted(parts)}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def resize_pos_embed(pe: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bicubic resize of a ``[1, (1+) g^2, D]`` table to the target's grid; cls slot kept."""
    n_tgt = target.shape[1] - 1
    g_tgt = int(math.isqrt(n_tgt))
    n_src = pe.shape[1]
    if int(math.isqrt(n_src)) ** 2 == n_src:  # table without a cls slot
        cls, grid = torch.zeros_like(pe[:, :1]), pe
    else:
        cls, grid = pe[:, :1], pe[:, 1:]
    g_src = int(math.isqrt(grid.shape[1]))
    if g_src**2 != grid.shape[1]:
        raise ValueError(f"pos_embed {tuple(pe.shape)} is not a square grid")
    grid = grid.reshape(1, g_src, g_src, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(g_tgt, g_tgt), mode="bicubic", align_corners=False)
    return torch.cat([cls.float(), grid.permute(0, 2, 3, 1).reshape(1, g_tgt * g_tgt, -1)], dim=1)


def adapt_patch_embed(w: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    notes = []
    c_src, c_tgt = w.shape[1], target.shape[1]
    if c_src != c_tgt:
        if c_tgt == 1:
            w = w.sum(dim=1, keepdim=True)  # gray = same image in R, G and B
            notes.append(f"patch_embed.proj.weight: summed {c_src} input channels to 1")
        elif c_src == 1:
            w = w.repeat(1, c_tgt, 1, 1) / c_tgt
            notes.append(f"patch_embed.proj.weight: spread 1 input channel over {c_tgt}")
        else:
            raise ValueError(f"patch_embed.proj.weight: cannot map {c_src} input channels to {c_tgt}")
    if w.shape[-2:] != target.shape[-2:]:
        src, tgt = w.shape[-1], target.shape[-1]
        # Resample the kernel and rescale so a smooth image gives the same response.
        w = F.interpolate(w.float(), size=target.shape[-2:], mode="bicubic", align_corners=False) * (src / tgt) ** 2
        notes.append(f"patch_embed.proj.weight: resampled {src}x{src} kernel to {tgt}x{tgt}")
    return w, notes


def load_pretrained_weights(model: VisionTransformer, state_dict: dict) -> LoadReport:
    """Load timm / MAE / Hugging Face ViT weights into ``model`` (in place).

    Strips wrapper prefixes (``module.``, ``encoder.``, ...), renames HF keys, sums RGB
    patch-embedding weights to one channel, resizes the position table to the model's grid
    and drops classifier/decoder keys. Anything else that does not fit raises ``ValueError``
    naming the keys and shapes, before the model is touched.
    """
    state = rename_hf_vit(strip_prefixes(unwrap(dict(state_dict))))
    if "fc_norm.weight" in state and "norm.weight" not in state:  # timm avg-pool models
        state["norm.weight"], state["norm.bias"] = state.pop("fc_norm.weight"), state.pop("fc_norm.bias")
    report = LoadReport()
    own = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for k, v in state.items():
        is_foreign_head = k.startswith("head.") and (k not in own or tuple(own[k].shape) != tuple(v.shape))
        if k.startswith(_DROP_PREFIXES) or k in ("fc_norm.weight", "fc_norm.bias") or is_foreign_head:
            report.dropped.append(k)
            continue
        if k not in own:
            unexpected.append(k)
            continue
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(np.asarray(v))
        tgt = own[k]
        if k == "patch_embed.proj.weight":
            v, notes = adapt_patch_embed(v, tgt)
            report.adapted += notes
        elif k == "pos_embed" and v.shape != tgt.shape:
            v = resize_pos_embed(v, tgt)
            report.adapted.append(f"pos_embed: resized {tuple(state[k].shape)} -> {tuple(v.shape)}")
        if v.shape != tgt.shape:
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(tgt.shape)}")
            continue
        new[k] = v.to(tgt.dtype)
    missing = sorted(k for k in own if k not in new and not k.startswith("head."))
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if unexpected:
        problems.append(f"unexpected keys: {sorted(unexpected)}")
    if missing:
        problems.append(f"missing keys: {missing}")
    if problems:
        raise ValueError("cannot load weights into VisionTransformer: " + " | ".join(problems))
    model.load_state_dict(new, strict=False)
    report.loaded = sorted(new)
    return report


def load_resnet_weights(model, state_dict: dict) -> LoadReport:
    """Load timm / torchvision ResNet weights (or ours) into a :class:`ResNet` (in place).

    The names are the same in all three; wrappers and prefixes are stripped, RGB stem
    kernels are summed to our one gray channel, a classifier ``fc`` of another shape is
    dropped. Anything else that does not fit raises ``ValueError`` naming keys and shapes,
    before the model is touched.
    """
    state = strip_prefixes(unwrap(dict(state_dict)))
    own = model.state_dict()
    report = LoadReport()
    new: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for k, v in state.items():
        if k.startswith("fc.") and (k not in own or tuple(own[k].shape) != tuple(v.shape)):
            report.dropped.append(k)
            continue
        if k not in own:
            unexpected.append(k)
            continue
        v = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        tgt = own[k]
        if k == "conv1.weight" and v.dim() == 4 and v.shape[1] != tgt.shape[1] and tgt.shape[1] == 1:
            v = v.sum(dim=1, keepdim=True)  # gray = same image in R, G and B
            report.adapted.append(f"conv1.weight: summed {state[k].shape[1]} input channels to 1")
        if v.shape != tgt.shape:
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(tgt.shape)}")
            continue
        new[k] = v.to(tgt.dtype)
    missing = sorted(k for k in own if k not in new and not k.startswith("fc.") and k not in
                     {m.split(":")[0] for m in mismatched})
    problems = []
    if mismatched:  # a wrong size mismatches every tensor: the first few say which shape the file has
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        problems.append("shape mismatch: " + "; ".join(mismatched[:3]) + more)
    if unexpected:
        problems.append(f"unexpected keys: {sorted(unexpected)[:10]}")
    if missing:
        problems.append(f"missing keys: {missing[:10]}")
    if problems:
        raise ValueError("cannot load weights into ResNet: " + " | ".join(problems))
    model.load_state_dict(new, strict=False)
    report.loaded = sorted(new)
    return report
