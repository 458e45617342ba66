"""Named training recipes: one table of presets, listed by `dlvm recipes`.

A recipe is what a user picks with ``--recipe``: a pretraining config for each
self-supervised method it supports (the first is its default) and an adaptation config
for each adaptation method. Every preset is built and validated by the test suite, and an
unknown name fails with the list of known ones; nothing is looked up by reflection.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from components.models.vit import ViTConfig
from components.training.adapt import METHODS as ADAPT_METHODS
from components.training.adapt import AdaptConfig
from components.training.augment import Augment
from components.training.pretrain import PretrainConfig

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
        vit=ViTConfig(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool="avg"),
        steps=30, batch_size=16, lr=2e-3, warmup_steps=5, decoder_dim=32, decoder_depth=1, decoder_heads=2,
        dino_out_dim=64, dino_hidden_dim=64, dino_bottleneck_dim=32, device="cpu",
    )
    return PretrainConfig(**{**base, **kw})


def tiny_dino_pretrain(**kw) -> PretrainConfig:
    return tiny_pretrain(**{"method": "dino", "grad_clip": 3.0, **kw})


def tiny_adapt(method: str = "probe", **kw) -> AdaptConfig:
    """Seconds-long adaptation settings for tests."""
    return AdaptConfig(**{"method": method, "epochs": 2, "batch_size": 16, "probe_folds": 3, "device": "cpu", **kw})


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    pretrain: Mapping[str, Callable[[], PretrainConfig]]  # by SSL method; the first is the default
    adapt: Callable[[str], AdaptConfig]  # adaptation method -> its config

    @property
    def default_method(self) -> str:
        return next(iter(self.pretrain))


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("demo", "CPU demo: ViT-Ti/8 at 64 px, MAE 1,000 steps (~7 min on 2 cores) or DINO 300 steps; "
                   "4-epoch fine-tune and LoRA",
           pretrain={"mae": demo_pretrain, "dino": demo_dino_pretrain}, adapt=demo_adapt),
    Recipe("tiny", "seconds-long runs for tests and smoke checks (32 px, 2 blocks, 30 steps)",
           pretrain={"mae": tiny_pretrain, "dino": tiny_dino_pretrain}, adapt=tiny_adapt),
)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r} (recipes: {', '.join(RECIPES)}; see `dlvm recipes`)")
    return RECIPES[name]


def pretrain_config(recipe: str, method: str | None = None, steps: int | None = None, seed: int = 0) -> PretrainConfig:
    """The recipe's pretraining config for ``method`` (default: the recipe's own), with ``steps`` and ``seed``."""
    r = get_recipe(recipe)
    method = method or r.default_method
    if method not in r.pretrain:
        raise ValueError(f"recipe {recipe!r} has no {method!r} pretraining (it has {', '.join(r.pretrain)})")
    cfg = replace(r.pretrain[method](), seed=seed)
    return replace(cfg, steps=steps) if steps else cfg


def adapt_config(method: str, recipe: str = "demo", seed: int = 0) -> AdaptConfig:
    """The recipe's adaptation config for ``method`` with ``seed``."""
    if method not in ADAPT_METHODS:
        raise ValueError(f"unknown adaptation method {method!r} (methods: {', '.join(ADAPT_METHODS)})")
    return replace(get_recipe(recipe).adapt(method), seed=seed)


def describe_recipes() -> list[dict]:
    """Each recipe as plain data: name, summary, pretraining methods (default first) with their
    architecture and steps, adaptation methods with their epochs."""
    rows = []
    for r in RECIPES.values():
        pre = {m: pretrain_config(r.name, m) for m in r.pretrain}
        rows.append({"name": r.name, "summary": r.summary,
                     "pretrain": {m: {"steps": c.steps, "batch_size": c.batch_size, "img_size": c.vit.img_size,
                                      "embed_dim": c.vit.embed_dim, "depth": c.vit.depth} for m, c in pre.items()},
                     "adapt": {m: {"epochs": adapt_config(m, r.name).epochs} for m in ADAPT_METHODS}})
    return rows


# ------------------------------------------------------------------------------ meta-learning (reptile, maml)


def meta_config(method: str, recipe: str = "demo", seed: int = 0, n_way: int | None = None,
                k_shot: int | None = None):
    """The recipe's meta-learning config for ``method`` (reptile or maml) with ``seed``: the
    episodes and loops of :mod:`components.training.meta`, then the recipe's probe as the final head."""
    from components.training.meta import META_METHODS, MetaConfig

    if method not in META_METHODS:
        raise ValueError(f"unknown meta-learning method {method!r} (methods: {', '.join(META_METHODS)})")
    probe = adapt_config("probe", recipe, seed)
    loops = ({"meta_steps": 4, "meta_batch": 2, "inner_steps": 2, "eval_inner_steps": 3, "device": "cpu"}
             if recipe == "tiny" else {"meta_steps": 200, "meta_batch": 4, "inner_steps": 5, "eval_inner_steps": 10})
    shots = {k: v for k, v in (("n_way", n_way), ("k_shot", k_shot)) if v is not None}
    return MetaConfig(method=method, seed=seed, final="probe", final_adapt=probe, **{**loops, **shots})
