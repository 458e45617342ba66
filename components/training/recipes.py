"""Training recipes: ``auto`` (chosen from a profile of the data and the device) and named
presets, all listed by `dlvm recipes`.

A recipe says how images are decoded (:class:`Preprocess`: size, resampling, aspect), the
pretraining config for each self-supervised method it supports (the first is its default)
and the adaptation config for each adaptation method. ``auto`` (the default everywhere)
derives all of it from a :class:`DataProfile` (image sizes, count, categorical pixels,
labels, class imbalance), the device and an optional time budget; :func:`resolve_recipe`
returns the choices with the reason for each, which the flows print and record. Every
preset is built and validated by the test suite, and an unknown name fails with the list of
known ones; nothing is looked up by reflection.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from components.data.images import Preprocess
from components.data.profile import DataProfile
from components.evaluation.metrics import DEFAULT_GATE_METRIC
from components.models.backbones import BackboneConfig, config_to_dict, family_of
from components.models.descriptors import DescriptorConfig
from components.models.resnet import ResNetConfig
from components.models.sequential import SequentialConfig
from components.models.tokenizer import TokenizerConfig
from components.models.vit import ViTConfig
from components.training.adapt import METHODS as ADAPT_METHODS
from components.training.adapt import TRAINED_METHODS, AdaptConfig
from components.training.augment import Augment
from components.training.pretrain import PretrainConfig

AUTO = "auto"
PRETRAIN_SHARE = 0.3  # of an auto budget that includes pretraining; the rest is shared by the fine-tune runs


def pipeline_finetune_runs(n_backbones: int, n_fractions: int, n_seeds: int, methods, candidate_method: str | None) -> int:
    """How many network-training runs a pipeline's budget must cover: the sweep's (backbones x
    fractions x seeds x trained methods) plus the candidate's, which is a trained method when
    the user names one, and may be one whenever the sweep has one (it picks the best measured)."""
    trained = [m for m in methods if m in TRAINED_METHODS]
    candidate_trains = candidate_method in TRAINED_METHODS if candidate_method else bool(trained)
    return max(1, n_backbones * n_fractions * n_seeds * len(trained) + candidate_trains)

# ------------------------------------------------------------------------------ presets


def demo_pretrain(**kw) -> PretrainConfig:
    """The CPU demo recipe's MAE: ~7 min on 2 cores for the 2,624 ELPV images (see benchmarks)."""
    return PretrainConfig(**kw)


def demo_dino_pretrain(**kw) -> PretrainConfig:
    """DINO at the demo's budget (see docs/BENCHMARKS.md for what it gives on ELPV)."""
    base = dict(method="dino", steps=300, batch_size=32, lr=5e-4, warmup_steps=30, weight_decay=0.04,
                betas=(0.9, 0.999), grad_clip=3.0, augment=Augment(crop_scale=(0.4, 1.0), rot90=True))
    return PretrainConfig(**{**base, **kw})


def demo_adapt(method: str, **kw) -> AdaptConfig:
    """The CPU demo's adaptation: fine-tuning and LoRA for 4 epochs (a few minutes on 2 cores
    for ~2,000 ELPV images at 64 px, see docs/BENCHMARKS.md); probe and prototypes as they come."""
    epochs = {"finetune": 4, "lora": 4}.get(method)
    return AdaptConfig(**{"method": method, **({"epochs": epochs} if epochs else {}), **kw})


def tiny_pretrain(img_size: int = 32, **kw) -> PretrainConfig:
    """A seconds-long pretraining run for tests."""
    base = dict(
        backbone=ViTConfig(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool="avg"),
        steps=30, batch_size=16, lr=2e-3, warmup_steps=5, decoder_dim=32, decoder_depth=1, decoder_heads=2,
        dino_out_dim=64, dino_hidden_dim=64, dino_bottleneck_dim=32, proj_hidden_dim=64, proj_dim=32, device="cpu",
    )
    return PretrainConfig(**{**base, **kw})


def tiny_dino_pretrain(**kw) -> PretrainConfig:
    return tiny_pretrain(**{"method": "dino", "grad_clip": 3.0, **kw})


def tiny_cnn_backbone(img_size: int = 32) -> ResNetConfig:
    """A 20 k-parameter ResNet (8-16-32 channels, one block a stage) for tests."""
    return ResNetConfig(img_size=img_size, layers=(1, 1, 1), widths=(8, 16, 32), stem_kernel=3, stem_pool=False)


