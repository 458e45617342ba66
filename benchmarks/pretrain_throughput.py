"""Throughput, peak memory and model-FLOP utilization of a pretraining step (ViT-Ti/S/B, ResNets).

    .venv/bin/python -m benchmarks.pretrain_throughput --device cpu                 # ti, s at 64 and 224 px
    .venv/bin/python -m benchmarks.pretrain_throughput --device cpu --models rn-tiny,ti --methods simclr,mae \
        --img-sizes 128 --batch-size 64 --threads 1                                  # per method and family
    .venv/bin/python -m benchmarks.pretrain_throughput --device cuda [--compile]    # ti, s, b at 224 px
    .venv/bin/python -m benchmarks.pretrain_throughput --device cuda --models b --batch-size 1024 --json b.json

What is timed is the real training loop: each configuration calls
``components.training.pretrain.pretrain()`` itself with ``warmup + steps`` steps, and a global
optimizer-step hook (``torch.optim.optimizer.register_optimizer_step_post_hook``, a public torch
API) stamps the time after every ``opt.step()`` (after a CUDA synchronize). The interval between
two stamps is one whole step as the loop runs it: batch gather, on-device augmentation, forward
under the loop's autocast, backward, fused AdamW, ``loss.item()``, logging. Warmup steps are
dropped; the first step (which holds ``torch.compile``'s compilation with ``--compile``) is
reported on its own. Calling ``pretrain()`` rather than rebuilding its step here means the numbers
follow the loop as it changes (compile, DDP wrapping, new methods) instead of drifting from it.

Three things are measured beside the loop, with the same parts the loop uses:

* model FLOPs per step: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward
  of ``build_ssl_model(cfg)`` on an augmented batch of 4 images, under ``autocast_for(device)``,
  scaled linearly to the batch (every op is per-sample; attention is within one image). These are
  the FLOPs the step executes (matmuls, convolutions, attention; no recomputation), so
  MFU = FLOPs per step x steps per second / ``--peak-tflops`` (default 989 TFLOP/s: H100 SXM
  dense bf16; a plain bf16 matmul reaches about 800 there);
* the data path alone: index gather from the uint8 store on the device + ``augment_batch``, timed
  per batch with the same sync, and its share of a full step ("loader share");
* peak memory above the data store: CUDA ``max_memory_allocated``; CPU the peak resident set
  size, sampled every 5 ms, above the RSS before ``pretrain()`` was called.

* a bare torch loop of the same model: ``build_ssl_model(cfg)``, the same optimizer, batches
  augmented once beforehand, nothing but forward, backward and ``opt.step()`` timed; the loop's
  step time over it ("vs bare") is what dlvm's loop adds (augmentation, bookkeeping, logging).

Methods (``--methods``) pair with the models that take them: MAE and DINO with ViTs, SimCLR and
VICReg with both; pairs that do not fit are skipped with a note. ResNets (``rn-tiny``: 16-128
channels, one block a stage, the auto recipe's CPU backbone; ``rn-small``; ``rn18``) train
channels-last unless ``--no-channels-last``.

Images are random uint8 by default (throughput does not depend on content); ``--elpv`` uses the
ELPV solar-cell images resized to the resolution instead. Models are the standard widths at full
depth 12 (ViT-Ti 192, ViT-S 384, ViT-B 768) with the MAE decoder of ``PretrainConfig`` (128 wide,
2 deep unless ``--decoder-dim/--decoder-depth``); patch 8 below 128 px, else 16 (``--patch``).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import components  # noqa: F401  (OMP_WAIT_POLICY=PASSIVE before torch starts)
import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from components.models.resnet import ResNetConfig
from components.models.vit import ViTConfig
from components.training.augment import augment_batch
from components.training.device import autocast_for, pick_device
from components.training.pretrain import PretrainConfig, build_ssl_model, pretrain
from components.training.recipes import tiny_pretrain

MODELS = {"ti": ViTConfig.tiny, "s": ViTConfig.small, "b": ViTConfig.base,
          "rn-tiny": lambda size, patch: ResNetConfig.tiny(size, stem_pool=size >= 128),
          "rn-small": lambda size, patch: ResNetConfig.small(size), "rn18": lambda size, patch: ResNetConfig.resnet18(size)}
MODEL_NAMES = {"ti": "ViT-Ti", "s": "ViT-S", "b": "ViT-B", "rn-tiny": "ResNet-tiny", "rn-small": "ResNet-small",
               "rn18": "ResNet-18"}
VIT_ONLY = ("mae", "dino")
DEFAULTS = {  # device -> (models, image sizes, warmup, steps)
    "cpu": (["ti", "s"], [64, 224], 2, 5),
    "cuda": (["ti", "s", "b"], [224], 10, 30),
}
H100_BF16_DENSE_TFLOPS = 989.0
FLOP_COUNT_BATCH = 4


def default_batch(device: str, model: str, img_size: int) -> int:
    """CPU: the demo recipe's 128 at small sizes, 32 at 224 px (seconds per step on 2 cores);
    GPU: large enough to fill an H100 with the encoder's 25 % visible tokens."""
    if device == "cpu":
        return 128 if img_size <= 128 else 32
    return {"ti": 1024, "s": 1024, "b": 512}.get(model, 512)


