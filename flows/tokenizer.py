"""Flow `tokenizer-train`: a visual tokenizer (FSQ autoencoder, components/models/tokenizer.py)
trained on a dataset's unlabeled images and registered as a model of kind `tokenizer`, with
its lineage (dataset version) and what it is worth: PSNR of the reconstructions of held-out
images and the share of its codebook they use. Sequential pretraining
(`dlvm pretrain --method sequential --tokenizer NAME`) reads images through it. A crashed run
rerun with the same parameters resumes from its last checkpoint."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.models.checkpoint import save_checkpoint
from components.names import check_dataset, check_model
from components.orchestration.lineage import recorded_run
from components.settings import get_settings
from components.training.device import cpu_threads, pick_device
from components.training.recipes import AUTO
from components.training.resume import resume_path
from components.training.tokenizer import (
    TokenizerTrainConfig,
    evaluate_tokenizer,
    holdout_split,
    load_tokenizer,
    tokenizer_recipe,
    train_tokenizer,
)
from flows.tasks import (
    load_dataset_images,
    profile_dataset,
    register_model_version,
    resolve_dataset_version,
    store_artifact,
)


@task(name="train-tokenizer", cache_policy=NO_CACHE)
def run_train_tokenizer(images, cfg: TokenizerTrainConfig, checkpoint: Path):
    return train_tokenizer(images, cfg, progress=True, checkpoint_path=checkpoint)


@task(name="measure-tokenizer", cache_policy=NO_CACHE)
def measure_tokenizer(checkpoint: dict, images) -> dict:
    return evaluate_tokenizer(load_tokenizer(checkpoint), images)


@flow(name="tokenizer-train", log_prints=True)
def tokenizer_train_flow(dataset: str, dataset_version: int | None = None, recipe: str = AUTO,
                         steps: int | None = None, seed: int = 0, model_name: str | None = None,
                         img_size: int | None = None) -> dict:
    """Train a visual tokenizer on `dataset` (latest version by default); a seeded share of
    the images is held out to measure it."""
    check_dataset(dataset)
    if model_name is not None:
        check_model(model_name)
    settings = get_settings()
    runtime = cpu_threads(None)
    runtime["device"] = pick_device("auto").type
    version = resolve_dataset_version(settings, dataset, dataset_version)
    profile = profile_dataset(settings, dataset, version)
    cfg, pre, reasons = tokenizer_recipe(recipe, profile.categorical, img_size=img_size, steps=steps, seed=seed,
                                         device=runtime["device"])
    print("\n".join(reasons))
    model_name = model_name or f"{dataset}-tokenizer"
    params = {"dataset": dataset, "dataset_version": version.version, "recipe": recipe, "steps": cfg.steps,
              "seed": seed, "model_name": model_name, "config": cfg.to_dict(), "preprocess": pre.to_dict(),
              "runtime": runtime}
    with recorded_run(settings, "tokenizer-train", params) as run_id:
        _, images = load_dataset_images(settings, dataset, version, pre)
        train_idx, heldout_idx = holdout_split(len(images), cfg.holdout_fraction, cfg.seed)
        checkpoint = resume_path(settings.home, version.id, cfg, None, kind="tokenizer")
        result = run_train_tokenizer(images[train_idx], cfg, checkpoint)
        tokenizer = {"kind": "tokenizer", "tokenizer_config": cfg.tokenizer.to_dict(), "preprocess": pre.to_dict(),
                     "state_dict": result.state}
        measured = measure_tokenizer(tokenizer, images[heldout_idx])
        stored = store_artifact(settings, save_checkpoint(tokenizer), "checkpoints", f"{model_name}.pt")
        metrics = {"psnr": measured["psnr"], "codebook_usage": measured["codebook_usage"],
                   "code_perplexity": measured["code_perplexity"], "n_heldout": measured["n_images"],
                   "final_loss": round(result.losses[-1], 5), "seconds": round(result.seconds, 1),
                   "images_per_s": round(result.images_per_s, 1)}
        model_version = register_model_version(
            settings, model_name, "tokenizer", stored, run_id=run_id, dataset_version=version,
            params={"recipe": cfg.to_dict(), "recipe_name": recipe, "preprocess": pre.to_dict(),
                    "recipe_reasons": reasons, "runtime": runtime, "n_train": int(len(train_idx))},
            metrics=metrics)
        checkpoint.unlink(missing_ok=True)  # registered: nothing left to resume
    t = cfg.tokenizer
    resumed = f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step else ""
    print(f"tokenizer: {model_name} v{model_version.version} on {dataset} v{version.version}: "
          f"{len(result.losses)} of {cfg.steps} steps in {result.seconds:.0f} s{resumed}; held-out "
          f"{measured['n_images']} images: PSNR {measured['psnr']:.2f} dB, codebook usage "
          f"{measured['codebook_usage']:.1%} of {t.codebook_size} codes (perplexity {measured['code_perplexity']:.1f})")
    return {"model": model_name, "version": model_version.version, "model_version_id": model_version.id,
            "metrics": metrics}
