"""Flow `pretrain`: self-supervised pretraining (MAE or DINO) of a ViT backbone on a dataset
version's unlabeled images, registered as a backbone model version. A crashed run rerun with
the same parameters resumes from its last checkpoint (kept under the state directory until
the backbone is registered)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from dataclasses import asdict, replace

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.orchestration.lineage import code_revision, current_flow_run_id, recorded_run
from components.registry import refs, writes
from components.registry.db import session_scope
from components.settings import get_settings
from components.training.checkpoint import load_checkpoint, save_checkpoint
from components.training.launch import pretrain_in_processes
from components.training.pretrain import RUNTIME_FIELDS, PretrainConfig
from flows.tasks import load_artifact, load_dataset_images, store_artifact
from flows.labels import resolve_dataset_version


def pretrain_recipe(recipe: str, steps: int | None = None, seed: int = 0, method: str | None = None) -> PretrainConfig:
    """A named PretrainConfig preset ('demo', 'demo_dino', 'tiny', ...), optionally with other steps/seed/method."""
    def preset(name: str):
        make = getattr(PretrainConfig, name, None)
        cfg = make() if not name.startswith("_") and callable(make) and name not in ("from_dict", "to_dict") else None
        return cfg if isinstance(cfg, PretrainConfig) else None

    cfg = preset(recipe)
    if cfg is None:
        raise ValueError(f"unknown pretraining recipe {recipe!r}")
    if method and method != cfg.method:
        # Each method has its own tuned preset: 'demo' + dino -> 'demo_dino'.
        cfg = preset(f"{recipe}_{method}")
        if cfg is None:
            raise ValueError(f"recipe {recipe!r} has no {method!r} variant (no preset {recipe}_{method})")
    cfg = replace(cfg, seed=seed)
    return replace(cfg, steps=steps) if steps else cfg


def resume_path(settings, version, cfg: PretrainConfig, parent) -> Path:
    """Where this exact run (data, config, starting weights) keeps its resume checkpoint."""
    recipe = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    key = json.dumps({"dataset_version": version.id, "recipe": recipe, "init": parent.sha256 if parent else None},
                     sort_keys=True, default=str)
    return settings.home / "resume" / f"pretrain-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


@task(name="resolve-model-version", cache_policy=NO_CACHE)
def resolve_model(settings, ref: str):
    with session_scope(settings) as session:
        return refs.resolve_model_version(session, ref)


@task(name="ssl-pretrain", cache_policy=NO_CACHE)
def run_pretrain(images, cfg: PretrainConfig, init_state: dict | None, checkpoint: Path, processes: int):
    return pretrain_in_processes(images, cfg, processes, progress=True, init_encoder_state=init_state,
                                 checkpoint_path=checkpoint)


@task(name="register-backbone", cache_policy=NO_CACHE)
def register_backbone(settings, model_name: str, version, parent, run_id: int, cfg, result, stored):
    with session_scope(settings) as session:
        writes.get_or_create_model(session, model_name, kind="backbone")
        return writes.add_model_version(
            session, model_name=model_name, dataset_version_id=version.id, label_snapshot_id=None,
            parent_id=parent.id if parent else None, run_id=run_id, flow_run_id=current_flow_run_id(),
            code_revision=code_revision(), params={"recipe": asdict(cfg)},
            metrics={"final_loss": float(result.losses[-1]), "seconds": round(result.seconds, 1),
                     "images_per_s": round(result.images_per_s, 1)},
            artifact_uri=stored.uri, sha256=stored.sha256)


@flow(name="pretrain", log_prints=True)
def pretrain_flow(dataset: str, dataset_version: int | None = None, recipe: str = "demo",
                  steps: int | None = None, seed: int = 0, model_name: str | None = None,
                  init_from: str | None = None, method: str | None = None, processes: int = 1) -> dict:
    """Pretrain a backbone on `dataset` (latest version by default). `init_from` names a
    registered backbone to continue from (e.g. a generic one: transductive adaptation);
    `processes` > 1 runs data-parallel under torchrun (one GPU each on a GPU machine)."""
    settings = get_settings()
    cfg = pretrain_recipe(recipe, steps, seed, method)
    model_name = model_name or f"{dataset}-{cfg.method}"
    params = {"dataset": dataset, "dataset_version": dataset_version, "recipe": recipe, "method": cfg.method,
              "steps": cfg.steps, "seed": seed, "model_name": model_name, "init_from": init_from,
              "processes": processes}
    with recorded_run(settings, "pretrain", params) as run_id:
        version = resolve_dataset_version(settings, dataset, dataset_version)
        parent, init_state = None, None
        if init_from:
            parent = resolve_model(settings, init_from)
            init_state = load_checkpoint(load_artifact(settings, parent.artifact_uri, parent.sha256))["state_dict"]
        _, images = load_dataset_images(settings, dataset, version, cfg.vit.img_size)
        checkpoint = resume_path(settings, version, cfg, parent)
        result = run_pretrain(images, cfg, init_state, checkpoint, processes)
        backbone = save_checkpoint({"kind": "backbone", "vit_config": cfg.vit.to_dict(),
                                    "state_dict": result.encoder_state})
        stored = store_artifact(settings, backbone, "checkpoints", f"{model_name}.pt")
        model_version = register_backbone(settings, model_name, version, parent, run_id, cfg, result, stored)
        checkpoint.unlink(missing_ok=True)  # registered: nothing left to resume
    resumed = f" (resumed at step {result.resumed_from_step})" if result.resumed_from_step else ""
    print(f"pretrain: {model_name} v{model_version.version} on {dataset} v{version.version}: "
          f"{cfg.steps} steps in {result.seconds:.0f} s, final loss {result.losses[-1]:.4f}{resumed}")
    return {"model": model_name, "version": model_version.version, "model_version_id": model_version.id,
            "seconds": result.seconds, "final_loss": float(result.losses[-1])}