def tiny_cnn_pretrain(method: str = "simclr", **kw) -> PretrainConfig:
    """A seconds-long SimCLR / VICReg run of the tiny ResNet, for tests."""
    base = dict(method=method, backbone=tiny_cnn_backbone(), steps=30, batch_size=16, lr=2e-3, warmup_steps=5,
                proj_hidden_dim=64, proj_dim=32, augment=Augment.joint_embedding(), device="cpu")
    return PretrainConfig(**{**base, **kw})


def tiny_adapt(method: str = "probe", **kw) -> AdaptConfig:
    """Seconds-long adaptation settings for tests."""
    return AdaptConfig(**{"method": method, "epochs": 2, "batch_size": 16, "probe_folds": 3, "device": "cpu", **kw})


def tiny_cnn_adapt(method: str = "probe", **kw) -> AdaptConfig:
    """Seconds-long adaptation of the tiny ResNet with the convergence machinery switched on."""
    return tiny_adapt(method, **{"epochs": 3, "lr": 2e-3, "augment": Augment.dihedral(), "val_fraction": 0.2,
                                 "patience": 2, "ema_decay": 0.9, "class_balance": "auto", "tta": "dihedral", **kw})


def descriptor_pretrain(backbone: DescriptorConfig | None = None, **kw) -> PretrainConfig:
    """A descriptor backbone at ELPV's full 300 px (the geometry measured in docs/BENCHMARKS.md):
    its codebook and landmarks are fitted in one pass over the images, under the 4 axis-keeping flips."""
    return PretrainConfig(**{"method": "codebook", "backbone": backbone or DescriptorConfig(), "steps": 1,
                             "codebook_views": "flips", **kw})


def descriptor_adapt(method: str, **kw) -> AdaptConfig:
    """The svm method trained on and averaged over the same flips; probe and prototypes as they come
    (fine-tuning and LoRA refuse a descriptor backbone: it has no weights to train)."""
    return AdaptConfig(**{"method": method, **({"tta": "flips"} if method == "svm" else {}), **kw})


def tiny_descriptor_pretrain(**kw) -> PretrainConfig:
    return descriptor_pretrain(DescriptorConfig(img_size=48, step=6, radii=(6, 12), clusters=4, landmarks=24), **kw)


# ------------------------------------------------------------------------------ the table


NETWORK_METHODS = ("probe", "finetune")  # what a pipeline sweeps on a network backbone unless told


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    pretrain: Mapping[str, Callable[[], PretrainConfig]]  # by SSL method; the first is the default
    adapt: Callable[[str], AdaptConfig]  # adaptation method -> its config
    preprocess: Callable[[], Preprocess] | None = None  # None: bicubic, stretched to the backbone's size
    methods: tuple[str, ...] = NETWORK_METHODS  # what a pipeline sweeps unless told (--methods)

    @property
    def default_method(self) -> str:
        return next(iter(self.pretrain))


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("demo", "CPU demo: ViT-Ti/8 at 64 px, MAE 1,000 steps (~7 min on 2 cores) or DINO 300 steps; "
                   "4-epoch fine-tune and LoRA",
           pretrain={"mae": demo_pretrain, "dino": demo_dino_pretrain}, adapt=demo_adapt),
    Recipe("tiny", "seconds-long runs for tests and smoke checks (32 px, 2 blocks, 30 steps)",
           pretrain={"mae": tiny_pretrain, "dino": tiny_dino_pretrain,
                     "simclr": lambda: tiny_pretrain(method="simclr"), "vicreg": lambda: tiny_pretrain(method="vicreg")},
           adapt=tiny_adapt),
    Recipe("tiny-cnn", "seconds-long runs of a 20 k-parameter ResNet for tests (32 px, SimCLR or VICReg 30 steps; "
                       "fine-tune with validation, EMA, dihedral TTA)",
           pretrain={"simclr": tiny_cnn_pretrain, "vicreg": lambda: tiny_cnn_pretrain("vicreg")},
           adapt=tiny_cnn_adapt),
    Recipe("descriptor", "dense descriptors and intensity patches at 300 px, VLAD (32 centres) and an RBF kernel "
                         "map fitted without labels in minutes (codebook); adapt with svm: ELPV's best on 2 CPU cores",
           pretrain={"codebook": descriptor_pretrain}, adapt=descriptor_adapt,
           preprocess=lambda: Preprocess(DescriptorConfig().img_size), methods=("svm",)),
    Recipe("tiny-descriptor", "a seconds-long descriptor backbone for tests (48 px, 4 centres, 24 landmarks)",
           pretrain={"codebook": tiny_descriptor_pretrain}, adapt=descriptor_adapt, methods=("svm",)),
)}
RECIPE_NAMES = (AUTO, *RECIPES)