def default_patch(img_size: int) -> int:
    return 8 if img_size < 128 else 16


# ------------------------------------------------------------------------------ measuring


class StepClock:
    """Time stamps after every optimizer step of any optimizer, while active."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []

    def _hook(self, optimizer, args, kwargs) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())

    @contextlib.contextmanager
    def active(self):
        handle = register_optimizer_step_post_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()


class PeakRSS:
    """Peak resident set size of this process, sampled in a thread (CPU memory).

    The baseline is taken after handing freed heap pages back to the OS (glibc ``malloc_trim``),
    so memory an earlier configuration freed but the allocator kept does not hide this one's.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.peak = self.baseline = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except ImportError:  # Linux without psutil
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sdpa_cpu_flop_formulas() -> dict:
    """FlopCounterMode counts CUDA attention kernels but not the CPU flash kernel: add it."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    out = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
        out[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v))
    return {op: f for op, f in out.items() if op not in fc.flop_registry}


def ssl_loss(model: torch.nn.Module, batch: torch.Tensor, cfg: PretrainConfig, gen: torch.Generator) -> torch.Tensor:
    """The loss of one step, computed as ``pretrain()``'s loop computes it (augmentation included)."""
    if cfg.method == "dino":
        views = [augment_batch(batch, cfg.augment, gen) for _ in range(cfg.dino_views)]
        return model(views, teacher_temp=cfg.teacher_temp, generator=gen)
    if cfg.method in ("simclr", "vicreg"):
        return model(augment_batch(batch, cfg.augment, gen), augment_batch(batch, cfg.augment, gen))
    if cfg.contrastive_weight > 0:
        x, x2 = augment_batch(batch, cfg.augment, gen), augment_batch(batch, cfg.augment, gen)
        return model.forward_views(x, x2, cfg.mask_ratio, cfg.contrastive_weight, generator=gen)[0]
    return model(augment_batch(batch, cfg.augment, gen), cfg.mask_ratio, generator=gen)[0]


def count_step_flops(cfg: PretrainConfig, data: torch.Tensor, device: torch.device) -> tuple[int, dict, int]:
    """Model FLOPs of one forward + backward at ``cfg.batch_size`` images (counted at 4, scaled),
    FLOPs per operator, and the model's parameter count."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(cfg.seed)
    model = build_ssl_model(cfg).to(device).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    batch = data[: min(FLOP_COUNT_BATCH, data.shape[0])]
    counter = FlopCounterMode(display=False, custom_mapping=sdpa_cpu_flop_formulas())
    with counter:
        with autocast_for(device):
            loss = ssl_loss(model, batch, cfg, gen)
        loss.backward()
    scale = cfg.batch_size / batch.shape[0]
    by_op = {str(op): int(n * scale) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    params = sum(p.numel() for p in model.parameters())
    return int(counter.get_total_flops() * scale), by_op, params


def time_data_path(cfg: PretrainConfig, data: torch.Tensor, device: torch.device, batches: int) -> float:
    """Seconds per batch of the loop's data path alone: permutation slice, gather, augmentation."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    order = torch.randperm(data.shape[0], generator=gen)
    views = cfg.dino_views if cfg.method == "dino" else 2 if cfg.contrastive_weight > 0 else 1
    B = cfg.batch_size

    def one(i: int) -> None:
        start = (i * B) % (data.shape[0] - B + 1)
        batch = data[order[start : start + B].to(device)]
        for _ in range(views):
            augment_batch(batch, cfg.augment, gen)

    for i in range(2):  # warmup (first grid_sample, allocator)
        one(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(batches):
        one(i)
    sync(device)
    return (time.perf_counter() - t0) / batches


# ------------------------------------------------------------------------------ one configuration


@dataclass
class Row:
    model: str
    method: str
    img_px: int
    patch: int
    batch: int
    device: str
    device_name: str
    dtype: str
    compiled: bool
    images: str
    warmup: int
    steps: int
    images_per_s: float
    step_ms: float  # mean over the timed steps
    step_ms_median: float
    first_step_s: float  # incl. torch.compile's compilation when compiled
    compile_s: float | None  # first step minus a steady step, when compiled
    peak_mib: float  # above the data store
    data_mib: float
    params_m: float
    flops_per_step: int
    tflop_per_step: float
    achieved_tflops: float
    peak_tflops: float | None
    mfu: float | None
    loader_ms: float
    loader_share: float
    pretrain_images_per_s: float  # pretrain()'s own figure: all steps, warmup and compilation included
    bare_step_ms: float = 0.0  # the same model in a plain torch loop (pre-augmented batches)
    vs_bare: float = 0.0  # the loop's step time over the bare loop's
    threads: int = 0
    omp_wait_policy: str = ""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), model)
    return f"{model}, {torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}"


