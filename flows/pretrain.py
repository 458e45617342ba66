"""Flow `pretrain`: self-supervised pretraining (SimCLR or VICReg on any backbone; MAE or DINO
on a ViT; next-token prediction over a registered visual tokenizer's tokens: `sequential`) of a backbone on a dataset's images, registered as a backbone model version with
its architecture and input preprocessing. A crashed run rerun with the same parameters
resumes from its last checkpoint (kept under the state directory until the backbone is
registered)."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.models.backbones import config_to_dict, family_of
from components.models.checkpoint import save_checkpoint
from components.names import check_dataset, check_model, check_model_ref
from components.orchestration.lineage import recorded_run
from components.settings import get_settings
from components.training.launch import pretrain_in_processes
from components.training.pretrain import PretrainConfig
from components.training.recipes import AUTO, recipe_for_run, sequential_recipe_for_run
from components.training.resume import resume_path
from components.training.tokenizer import tokenizer_parts
from flows.tasks import (
    load_dataset_images,
    load_model_checkpoint,
    profile_dataset,
    register_model_version,
    resolve_dataset_version,
    resolve_model_version,
    store_artifact,
)


@task(name="ssl-pretrain", cache_policy=NO_CACHE)
def run_pretrain(images, cfg: PretrainConfig, init_state: dict | None, checkpoint: Path, processes: int):
    return pretrain_in_processes(images, cfg, processes, progress=True, init_encoder_state=init_state,
                                 checkpoint_path=checkpoint)


@flow(name="pretrain", log_prints=True)
def pretrain_flow(dataset: str, dataset_version: int | None = None, recipe: str = AUTO,
                  steps: int | None = None, seed: int = 0, model_name: str | None = None,
                  init_from: str | None = None, method: str | None = None, processes: int = 1,
                  budget_minutes: float | None = None, finetune_runs: int = 1, tokenizer: str | None = None,
                  sentence_length: int | None = None) -> dict:
    """Pretrain a backbone on `dataset` (latest version by default). `init_from` names a
    registered backbone to continue from (e.g. a generic one: transductive adaptation);
    `processes` > 1 runs data-parallel under torchrun (one GPU each on a GPU machine).
    With the `auto` recipe the architecture, input and steps come from the data's profile
    and `budget_minutes` (shared with `finetune_runs` later fine-tunes). `method='sequential'` takes
    `tokenizer`, a registered tokenizer (`dlvm tokenizer train`): its input and tokens; it is the
    backbone's parent in the registry; `sentence_length` K > 1 trains it on visual sentences of K
    images (one token sequence, next-token loss over the whole sentence; features stay per image)."""
    check_dataset(dataset)
    if model_name is not None:
        check_model(model_name)
    if init_from is not None:
        check_model_ref(init_from)
    if (method == "sequential") != (tokenizer is not None):
        raise ValueError("sequential pretraining needs --tokenizer MODEL (a tokenizer from `dlvm tokenizer train`), "
                         "and --tokenizer is only for --method sequential")
    if sentence_length is not None and method != "sequential":
        raise ValueError("--sentence-length is only for --method sequential (visual sentences of tokens)")
    if tokenizer is not None:
        check_model_ref(tokenizer)
        if init_from is not None:
            raise ValueError("sequential pretraining starts from its tokenizer; --init-from does not apply")
    settings = get_settings()
    version = resolve_dataset_version(settings, dataset, dataset_version)
    if tokenizer is not None:
        parent = resolve_model_version(settings, tokenizer)
        tokenizer_cfg, tokenizer_input, tokenizer_state = tokenizer_parts(load_model_checkpoint(settings, parent))
        resolved, runtime = sequential_recipe_for_run(recipe, tokenizer_cfg, tokenizer_input, steps=steps, seed=seed,
                                                      sentence_length=sentence_length or 1)
    else:
        profile = profile_dataset(settings, dataset, version) if recipe == AUTO else None
        resolved, runtime = recipe_for_run(recipe, profile, budget_minutes=budget_minutes,
                                           finetune_runs=finetune_runs, method=method, steps=steps, seed=seed)
    cfg = resolved.pretrain
    print(resolved.describe())
    print(f"pretrain: {runtime['threads']} torch thread(s), OMP_WAIT_POLICY={runtime['omp_wait_policy'] or 'unset'}, "
          f"device {runtime['device']}")
    model_name = model_name or f"{dataset}-{cfg.method}"
    architecture = config_to_dict(cfg.backbone)
    params = {"dataset": dataset, "dataset_version": version.version, "recipe": recipe, "method": cfg.method,
              "steps": cfg.steps, "seed": seed, "model_name": model_name, "init_from": init_from,
              "tokenizer": tokenizer, **({"sentence_length": sentence_length} if sentence_length else {}),
              "processes": processes, "budget_minutes": budget_minutes, "family": family_of(cfg.backbone),
              "architecture": architecture, "preprocess": resolved.preprocess.to_dict(), "runtime": runtime}
    with recorded_run(settings, "pretrain", params) as run_id:
        if tokenizer is not None:  # the backbone starts as the tokenizer and an untrained transformer
            init_state = tokenizer_state
        else:
            parent = resolve_model_version(settings, init_from) if init_from else None
            init_state = load_model_checkpoint(settings, parent)["state_dict"] if parent else None
        _, images = load_dataset_images(settings, dataset, version, resolved.preprocess)
        checkpoint = resume_path(settings.home, version.id, cfg, parent.sha256 if parent else None)
        result = run_pretrain(images, cfg, init_state, checkpoint, processes)
        backbone = save_checkpoint({"kind": "backbone", "backbone_config": architecture,
                                    "preprocess": resolved.preprocess.to_dict(), "state_dict": result.encoder_state})
        stored = store_artifact(settings, backbone, "checkpoints", f"{model_name}.pt")
        model_version = register_model_version(
            settings, model_name, "backbone", stored, run_id=run_id, dataset_version=version, parent=parent,
            params={"recipe": cfg.to_dict(), "recipe_name": recipe, "family": family_of(cfg.backbone),
                    "architecture": architecture, "preprocess": resolved.preprocess.to_dict(),
                    "recipe_reasons": resolved.reasons, "runtime": runtime},
            metrics={"final_loss": float(result.losses[-1]), "seconds": round(result.seconds, 1),
                     "images_per_s": round(result.images_per_s, 1)})
        checkpoint.unlink(missing_ok=True)  # registered: nothing left to resume
    resumed = f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step else ""
    print(f"pretrain: {model_name} v{model_version.version} on {dataset} v{version.version}: "
          f"{len(result.losses)} of {cfg.steps} steps in {result.seconds:.0f} s "
          f"({result.images_per_s:.0f} images/s), final loss {result.losses[-1]:.4f}{resumed}")
    return {"model": model_name, "version": model_version.version, "model_version_id": model_version.id,
            "seconds": result.seconds, "final_loss": float(result.losses[-1])}
