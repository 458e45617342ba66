"""Self-supervised pretraining of a backbone: masked autoencoder (MAE) or self-distillation
(DINO) on a ViT; SimCLR or VICReg (joint embedding, components/models/joint_embedding.py) on
either family (ViT or ResNet, components/models/backbones.py); next-token prediction over a
visual tokenizer's tokens (``sequential``, components/models/sequential.py) on a sequential
backbone; or, for a descriptor backbone (components/models/descriptors.py), ``codebook``: no
gradient steps, a k-means codebook and kernel landmarks fitted on the images in minutes.

One readable loop, top to bottom (data -> model -> optimizer -> resume -> steps -> encoder
weights), every knob in :class:`PretrainConfig`. Images arrive as one uint8 array
``[N, H, W]`` at the encoder's resolution (decoded once, see components/data/images.py), live
on the device as uint8 and are augmented there in torch, so a step costs one gather, one
``grid_sample`` per view and the model: the GPU never waits for a CPU data loader.
The full training state is checkpointed atomically so a killed run resumes where it stopped.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from components.data.files import write_atomically
from components.models.backbones import (
    BackboneConfig,
    build_backbone,
    config_from_dict,
    config_to_dict,
    family_of,
    load_backbone_weights,
)
from components.models.checkpoint import save_checkpoint
from components.models.descriptors import fit_descriptor_state
from components.models.joint_embedding import JOINT_EMBEDDING_METHODS, JointEmbedding
from components.models.mae import MaskedAutoencoder
from components.models.sequential import NextTokenPretraining
from components.models.vit import ViTConfig
from components.training.augment import TTA_VIEWS, Augment, augment_batch
from components.training.device import autocast_for
from components.training.distributed import distributed_context
from components.training.interrupts import checkpoint_then_stop, deferred_signals
from components.training.optim import cosine_lr, param_groups
from components.training.resume import checkpoint_due, images_fingerprint, read_resume_state

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ config


@dataclass
class PretrainConfig:
    """Every knob of self-supervised pretraining. ``lr`` is the absolute peak learning rate.

    ``method`` picks the objective: ``mae`` (masked autoencoder, components/models/mae.py),
    ``dino`` (self-distillation with an EMA teacher, components/models/dino.py), both
    ViT-only (they mask patches), or ``simclr`` / ``vicreg`` (two augmented views embed alike)
    on any ``backbone``, or ``sequential`` (next-token cross-entropy over the tokens of the
    tokenizer inside a sequential backbone), or ``codebook`` (a descriptor backbone's k-means
    codebook and kernel landmarks, fitted once on the images under ``codebook_views``: no steps,
    nothing to resume). Knobs of the other methods are ignored.
    """

    method: str = "mae"
    backbone: BackboneConfig = field(default_factory=lambda: ViTConfig.tiny(64, 8, depth=6, global_pool="avg"))
    steps: int = 1000
    batch_size: int = 128  # global: split across processes under torchrun
    lr: float = 1.5e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 0.0  # 0 = off
    seed: int = 0
    device: str = "auto"
    augment: Augment = field(default_factory=Augment)
    # MAE
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    contrastive_weight: float = 0.0  # > 0: add InfoNCE between two masked views (see mae.py)
    contrastive_dim: int = 128
    temperature: float = 0.2
    # DINO (self-distillation): head sizes, teacher temperature warmup, EMA momentum schedule
    dino_out_dim: int = 1024
    dino_hidden_dim: int = 1024
    dino_bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    teacher_temp_start: float = 0.04
    teacher_temp_warmup_steps: int = 0
    teacher_momentum: float = 0.99  # cosine-annealed to 1.0 over the run
    dino_views: int = 2
    dino_mask_ratio: float = 0.5  # share of patches the student does not see (MSN-style; the teacher sees all)
    dino_centering: str = "ema"  # "ema" (running center) or "sinkhorn" (balanced targets)
    dino_koleo: float = 0.0  # weight of the KoLeo feature-spreading term
    # SimCLR / VICReg: projection head (hidden, output); SimCLR's temperature is ``temperature``
    proj_hidden_dim: int = 512
    proj_dim: int = 128
    # codebook: the views of every image the codebook and landmarks are fitted on (the svm method's TTA)
    codebook_views: str = "flips"
    # running it: none of these change the result on CPU
    compile: bool = False  # torch.compile the model (GPU throughput; first step compiles)
    channels_last: bool = True  # CNNs: NHWC memory layout (faster convolutions on CPU and GPU)
    checkpoint_every: int = 100  # steps between resume checkpoints (when a checkpoint path is given)
    max_seconds: float | None = None  # hard stop (the schedule is not shortened)

    def __post_init__(self) -> None:
        if self.method not in PRETRAIN_METHODS:
            raise ValueError(f"pretraining method must be one of {', '.join(PRETRAIN_METHODS)}; got {self.method!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")
        family = family_of(self.backbone)
        if (self.method == "sequential") != (family == "sequential"):
            raise ValueError("sequential pretraining and a sequential backbone (a tokenizer and a causal "
                             f"transformer) go together; got method {self.method} on a {family} backbone")
        sentence = getattr(self.backbone, "sentence_length", 1)
        if self.batch_size % sentence:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of the sentence length {sentence} "
                             "(images per sequence)")
        if (self.method == "codebook") != (family == "descriptor"):
            raise ValueError("codebook fitting and a descriptor backbone go together; got method "
                             f"{self.method} on a {family} backbone")
        if self.codebook_views not in TTA_VIEWS:
            raise ValueError(f"codebook_views must be one of {', '.join(TTA_VIEWS)}; got {self.codebook_views!r}")
        if self.method in VIT_ONLY_METHODS and family != "vit":
            raise ValueError(f"{self.method} pretrains a ViT (it masks patches); a {family} backbone takes "
                             f"{' or '.join(JOINT_EMBEDDING_METHODS)}")

    @property
    def vit(self) -> ViTConfig:
        """The backbone when it is a ViT (the name configs had before the ResNet family)."""
        if not isinstance(self.backbone, ViTConfig):
            raise AttributeError(f"this recipe's backbone is a {family_of(self.backbone)}, not a ViT")
        return self.backbone

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backbone"] = config_to_dict(self.backbone)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        """Inverse of :meth:`to_dict` (JSON-safe: lists come back as tuples)."""
        d = dict(d)
        if "vit" in d and "backbone" not in d:  # written before the ResNet family
            d["backbone"] = d.pop("vit")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PretrainConfig keys: {unknown}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        d["backbone"] = config_from_dict(dict(d["backbone"]))
        if "augment" in d:
            d["augment"] = Augment(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(d["augment"]).items()})
        return cls(**d)


PRETRAIN_METHODS = ("mae", "dino", *JOINT_EMBEDDING_METHODS, "sequential", "codebook")
VIT_ONLY_METHODS = ("mae", "dino")


@dataclass
class PretrainResult:
    encoder_state: dict  # the backbone's state dict (CPU tensors, no head)
    losses: list[float]  # one per step, from step 0 (resumed runs include the steps before the crash)
    seconds: float  # wall time of this process's steps
    images_per_s: float
    resumed_from_step: int = 0


def build_ssl_model(cfg: PretrainConfig) -> torch.nn.Module:
    """The pretraining model for ``cfg.method``; its ``.encoder`` is the backbone we keep."""
    if cfg.method in JOINT_EMBEDDING_METHODS:
        return JointEmbedding(build_backbone(cfg.backbone), cfg.method, (cfg.proj_hidden_dim, cfg.proj_dim),
                              cfg.temperature)
    if cfg.method == "sequential":
        return NextTokenPretraining(cfg.backbone)
    if cfg.method == "mae":
        contrastive = cfg.contrastive_weight > 0
        return MaskedAutoencoder(
            cfg.vit, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.norm_pix_loss,
            contrastive_dim=cfg.contrastive_dim if contrastive else 0, temperature=cfg.temperature,
        )
    from components.models.dino import SelfDistillation

    return SelfDistillation(cfg.vit, out_dim=cfg.dino_out_dim, hidden_dim=cfg.dino_hidden_dim,
                            bottleneck_dim=cfg.dino_bottleneck_dim, student_temp=cfg.student_temp,
                            mask_ratio=cfg.dino_mask_ratio, centering=cfg.dino_centering, koleo_weight=cfg.dino_koleo)


def teacher_schedule(step: int, cfg: PretrainConfig) -> tuple[float, float]:
    """DINO's (teacher temperature, EMA momentum) at ``step``: temperature warmed up linearly,
    momentum cosine-annealed from ``teacher_momentum`` to 1 (the teacher freezes as lr -> 0)."""
    w = cfg.teacher_temp_warmup_steps
    temp = cfg.teacher_temp if step >= w else cfg.teacher_temp_start + (cfg.teacher_temp - cfg.teacher_temp_start) * step / w
    momentum = 1.0 - (1.0 - cfg.teacher_momentum) * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps))
    return temp, momentum


def fit_codebook(images: np.ndarray, cfg: PretrainConfig, progress: bool, init_encoder_state: dict | None
                 ) -> PretrainResult:
    """A descriptor backbone's "pretraining": its codebook and landmarks, fitted once (one "step",
    its loss the k-means loss). Minutes, so nothing is checkpointed: a killed run starts over."""
    if init_encoder_state is not None:
        raise ValueError("a descriptor backbone is fitted from the images alone: --init-from does not apply")
    t0 = time.perf_counter()
    state, loss = fit_descriptor_state(images, cfg.backbone, TTA_VIEWS[cfg.codebook_views], cfg.seed,
                                       progress=progress)
    seconds = time.perf_counter() - t0
    return PretrainResult({k: v.contiguous() for k, v in state.items()}, [loss], seconds, len(images) / seconds)


# ------------------------------------------------------------------------------ the loop


def pretrain(
    images: np.ndarray,
    cfg: PretrainConfig,
    progress: bool = True,
    init_encoder_state: dict | None = None,
    checkpoint_path: Path | str | None = None,
) -> PretrainResult:
    """Pretrain a backbone on uint8 grayscale images ``[N, H, W]`` (H = W = ``cfg.backbone.img_size``).

    ``init_encoder_state`` continues from existing weights (ours, timm, MAE or HF ViT; ours,
    timm or torchvision ResNet).
    ``checkpoint_path``: the full training state is written there every ``cfg.checkpoint_every``
    steps; if the file exists the run resumes from it and ends with the same weights as an
    uninterrupted run (CPU, same seed). Under ``torchrun`` each process takes its share of every
    batch and gradients are averaged (DDP); rank 0 writes the checkpoints.
    Deterministic on CPU for a given ``cfg.seed``.
    """
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
    size = cfg.backbone.img_size
    if images.shape[1:] != (size, size):
        raise ValueError(f"images are {images.shape[1:]}, the encoder expects {size}px squares")
    if cfg.backbone.in_chans != 1:
        raise ValueError("pretraining works on grayscale images: the backbone's in_chans must be 1")
    if cfg.method == "codebook":
        return fit_codebook(images, cfg, progress, init_encoder_state)
    dist = distributed_context(cfg.device)
    device = dist.device
    torch.manual_seed(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)  # the batch order: the same in every process
    gen = torch.Generator().manual_seed(cfg.seed + 1 + 1000 * dist.rank)  # augmentation + masking: per process

    # data: the whole set stays on the device as uint8
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    n = data.shape[0]
    batch_size = min(cfg.batch_size, n)
    if batch_size % dist.world_size:
        raise ValueError(f"batch size {batch_size} does not split over {dist.world_size} processes")
    local = slice(dist.rank * batch_size // dist.world_size, (dist.rank + 1) * batch_size // dist.world_size)
    sentence = getattr(cfg.backbone, "sentence_length", 1)
    if (batch_size // dist.world_size) % sentence:  # a sentence never straddles two batches or processes
        raise ValueError(f"each process's batch of {batch_size // dist.world_size} images does not split into "
                         f"sentences of {sentence} images (the data has {n} images)")

    # model
    model = build_ssl_model(cfg)
    if init_encoder_state is not None:
        load_backbone_weights(model.encoder, init_encoder_state)
        if cfg.method == "dino":
            model.update_teacher(0.0)  # the teacher starts from the same weights as the student
    channels_last = cfg.channels_last and family_of(cfg.backbone) == "resnet"
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)

    # optimizer
    groups = param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")

    # resume: the whole training state, so the rest of the run is the run that was interrupted
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
        gen.set_state(state["gen"][dist.rank])
        log.info("resuming %s pretraining from step %d (%s)", cfg.method, start, checkpoint_path)

    def save_resume_state(step: int) -> None:
        gens = dist.gather(gen.get_state())
        if dist.rank == 0:
            write_atomically(checkpoint_path, save_checkpoint({
                "config": cfg.to_dict(), "images_sha256": fingerprint, "step": step, "cursor": cursor,
                "order": order, "losses": losses, "order_gen": order_gen.get_state(), "gen": gens,
                "model": model.state_dict(), "optimizer": opt.state_dict()}), durable=True)
        dist.barrier()

    step_model = dist.wrap(model)
    if cfg.compile:
        step_model = torch.compile(step_model)

    # loop: epochs of random permutations, cut into batches (last partial batch dropped)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"pretrain ({cfg.method})", disable=not progress or dist.rank > 0,
               leave=False)
    t0 = time.perf_counter()

    # A SIGTERM/Ctrl-C is acted on between steps, where the state is whole: checkpointed first,
    # so a rerun resumes from there (single process: DDP ranks would have to agree on the step).
    save_on_stop = save_resume_state if dist.world_size == 1 else None

    with deferred_signals() as stop:
        for step in range(start, cfg.steps):
            if stop.pending:
                checkpoint_then_stop(stop, save_on_stop, len(losses), start, checkpoint_path)
            if cursor + batch_size > n:
                order, cursor = torch.randperm(n, generator=order_gen), 0
            idx = order[cursor : cursor + batch_size][local]
            cursor += batch_size
            batch = data[idx.to(device)]

            lr = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            with autocast_for(device):
                if cfg.method == "dino":
                    teacher_temp, momentum = teacher_schedule(step, cfg)
                    views = [augment_batch(batch, cfg.augment, gen) for _ in range(cfg.dino_views)]
                    loss = step_model(views, teacher_temp=teacher_temp, generator=gen)
                elif cfg.method in JOINT_EMBEDDING_METHODS:
                    x, x2 = augment_batch(batch, cfg.augment, gen), augment_batch(batch, cfg.augment, gen)
                    if channels_last:
                        x, x2 = x.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
                    loss = step_model(x, x2)
                elif cfg.method == "sequential":
                    loss = step_model(augment_batch(batch, cfg.augment, gen))
                elif cfg.contrastive_weight > 0:
                    x, x2 = augment_batch(batch, cfg.augment, gen), augment_batch(batch, cfg.augment, gen)
                    loss = model.forward_views(x, x2, cfg.mask_ratio, cfg.contrastive_weight, generator=gen)[0]
                else:
                    loss = step_model(augment_batch(batch, cfg.augment, gen), cfg.mask_ratio, generator=gen)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if cfg.method == "dino":
                model.update_teacher(momentum)

            losses.append(float(loss.item()))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"{cfg.method} loss is {losses[-1]} at step {step}; lower cfg.lr")
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            if checkpoint_due(checkpoint_path, cfg.checkpoint_every, step + 1, cfg.steps):
                save_resume_state(step + 1)
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                break
        if stop.pending:  # arrived during the last step
            checkpoint_then_stop(stop, save_on_stop, len(losses), start, checkpoint_path)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    encoder_state = {k: v.detach().cpu().contiguous().clone() for k, v in model.encoder.state_dict().items()}
    steps_here = len(losses) - start
    return PretrainResult(encoder_state, losses, seconds, steps_here * batch_size / max(seconds, 1e-9), start)
