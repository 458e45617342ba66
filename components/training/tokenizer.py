"""Training and measuring a visual tokenizer (components/models/tokenizer.py) on a dataset's
unlabeled images: one loop like pretraining's (data on the device as uint8, augmentation in
torch, cosine schedule, atomic resume checkpoints that make a killed run end with the same
weights as an uninterrupted one, SIGTERM/Ctrl-C acted on between steps after a checkpoint),
every knob in :class:`TokenizerTrainConfig`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from components.data.files import write_atomically
from components.data.images import Preprocess
from components.models.checkpoint import save_checkpoint
from components.models.tokenizer import TokenizerConfig, VisualTokenizer, codebook_usage, psnr
from components.models.vit import normalize_uint8
from components.training.augment import Augment, augment_batch
from components.training.device import pick_device
from components.training.interrupts import checkpoint_then_stop, deferred_signals
from components.training.optim import cosine_lr, param_groups
from components.training.resume import checkpoint_due, images_fingerprint, read_resume_state

log = logging.getLogger(__name__)


@dataclass
class TokenizerTrainConfig:
    """Every knob of tokenizer training; ``holdout_fraction`` of the images (a seeded draw) are
    kept out of training to measure PSNR and codebook usage."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 0.0
    seed: int = 0
    holdout_fraction: float = 0.1
    augment: Augment = field(default_factory=lambda: Augment.dihedral(rot90=False))
    # running it: none of these change the result on CPU
    device: str = "auto"
    checkpoint_every: int = 100
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerTrainConfig":
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TokenizerTrainConfig keys: {unknown}")
        d["tokenizer"] = TokenizerConfig.from_dict(dict(d.get("tokenizer", {})))
        if "augment" in d:
            d["augment"] = Augment(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(d["augment"]).items()})
        return cls(**d)