def recipe_methods(name: str) -> tuple[str, ...]:
    """The adaptation methods a pipeline sweeps with recipe ``name`` unless told otherwise: a
    probe and a fine-tune for the networks (``auto`` too), the svm for a descriptor backbone."""
    return NETWORK_METHODS if name == AUTO else get_recipe(name).methods


def is_descriptor_recipe(name: str) -> bool:
    """Whether recipe ``name`` makes a descriptor backbone (whose svm takes a novelty bank); an
    unknown name is not one (the flows refuse it with the list of recipes)."""
    return name in RECIPES and "codebook" in RECIPES[name].pretrain


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r} (recipes: {', '.join(RECIPE_NAMES)}; see `dlvm recipes`)")
    return RECIPES[name]


def pretrain_config(recipe: str, method: str | None = None, steps: int | None = None, seed: int = 0,
                    profile: DataProfile | None = None, **auto) -> PretrainConfig:
    """The recipe's pretraining config for ``method`` (default: the recipe's own), with ``steps`` and ``seed``.
    ``auto`` needs the data's ``profile`` (and takes :func:`auto_recipe`'s keywords)."""
    return resolve_recipe(recipe, profile, method=method, steps=steps, seed=seed, **auto).pretrain


def adapt_config(method: str, recipe: str = "demo", seed: int = 0, profile: DataProfile | None = None,
                 **auto) -> AdaptConfig:
    """The recipe's adaptation config for ``method`` with ``seed``."""
    if method not in ADAPT_METHODS:
        raise ValueError(f"unknown adaptation method {method!r} (methods: {', '.join(ADAPT_METHODS)})")
    return resolve_recipe(recipe, profile, seed=seed, **auto).adapt[method]


# ------------------------------------------------------------------------------ resolved recipes


@dataclass
class ResolvedRecipe:
    """Every choice a run needs, and why: what the flows print and record."""

    name: str
    preprocess: Preprocess
    pretrain: PretrainConfig
    adapt: dict[str, AdaptConfig]
    reasons: list[str] = field(default_factory=list)
    profile: DataProfile | None = None
    budget_minutes: float | None = None

    @property
    def backbone(self) -> BackboneConfig:
        return self.pretrain.backbone

    def describe(self) -> str:
        b = self.backbone
        family = family_of(b)
        if family == "resnet":
            arch = (f"ResNet {'-'.join(map(str, b.widths))} x {'-'.join(map(str, b.layers))} blocks"
                    + (", each image standardized" if b.input_norm == "image" else ""))
        elif family == "descriptor":
            arch = (f"dense descriptors (radii {', '.join(map(str, b.radii))} px, step {b.step})"
                    + (f" and intensity patches ({', '.join(map(str, b.patch_blocks))} px blocks)" if b.patch_blocks
                       else "") + f", VLAD of {b.clusters} centres, RBF kernel map on {b.landmarks} landmarks")
        elif family == "sequential":
            arch = (f"causal transformer width {b.embed_dim} depth {b.depth} over {b.seq_len} tokens "
                    f"of a {b.tokenizer.codebook_size}-code tokenizer")
        else:
            arch = f"ViT width {b.embed_dim} depth {b.depth} patch {b.patch_size}"
        ft = self.adapt["finetune"]
        if family == "descriptor":
            svm = self.adapt["svm"]
            return "\n".join([f"recipe {self.name}: input {self.preprocess.describe()}; backbone {arch}; "
                               f"pretraining {self.pretrain.method} on {self.pretrain.codebook_views} views; "
                               f"adaptation svm (C {svm.svm_c:g}, TTA {svm.tta})"] + [f"  - {r}" for r in self.reasons])
        lines = [f"recipe {self.name}: input {self.preprocess.describe()}; backbone {arch}; "
                 f"pretraining {self.pretrain.method} {self.pretrain.steps} steps of {self.pretrain.batch_size}; "
                 f"fine-tune {ft.epochs} epochs ({ft.optimizer}, lr {ft.lr:g}, validation {ft.val_fraction:.0%}, "
                 f"patience {ft.patience or 'off'}, EMA {ft.ema_decay or 'off'}, class balance {ft.class_balance}, "
                 f"TTA {ft.tta})"]
        return "\n".join(lines + [f"  - {r}" for r in self.reasons])

    def to_dict(self) -> dict:
        return {"name": self.name, "preprocess": self.preprocess.to_dict(),
                "backbone": config_to_dict(self.backbone), "pretrain": self.pretrain.to_dict(),
                "adapt": {m: c.to_dict() for m, c in self.adapt.items()}, "reasons": list(self.reasons),
                "profile": self.profile.to_dict() if self.profile else None, "budget_minutes": self.budget_minutes}