def autocast_dtype(device: torch.device) -> str:
    ctx = autocast_for(device)
    if isinstance(ctx, torch.autocast):
        return f"{str(ctx.fast_dtype).removeprefix('torch.').replace('bfloat16', 'bf16')} autocast"
    return "fp32"


@functools.lru_cache(maxsize=1)  # one size at a time: every model of a size reuses the decoded set
def load_images(n: int, size: int, elpv: bool, seed: int = 0) -> np.ndarray:
    """``n`` random uint8 images, or the first ``n`` ELPV images decoded and resized to ``size``."""
    if not elpv:
        return np.random.default_rng(seed).integers(0, 256, size=(n, size, size), dtype=np.uint8)
    from components.data.elpv import elpv_labels, elpv_root
    from components.data.images import load_image_array

    root = elpv_root()
    rows = elpv_labels()[:n]
    return np.stack([load_image_array(root / r.path, size) for r in rows])


def bare_loop_step_s(cfg: PretrainConfig, data: torch.Tensor, device: torch.device, steps: int) -> float:
    """Seconds per step of a plain torch loop of the same model: pre-augmented batches, forward,
    backward, AdamW step; nothing else."""
    torch.manual_seed(cfg.seed)
    model = build_ssl_model(cfg).to(device).train()
    channels_last = cfg.channels_last and isinstance(cfg.backbone, ResNetConfig)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    batch = data[: cfg.batch_size]
    views = [augment_batch(batch, cfg.augment, gen) for _ in range(2)]
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    masks_gen = torch.Generator().manual_seed(1)

    def step() -> None:
        with autocast_for(device):
            if cfg.method in ("simclr", "vicreg"):
                loss = model(views[0], views[1])
            elif cfg.method == "dino":
                loss = model(views, teacher_temp=cfg.teacher_temp, generator=masks_gen)
            else:
                loss = model(views[0], cfg.mask_ratio, generator=masks_gen)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def measure(model_key: str, img_size: int, patch: int, batch: int, device: torch.device, args,
            method: str | None = None) -> Row:
    vit = MODELS[model_key](img_size, patch)
    method = method or args.method
    n_images = max(4 * batch, 256) if not args.elpv else min(args.elpv_images, 2624)
    images = load_images(n_images, img_size, args.elpv)
    if images.shape[0] < batch:
        raise SystemExit(f"--elpv gives {images.shape[0]} images, fewer than the batch of {batch}")
    cfg = PretrainConfig(
        method=method, backbone=vit, steps=args.warmup + args.steps, batch_size=batch,
        channels_last=args.channels_last,
        warmup_steps=max(1, args.warmup), device=str(device), compile=args.compile, seed=0,
        decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth,
        decoder_heads=args.decoder_heads or (PretrainConfig.decoder_heads if args.decoder_dim == PretrainConfig.decoder_dim
                                             else max(1, args.decoder_dim // 32)),
    )
    data_bytes = images.nbytes

    # 1. the real loop, stamped after every optimizer step
    gc.collect()
    clock = StepClock(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        mem_before = torch.cuda.memory_allocated(device)
    rss = PeakRSS() if device.type == "cpu" else contextlib.nullcontext()
    with rss, clock.active():
        t_call = time.perf_counter()
        result = pretrain(images, cfg, progress=args.progress)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - mem_before - data_bytes
    else:
        peak = rss.peak - rss.baseline  # the images already live in this process (CPU: no copy)
    stamps = clock.stamps
    if len(stamps) != cfg.steps or len(result.losses) != cfg.steps:
        raise RuntimeError(f"expected {cfg.steps} optimizer steps, saw {len(stamps)} stamps and "
                           f"{len(result.losses)} losses: has pretrain()'s loop changed?")
    first_step = stamps[0] - t_call  # includes building the model and moving the data
    timed = np.diff(stamps[args.warmup - 1 :])  # one interval per step after the warmup
    step_s = float(np.mean(timed))
    loop_images_per_s = result.images_per_s
    del result
    gc.collect()

    # 2. FLOPs of one step and 3. the data path alone, both on the device's uint8 store
    data = torch.from_numpy(images).to(device)
    flops, _, params = count_step_flops(cfg, data, device)
    loader_s = time_data_path(cfg, data, device, batches=max(3, args.steps))
    bare_s = bare_loop_step_s(cfg, data, device, steps=max(2, args.steps))
    del data
    if device.type == "cuda":
        torch.cuda.empty_cache()

    achieved = flops / step_s / 1e12
    peak_tflops = args.peak_tflops if (device.type == "cuda" or args.peak_tflops_given) else None
    return Row(
        model=MODEL_NAMES[model_key], method=cfg.method, img_px=img_size, patch=patch, batch=batch,
        device=device.type, device_name=device_name(device), dtype=autocast_dtype(device), compiled=cfg.compile,
        images="ELPV" if args.elpv else "random", warmup=args.warmup, steps=args.steps,
        images_per_s=batch / step_s, step_ms=1e3 * step_s, step_ms_median=1e3 * float(np.median(timed)),
        first_step_s=first_step, compile_s=first_step - float(np.median(timed)) if cfg.compile else None,
        peak_mib=peak / 2**20, data_mib=data_bytes / 2**20, params_m=params / 1e6,
        flops_per_step=flops, tflop_per_step=flops / 1e12, achieved_tflops=achieved,
        peak_tflops=peak_tflops, mfu=achieved / peak_tflops if peak_tflops else None,
        loader_ms=1e3 * loader_s, loader_share=loader_s / step_s,
        pretrain_images_per_s=loop_images_per_s, bare_step_ms=1e3 * bare_s, vs_bare=step_s / bare_s,
        threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
    )


# ------------------------------------------------------------------------------ report


def markdown_table(rows: list[Row]) -> str:
    head = ["model", "img px", "patch", "batch", "device", "dtype", "compiled", "images/s", "step ms",
            "bare loop ms (loop / bare)", "loader ms (share)", "peak MiB", "TFLOP/step", "TFLOP/s", "MFU",
            "first step s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            f"{r.method.upper()} {r.model}", str(r.img_px), str(r.patch), str(r.batch), f"{r.device} ({r.device_name})", r.dtype,
            "yes" if r.compiled else "no", f"{r.images_per_s:,.1f}", f"{r.step_ms:,.1f}",
            f"{r.bare_step_ms:,.1f} ({r.vs_bare:.2f}x)",
            f"{r.loader_ms:,.1f} ({100 * r.loader_share:.1f} %)", f"{r.peak_mib:,.0f}",
            f"{r.tflop_per_step:.3f}", f"{r.achieved_tflops:.2f}",
            f"{100 * r.mfu:.1f} %" if r.mfu is not None else "–", f"{r.first_step_s:.1f}",
        ]) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--models", default=None, help="comma list of ti,s,b (CPU default ti,s; GPU ti,s,b)")
    p.add_argument("--img-sizes", default=None, help="comma list of pixels (CPU default 64,224; GPU 224)")
    p.add_argument("--patch", type=int, default=None, help="patch size (default 8 below 128 px, else 16)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default CPU 128 at <=128 px, 32 above; GPU ti/s 1024, b 512)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default CPU 5, GPU 30)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, >= 1 (default CPU 2, GPU 10)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="PretrainConfig.compile: torch.compile the model (default off)")
    p.add_argument("--method", default="mae", help="PretrainConfig.method (default mae)")
    p.add_argument("--methods", default=None, help="comma list of methods, each with every model that takes it "
                                                     "(overrides --method)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="ResNets in channels-last memory layout (default on, as the loop does)")
    p.add_argument("--decoder-dim", type=int, default=PretrainConfig.decoder_dim)
    p.add_argument("--decoder-depth", type=int, default=PretrainConfig.decoder_depth)
    p.add_argument("--decoder-heads", type=int, default=None,
                   help="default PretrainConfig's for its width, else one head per 32 channels (MAE paper: 512 wide, 8 deep, 16 heads)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"accelerator peak for MFU (default {H100_BF16_DENSE_TFLOPS:g}: H100 SXM dense bf16)")
    p.add_argument("--elpv", action="store_true", help="ELPV images resized to each size instead of random ones")
    p.add_argument("--elpv-images", type=int, default=2624, help="how many ELPV images (default all 2,624)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="write the rows and the setup here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-step progress bar")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.peak_tflops_given = args.peak_tflops is not None
    if args.peak_tflops is None:
        args.peak_tflops = H100_BF16_DENSE_TFLOPS
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"pretrain_throughput: {exc}") from None
    models, sizes, warmup, steps = DEFAULTS[device.type]
    models = args.models.split(",") if args.models else models
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"pretrain_throughput: unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    sizes = [int(s) for s in args.img_sizes.split(",")] if args.img_sizes else sizes
    args.warmup = warmup if args.warmup is None else args.warmup
    args.steps = steps if args.steps is None else args.steps
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("pretrain_throughput: --warmup and --steps must be >= 1")

    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.method_list = args.methods.split(",") if args.methods else [args.method]
    try:
        return run(args, device, models, sizes)
    finally:
        torch.set_num_threads(threads_before)


def warm_up_libraries(device: torch.device) -> None:
    """One tiny pretraining run, so that the first configuration's time and memory do not carry
    the process's one-time costs (CUDA context, cuBLAS/oneDNN handles, lazily loaded code)."""
    images = np.random.default_rng(0).integers(0, 256, size=(32, 32, 32), dtype=np.uint8)
    pretrain(images, tiny_pretrain(32, steps=2, device=str(device)), progress=False)
    gc.collect()


def run(args, device: torch.device, models: list[str], sizes: list[int]) -> dict:
    name = device_name(device)
    load_average = os.getloadavg()[0]
    print(f"device: {device} ({name}), torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average {load_average:.1f}", file=sys.stderr)
    if device.type == "cuda":
        note = "" if "H100" in name else f" -- this is not an H100 ({name}): pass --peak-tflops for its peak"
        print(f"MFU against {args.peak_tflops:g} TFLOP/s{' (--peak-tflops)' if args.peak_tflops_given else ' (H100 dense bf16)'}"
              f"{note}", file=sys.stderr)
    warm_up_libraries(device)
    rows: list[Row] = []
    pairs = [(m, method) for method in args.method_list for m in models
             if not (method in VIT_ONLY and m.startswith("rn"))]
    skipped = [f"{method} on {MODEL_NAMES[m]}" for method in args.method_list for m in models
               if method in VIT_ONLY and m.startswith("rn")]
    if skipped:
        print(f"skipped (ViT-only methods): {', '.join(skipped)}", file=sys.stderr)
    for size in sizes:
        patch = args.patch or default_patch(size)
        for m, method in pairs:
            batch = args.batch_size or default_batch(device.type, m, size)
            print(f"[{len(rows) + 1}/{len(sizes) * len(pairs)}] {method} {MODEL_NAMES[m]} {size}px/{patch} batch {batch} "
                  f"on {device}{' compiled' if args.compile else ''}: {args.warmup} warmup + {args.steps} timed steps",
                  file=sys.stderr, flush=True)
            row = measure(m, size, patch, batch, device, args, method)
            print(f"    {row.images_per_s:,.1f} images/s, {row.step_ms:,.1f} ms/step, loader {100 * row.loader_share:.1f} %"
                  + (f", MFU {100 * row.mfu:.1f} %" if row.mfu is not None else ""), file=sys.stderr, flush=True)
            rows.append(row)

    table = markdown_table(rows)
    print(table)
    if device.type == "cuda":
        print(f"\nMFU = model FLOPs per step x steps/s / {args.peak_tflops:g} TFLOP/s.")
    out = {
        "command": " ".join(["python -m benchmarks.pretrain_throughput", *args.argv]),
        "torch": torch.__version__, "device": str(device), "device_name": name, "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "load_average_start": load_average, "peak_tflops": args.peak_tflops if rows and rows[0].mfu is not None else None,
        "rows": [asdict(r) for r in rows], "table": table,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