def tiny_tokenizer_config(img_size: int = 32, **kw) -> TokenizerTrainConfig:
    """A seconds-long run for tests: 8-16 channels, 125 codes."""
    return TokenizerTrainConfig(**{"tokenizer": TokenizerConfig(img_size, channels=(8, 16), levels=(5, 5, 5)),
                                   "steps": 40, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "device": "cpu",
                                   **kw})


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a seeded permutation, at least one image on each side."""
    if n < 2:
        raise ValueError(f"a tokenizer needs at least 2 images (one held out), got {n}")
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, int(round(n * fraction))))
    return np.sort(order[k:]), np.sort(order[:k])


@dataclass
class TokenizerResult:
    state: dict  # the tokenizer's state dict (CPU tensors)
    losses: list[float]
    seconds: float
    images_per_s: float
    resumed_from_step: int = 0


def train_tokenizer(images: np.ndarray, cfg: TokenizerTrainConfig, progress: bool = True,
                    checkpoint_path: Path | str | None = None) -> TokenizerResult:
    """Train a tokenizer on uint8 grayscale images ``[N, H, W]`` (H = W = ``cfg.tokenizer.img_size``).
    With ``checkpoint_path`` the full state is written every ``cfg.checkpoint_every`` steps and
    a rerun resumes from it; deterministic on CPU for a given ``cfg.seed``."""
    size = cfg.tokenizer.img_size
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != (size, size):
        raise ValueError(f"images must be uint8 [N, {size}, {size}], got {images.dtype} {images.shape}")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    n = data.shape[0]
    batch_size = min(cfg.batch_size, n)

    model = VisualTokenizer(cfg.tokenizer).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))

    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    fingerprint = images_fingerprint(images) if checkpoint_path else ""
    losses: list[float] = []
    order, cursor, start = torch.randperm(n, generator=order_gen), 0, 0
    if checkpoint_path and checkpoint_path.exists():
        state = read_resume_state(checkpoint_path, cfg, fingerprint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, cursor, order, losses = int(state["step"]), int(state["cursor"]), state["order"], list(state["losses"])
        order_gen.set_state(state["order_gen"])
        gen.set_state(state["gen"])
        log.info("resuming tokenizer training from step %d (%s)", start, checkpoint_path)

    def save_resume_state(step: int) -> None:
        write_atomically(checkpoint_path, save_checkpoint({
            "config": cfg.to_dict(), "images_sha256": fingerprint, "step": step, "cursor": cursor,
            "order": order, "losses": losses, "order_gen": order_gen.get_state(), "gen": gen.get_state(),
            "model": model.state_dict(), "optimizer": opt.state_dict()}), durable=True)

    bar = tqdm(total=cfg.steps, initial=start, desc="tokenizer", disable=not progress, leave=False)
    t0 = time.perf_counter()
    with deferred_signals() as stop:
        for step in range(start, cfg.steps):
            if stop.pending:
                checkpoint_then_stop(stop, save_resume_state, len(losses), start, checkpoint_path)
            if cursor + batch_size > n:
                order, cursor = torch.randperm(n, generator=order_gen), 0
            batch = data[order[cursor : cursor + batch_size].to(device)]
            cursor += batch_size
            lr = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            loss = model(augment_batch(batch, cfg.augment, gen))[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"tokenizer loss is {losses[-1]} at step {step}; lower the learning rate")
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            if checkpoint_due(checkpoint_path, cfg.checkpoint_every, step + 1, cfg.steps):
                save_resume_state(step + 1)
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                break
        if stop.pending:  # arrived during the last step
            checkpoint_then_stop(stop, save_resume_state, len(losses), start, checkpoint_path)
    bar.close()
    seconds = time.perf_counter() - t0
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return TokenizerResult(state, losses, seconds, (len(losses) - start) * batch_size / max(seconds, 1e-9), start)


@torch.no_grad()
def evaluate_tokenizer(model: VisualTokenizer, images: np.ndarray, batch_size: int = 256) -> dict:
    """PSNR (dB, [0, 1] gray range) of the reconstructions of ``images``, the share of the
    codebook their tokens use and the perplexity of that use."""
    model.eval()
    device = next(model.parameters()).device
    recons, targets, tokens = [], [], []
    for i in range(0, len(images), batch_size):
        x = normalize_uint8(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device))
        _, recon, idx = model(x)
        recons.append(recon.cpu()), targets.append(x.cpu()), tokens.append(idx.cpu())
    usage = codebook_usage(torch.cat(tokens), model.cfg.codebook_size)
    return {"psnr": round(psnr(torch.cat(recons), torch.cat(targets)), 3), "codebook_usage": round(usage["usage"], 4),
            "code_perplexity": round(usage["perplexity"], 2), "n_images": len(images)}


def tokenizer_parts(checkpoint: dict) -> tuple[TokenizerConfig, Preprocess, dict]:
    """A ``kind: tokenizer`` checkpoint's config, its input preprocessing, and its weights as
    the initial state of a sequential backbone (``tokenizer.*`` keys)."""
    if checkpoint.get("kind") != "tokenizer":
        raise ValueError(f"not a tokenizer (its checkpoint is a {checkpoint.get('kind')!r}): "
                         "train one with `dlvm tokenizer train`")
    cfg = TokenizerConfig.from_dict(dict(checkpoint["tokenizer_config"]))
    state = {f"tokenizer.{k}": v for k, v in checkpoint["state_dict"].items()}
    return cfg, Preprocess.coerce(checkpoint.get("preprocess") or cfg.img_size), state


def load_tokenizer(checkpoint: dict) -> VisualTokenizer:
    """The tokenizer a ``kind: tokenizer`` checkpoint holds, in eval mode on the CPU."""
    if checkpoint.get("kind") != "tokenizer":
        raise ValueError(f"not a tokenizer checkpoint (kind {checkpoint.get('kind')!r})")
    model = VisualTokenizer(TokenizerConfig.from_dict(dict(checkpoint["tokenizer_config"])))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def tokenizer_recipe(name: str, categorical: bool = False, *, img_size: int | None = None,
                     steps: int | None = None, seed: int = 0, device: str = "auto"
                     ) -> tuple[TokenizerTrainConfig, Preprocess, list[str]]:
    """(training config, input preprocessing, reasons) for recipe ``name``: ``tiny`` is a
    seconds-long run for tests (8-16 channels, 125 codes, 40 steps); every other recipe trains
    the default tokenizer (32-64 channels, 1,000 codes) for 2,000 steps. Input 32 px unless
    ``img_size`` (8 x 8 tokens at 32 px); categorical pixels (wafer maps) are resized with
    nearest-neighbour so no invented gray levels reach the tokens."""
    from components.training.recipes import AUTO, get_recipe

    if name != AUTO:
        get_recipe(name)  # an unknown name fails with the list
    size = int(img_size or 32)
    if name in ("tiny", "tiny-cnn"):
        cfg = tiny_tokenizer_config(size, seed=seed)
    else:
        cfg = TokenizerTrainConfig(tokenizer=TokenizerConfig(size), seed=seed, device=device)
    if steps:
        cfg = replace(cfg, steps=int(steps))
    pre = Preprocess(size, "nearest" if categorical else "bicubic")
    t = cfg.tokenizer
    reasons = [f"tokenizer {'tiny test shape' if name in ('tiny', 'tiny-cnn') else 'default'}: input {pre.describe()}, "
               f"channels {'-'.join(map(str, t.channels))}, FSQ levels {'x'.join(map(str, t.levels))} = "
               f"{t.codebook_size} codes, {t.grid_size}x{t.grid_size} = {t.num_tokens} tokens an image; "
               f"{cfg.steps} steps of {cfg.batch_size}"]
    return cfg, pre, reasons