def resolve_recipe(name: str, profile: DataProfile | None = None, *, method: str | None = None,
                   steps: int | None = None, seed: int = 0, **auto) -> ResolvedRecipe:
    """A named preset, or ``auto`` made concrete from ``profile`` (see :func:`auto_recipe`)."""
    if name == AUTO:
        if profile is None:
            raise ValueError("the auto recipe is chosen from the data: profile the dataset first "
                             "(or pick a named recipe: see `dlvm recipes`)")
        resolved = auto_recipe(profile, **auto)
        methods = {resolved.pretrain.method: resolved.pretrain}
        if method and method not in methods:
            try:
                methods[method] = replace(resolved.pretrain, method=method)
            except ValueError as exc:
                raise ValueError(f"recipe 'auto' has no {method!r} pretraining here: {exc}") from None
    else:
        r = get_recipe(name)
        methods = {m: make() for m, make in r.pretrain.items()}
        if method and method not in methods:
            raise ValueError(f"recipe {name!r} has no {method!r} pretraining (it has {', '.join(methods)})")
        default = methods[r.default_method]
        pre = r.preprocess() if r.preprocess else Preprocess(default.backbone.img_size)
        resolved = ResolvedRecipe(name, pre, default, {m: r.adapt(m) for m in ADAPT_METHODS},
                                  [f"named preset {name!r}"], profile)
    pre = methods[method] if method else resolved.pretrain
    pre = replace(pre, seed=seed, **({"steps": steps} if steps else {}))
    return replace(resolved, pretrain=pre, adapt={m: replace(c, seed=seed) for m, c in resolved.adapt.items()})


# CPU training speed of the tiny ResNet (16-128 channels) at 128 px, forward + backward +
# augmentation + the validation passes, 1 thread of this project's 2-core machines at a load
# average of about 3: ELPV fine-tunes measured 310 images/s (and the wafer ResNet, planned from
# this at 231, measured 215; docs/BENCHMARKS.md). Other sizes and widths scale with pixels x
# channels. A planning figure only: every run also gets a hard stop at 1.5x its share of the budget.
CPU_IMAGES_PER_S_128 = 300.0
# below this many fine-tune epochs a photograph's input steps down (192 -> 160 -> 128) on a CPU
MIN_FINETUNE_EPOCHS = 30
GPU_SPEEDUP = 40.0


def stem_pool(side: int, categorical: bool, device: str = "cpu") -> bool:
    """Whether the auto recipe's ResNet max-pools after its stride-2 stem at input ``side``: from
    128 px, and on a CPU for categorical maps from 64 px (their 64 px input then costs what 32 px
    without the pool did, and keeps thin scratch lines that 32 px breaks)."""
    return side >= (64 if categorical and device != "cuda" else 128)


def _images_per_s(backbone: ResNetConfig, device: str, threads: int) -> float:
    # the cost follows the area of the maps after the stem; the reference net shrinks its input
    # 4x there (stride-2 convolution, then max-pool), so a stem without the pool costs 4x more
    downsample = backbone.stem_stride * (2 if backbone.stem_pool else 1)
    pixels = (backbone.img_size / 128) ** 2 * (4 / downsample) ** 2
    width = backbone.widths[0] / 16 * (sum(backbone.layers) / 4)
    rate = CPU_IMAGES_PER_S_128 * max(1.0, 0.7 * threads) / (pixels * width ** 1.5)
    return rate * (GPU_SPEEDUP if device == "cuda" else 1.0)


def auto_recipe(profile: DataProfile, device: str = "cpu", threads: int = 1, budget_minutes: float | None = None,
                finetune_runs: int = 1, pretrain: bool = True, metric: str = DEFAULT_GATE_METRIC) -> ResolvedRecipe:
    """The recipe for this data on this device within ``budget_minutes`` (default: 20 on a CPU,
    60 on a GPU) shared by one pretraining and ``finetune_runs`` fine-tuning runs.

    The rules (each choice is recorded with its reason):

    * pixels: categorical maps (a few gray levels) are resized with nearest-neighbour (no
      invented levels), photographs with bicubic; images far from square are padded, not
      stretched;
    * resolution: fine defects need pixels (ELPV cracks: 192 px gave +3 points over 128 at
      equal epochs), so on a CPU 192 px for up to 5,000 images, 128 up to 30,000, else 64;
      224 on a GPU; never above the images' own size; categorical maps 64 px (nearest), on
      a CPU behind a max-pool stem, so they cost what 32 px without it costs (WM-811K, every
      label, 12 epochs: validation balanced accuracy 0.872 against 0.827 at 32 px; thin scratch
      patterns break when 187 px maps shrink to 32). But epochs matter more than pixels when
      the budget is short: on a CPU a photograph's input steps down (192 -> 160 -> 128) until
      the fine-tune's share of the budget gives at least ``MIN_FINETUNE_EPOCHS`` epochs (ELPV at
      the demo's budget: 128 px x 34 epochs beat 192 x 15 by 2 points of accuracy and 4 of
      macro-F1);
    * architecture: a BatchNorm ResNet (it learns far more per CPU-second than a ViT at
      this scale): 0.3 M parameters (16-128 channels) on a CPU, ResNet-18 on a GPU; for
      categorical maps 32-64-128 channels, two blocks a stage (max-pool stem on a CPU);
    * pretraining: SimCLR (it beat VICReg at equal budget on wafer maps; joint embedding
      beats MAE at small scale), steps from its share of the budget;
    * fine-tuning: epochs from its share of the budget (at least 15), 10 % of the labels
      held out (stratified) to keep the best epoch, patience half the epochs (a cosine
      schedule improves most at its end, and a small validation split is noisy: a quarter
      stopped an ELPV demo fine-tune at epoch 10 of 28, keeping epoch 3), EMA, dihedral
      augmentation and TTA for near-square images, AdamW for small sets and SGD with
      Nesterov momentum past 20,000 labels, and per-class logit offsets fitted on the
      validation split for ``metric`` (the gate's). No class weights in the loss: the offsets
      already move the decision rule toward the rare classes after training, and weights on
      top of them pushed it too far (they collapsed WM-811K fine-tunes on 623 labels);
    * photographs are standardized image by image inside the model (categorical maps are not).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    gpu = device == "cuda"
    budget = float(budget_minutes) if budget_minutes else (60.0 if gpu else 20.0)
    if budget <= 0:
        raise ValueError(f"budget_minutes must be > 0, got {budget_minutes}")
    reasons = [f"data: {profile.describe()}; device {device}" + ("" if gpu else f", {threads} thread(s)")
               + f"; budget {budget:g} min for {'pretraining and ' if pretrain else ''}{finetune_runs} fine-tune run(s)"]

    # pixels
    resample = "nearest" if profile.categorical else "bicubic"
    aspect = "pad" if profile.median_aspect > 1.25 else "stretch"
    reasons.append(f"{resample} resampling: " + ("categorical pixel values must stay categorical" if profile.categorical
                                                 else "photographic pixels (bicubic averages when shrinking)"))
    reasons.append(f"aspect {aspect}: median aspect ratio {profile.median_aspect:.2f}")
    native = max(16, profile.median_short_side)
    if profile.categorical:
        size = 64
        why = "categorical maps: coarse structure, small input" + ("" if gpu else " (max-pool stem: 32 px cost)")
    elif gpu:
        size, why = 224, "GPU"
    else:
        n = profile.n_images
        size = 192 if n <= 5000 else 128 if n <= 30000 else 64
        why = f"{n} images on a CPU"
    if size > native and profile.categorical:
        # Nearest-neighbour upscaling keeps a map's values; shrinking 27 px wafer maps to 16 px
        # (the cap below) erased thin scratch patterns.
        why = f"{why}; maps of {native} px upscaled (nearest keeps their values)"
    elif size > native:
        size, why = max(16, native // 16 * 16 or native), f"{why}, capped at the images' own size"

    # budget shares
    pre_share = PRETRAIN_SHARE if pretrain else 0.0
    pre_minutes = budget * pre_share
    ft_minutes = budget * (1 - pre_share) / max(1, finetune_runs)
    n_labels = profile.n_labels or profile.n_images
    n_train = int(0.75 * 0.9 * n_labels)  # after the test split and the validation split

    # architecture (and, on a CPU, the input a short budget can afford)
    input_norm = "dataset" if profile.categorical else "image"

    def network(side: int) -> ResNetConfig:
        if gpu:
            return ResNetConfig.resnet18(side, stem_kernel=7 if side >= 128 else 3, stem_pool=stem_pool(side, False),
                                         input_norm=input_norm)
        if profile.categorical:
            return ResNetConfig(img_size=side, layers=(2, 2, 2), widths=(32, 64, 128), stem_kernel=3,
                                stem_pool=stem_pool(side, True, device))
        return ResNetConfig(img_size=side, layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_kernel=3,
                            stem_pool=stem_pool(side, False, device), input_norm=input_norm)

    def epochs_at(side: int) -> float:
        return ft_minutes * 60 * _images_per_s(network(side), device, threads) / max(n_train, 1)

    if not gpu and not profile.categorical and size > 128:
        tried = []
        for side in [s for s in (192, 160, 128) if s <= size]:
            affordable = epochs_at(side)
            tried.append(f"{side} px {affordable:.0f}")
            if affordable >= MIN_FINETUNE_EPOCHS or side == 128:
                break
        if side < size:
            why = (f"{why}, stepped down to {side} px for the budget: fine-tune epochs it affords "
                   f"{', '.join(tried)} (at least {MIN_FINETUNE_EPOCHS} wanted; more epochs beat more pixels "
                   f"when time is short)")
            size = side
    reasons.append(f"input {size} px: {why}")
    preprocess = Preprocess(size, resample, aspect)
    backbone = network(size)
    if gpu:
        reasons.append("backbone ResNet-18 (GPU)")
    elif profile.categorical:
        reasons.append("backbone ResNet 32-64-128, 2 blocks a stage, stride-2 stem"
                       + (" and max-pool" if backbone.stem_pool else "") + " (0.7 M parameters; wafer maps)")
    else:
        reasons.append("backbone ResNet 16-32-64-128 (0.3 M parameters: learns most per CPU-second)"
                       + (", max-pool stem" if size >= 128 else ""))
    if input_norm == "image":
        reasons.append("each image standardized to zero mean, unit variance inside the model (photographs: "
                       "exposure and gain vary from image to image)")
    rate = _images_per_s(backbone, device, threads)
    batch = 256 if gpu else 64
    pre_steps = max(20, int(pre_minutes * 60 * rate / (2 * batch)))  # two views an image
    pretrain_cfg = PretrainConfig(method="simclr", backbone=backbone, steps=pre_steps, batch_size=batch,
                                  lr=2e-3 if not gpu else 3e-3, warmup_steps=max(1, pre_steps // 10),
                                  weight_decay=1e-4 if gpu else 0.05, betas=(0.9, 0.999), temperature=0.2,
                                  proj_hidden_dim=512, proj_dim=128,
                                  augment=Augment.joint_embedding(rot90=aspect == "stretch"),
                                  max_seconds=pre_minutes * 60 * 1.5 if pretrain else None)
    reasons.append(f"pretraining simclr {pre_steps} steps of {batch} (~{pre_minutes:.1f} min at an estimated "
                   f"{rate:.0f} images/s)")

    epochs = int(min(200, max(15, epochs_at(size))))
    large = n_labels > 20000
    dihedral = aspect == "stretch"
    augment = Augment.dihedral() if dihedral else Augment.dihedral(rot90=False)
    common = dict(epochs=epochs, batch_size=128 if large else 64, augment=augment, val_fraction=0.1,
                  patience=max(10, epochs // 2), class_balance="none", ema_decay=0.0 if large else 0.995,
                  tta="dihedral" if dihedral else "none", warmup_epochs=1.0 if epochs >= 10 else 0.5,
                  drop_path=0.0, label_smoothing=0.1, device=device, class_offsets=metric,
                  max_seconds=ft_minutes * 60 * 1.5)
    optim = (dict(optimizer="sgd", lr=0.1, weight_decay=5e-4) if large
             else dict(optimizer="adamw", lr=2e-3, weight_decay=0.05))
    reasons.append(f"fine-tune {epochs} epochs (~{ft_minutes:.1f} min a fine-tune), {optim['optimizer']} "
                   f"({'over 20,000 labels' if large else 'small label set'}), best epoch on a 10 % validation split, "
                   f"{'dihedral augmentation and TTA' if dihedral else 'flips only (not square)'}, "
                   f"class offsets for {metric} fitted on the validation split")
    if profile.imbalance is not None and profile.imbalance >= 3:
        reasons.append(f"class imbalance {profile.imbalance:.1f}:1 over {n_labels} labels: handled by the class "
                       f"offsets for {metric}, not by loss weights")
    adapt = {m: AdaptConfig(method=m, **common, **optim) for m in ("finetune", "lora")}
    adapt["probe"] = AdaptConfig(method="probe", device=device)
    adapt["prototype"] = AdaptConfig(method="prototype", device=device)
    adapt["svm"] = AdaptConfig(method="svm", tta="dihedral" if dihedral else "flips", device=device)
    return ResolvedRecipe(AUTO, preprocess, pretrain_cfg, adapt, reasons, profile, budget)


def describe_recipes() -> list[dict]:
    """Each named recipe as plain data: name, summary, pretraining methods (default first) with
    their architecture and steps, adaptation methods with their epochs, the methods a pipeline
    sweeps by default; ``auto`` first."""
    rows = [{"name": AUTO, "summary": "chosen from the data and the device (the default): input size, "
                                      "resampling and aspect from the images, a ResNet sized for the device, "
                                      "SimCLR steps and fine-tune epochs from --budget-minutes",
             "pretrain": {}, "adapt": {}, "methods": list(recipe_methods(AUTO))}]
    for r in RECIPES.values():
        resolved = {m: resolve_recipe(r.name, method=m) for m in r.pretrain}
        rows.append({"name": r.name, "summary": r.summary, "methods": list(r.methods),
                     "pretrain": {m: {"steps": c.pretrain.steps, "batch_size": c.pretrain.batch_size,
                                      "img_size": c.backbone.img_size, "family": family_of(c.backbone),
                                      "embed_dim": c.backbone.embed_dim,
                                      "depth": getattr(c.backbone, "depth", len(getattr(c.backbone, "layers", ())))}
                                  for m, c in resolved.items()},
                     "adapt": {m: {"epochs": adapt_config(m, r.name).epochs} for m in ADAPT_METHODS
                               # a descriptor backbone is fitted, not trained: no fine-tune or LoRA for it
                               if m not in TRAINED_METHODS or "codebook" not in r.pretrain}})
    return rows


def recipe_for_run(name: str, profile: DataProfile | None, *, budget_minutes: float | None = None,
                   finetune_runs: int = 1, pretrain: bool = True, method: str | None = None,
                   steps: int | None = None, seed: int = 0, device: str = "auto",
                   threads: int | None = None, metric: str = DEFAULT_GATE_METRIC) -> tuple[ResolvedRecipe, dict]:
    """What a flow calls at its start: set the CPU threads for this run (see
    components/training/device.py: cpu_threads), then resolve the recipe for this device.
    Returns the recipe and the runtime record (threads, OpenMP wait policy, device)."""
    from components.training.device import cpu_threads, pick_device

    runtime = cpu_threads(threads)
    dev = pick_device(device).type
    runtime["device"] = dev
    auto = dict(device=dev, threads=runtime["threads"], budget_minutes=budget_minutes,
                finetune_runs=finetune_runs, pretrain=pretrain, metric=metric) if name == AUTO else {}
    return resolve_recipe(name, profile, method=method, steps=steps, seed=seed, **auto), runtime


# ------------------------------------------------------------------------------ sequential (tokenizer + causal transformer)


def sequential_recipe(name: str, tokenizer: TokenizerConfig, preprocess: Preprocess, *, steps: int | None = None,
                      seed: int = 0, device: str = "auto", sentence_length: int = 1) -> ResolvedRecipe:
    """Sequential pretraining over a registered tokenizer's tokens: the input is the tokenizer's
    (its size and preprocessing); ``tiny`` is a seconds-long run for tests (width 32, 2 blocks,
    30 steps), every other recipe (``auto``, ``demo``) a width-128, 4-block transformer for
    1,000 steps of 64 images. ``sentence_length`` K > 1 trains on visual sentences of K images
    (components/models/sequential.py); a step still sees the same number of images (and tokens).
    Adaptation configs are the recipe's own (``auto``: its defaults)."""
    if name != AUTO:
        get_recipe(name)  # an unknown name fails with the list
    tiny = name in ("tiny", "tiny-cnn")
    shape = dict(embed_dim=32, depth=2, num_heads=2) if tiny else dict(embed_dim=128, depth=4, num_heads=4)
    knobs = (dict(steps=30, batch_size=16, lr=2e-3, warmup_steps=5, device="cpu") if tiny
             else dict(steps=1000, batch_size=64, lr=1e-3, warmup_steps=50, device=device))
    cfg = PretrainConfig(method="sequential",
                         backbone=SequentialConfig(tokenizer=tokenizer, sentence_length=sentence_length, **shape),
                         weight_decay=0.05, betas=(0.9, 0.95), grad_clip=1.0, seed=seed,
                         augment=Augment.dihedral(rot90=False), **{**knobs, **({"steps": steps} if steps else {})})
    adapt = {m: replace(tiny_adapt(m) if tiny else AdaptConfig(method=m, device=device), seed=seed)
             for m in ADAPT_METHODS}
    reasons = [f"sequential: the tokenizer's input ({preprocess.describe()}, {tokenizer.num_tokens} tokens of "
               f"{tokenizer.codebook_size} codes); {'tiny test shape' if tiny else 'width 128, 4 blocks'}; "
               "flips only (crops would change what the tokens mean)"]
    if sentence_length > 1:
        reasons.append(f"visual sentences of {sentence_length} images ({sentence_length * (tokenizer.num_tokens + 1)} "
                       f"positions), {knobs['batch_size'] // sentence_length} sentences a step")
    return ResolvedRecipe(name, preprocess, cfg, adapt, reasons)


def sequential_recipe_for_run(name: str, tokenizer: TokenizerConfig, preprocess: Preprocess, *,
                              steps: int | None = None, seed: int = 0, device: str = "auto",
                              threads: int | None = None, sentence_length: int = 1) -> tuple[ResolvedRecipe, dict]:
    """:func:`recipe_for_run` for sequential pretraining: set the CPU threads, pick the device,
    then :func:`sequential_recipe`."""
    from components.training.device import cpu_threads, pick_device

    runtime = cpu_threads(threads)
    runtime["device"] = pick_device(device).type
    return sequential_recipe(name, tokenizer, preprocess, steps=steps, seed=seed, device=runtime["device"],
                             sentence_length=sentence_length), runtime


# ------------------------------------------------------------------------------ meta-learning (reptile, maml)


def meta_config(method: str, recipe: str = "demo", seed: int = 0, n_way: int | None = None,
                k_shot: int | None = None, probe: AdaptConfig | None = None):
    """The recipe's meta-learning config for ``method`` (reptile or maml) with ``seed``: the
    episodes and loops of :mod:`components.training.meta`, then ``probe`` (default: the recipe's
    probe; the auto recipe's comes from the data, so flows pass it) as the final head."""
    from components.training.meta import META_METHODS, MetaConfig

    if method not in META_METHODS:
        raise ValueError(f"unknown meta-learning method {method!r} (methods: {', '.join(META_METHODS)})")
    probe = replace(probe, seed=seed) if probe is not None else adapt_config("probe", recipe, seed)
    loops = ({"meta_steps": 4, "meta_batch": 2, "inner_steps": 2, "eval_inner_steps": 3, "device": "cpu"}
             if recipe in ("tiny", "tiny-cnn") else {"meta_steps": 200, "meta_batch": 4, "inner_steps": 5, "eval_inner_steps": 10})
    shots = {k: v for k, v in (("n_way", n_way), ("k_shot", k_shot)) if v is not None}
    return MetaConfig(method=method, seed=seed, final="probe", final_adapt=probe, **{**loops, **shots})
