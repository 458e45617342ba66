"""Flow `adapt`: adapt a backbone to a label snapshot (linear probe, fine-tuning, LoRA or
few-shot class prototypes) and register the classifier with its lineage and its test metrics."""
from __future__ import annotations

from dataclasses import asdict, replace

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.evaluation.metrics import evaluate_predictions
from components.evaluation.split import label_subset, test_split
from components.orchestration.lineage import code_revision, current_flow_run_id, recorded_run
from components.models.vit import ViTConfig
from components.registry import refs, writes
from components.registry.refs import SCRATCH
from components.registry.db import session_scope
from components.settings import get_settings
from components.training.adapt import METHODS, AdaptConfig, adapt, predict_proba
from components.training.checkpoint import load_checkpoint, save_checkpoint
from flows.pretrain import pretrain_recipe, resolve_model
from flows.tasks import load_artifact, load_labeled_set, store_artifact



def adapt_recipe(method: str, recipe: str = "demo", seed: int = 0) -> AdaptConfig:
    """A named AdaptConfig preset, e.g. method 'probe' + recipe 'demo' -> AdaptConfig.demo_probe()."""
    if method not in METHODS:
        raise ValueError(f"unknown adaptation method {method!r} (methods: {', '.join(METHODS)})")
    per_method = getattr(AdaptConfig, f"{recipe}_{method}", None)
    shared = getattr(AdaptConfig, recipe, None)
    if callable(per_method):
        cfg = per_method()
    elif callable(shared) and not recipe.startswith("_") and recipe not in ("to_dict",):
        cfg = shared(method=method)
    else:
        raise ValueError(f"unknown adaptation recipe {recipe!r}")
    return replace(cfg, seed=seed)


@task(name="resolve-label-snapshot", cache_policy=NO_CACHE)
def resolve_snapshot(settings, dataset: str, dataset_version: int | None, snapshot_version: int | None):
    with session_scope(settings) as session:
        return refs.resolve_label_snapshot(session, dataset, dataset_version, snapshot_version)


def load_backbone(settings, ref: str, recipe: str):
    """(model version or None, ViTConfig, state dict or None) for a backbone reference;
    'scratch' is a randomly initialised backbone with the recipe's architecture."""
    if ref == SCRATCH:
        return None, pretrain_recipe(recipe).vit, None
    model_version = resolve_model(settings, ref)
    checkpoint = load_checkpoint(load_artifact(settings, model_version.artifact_uri, model_version.sha256))
    return model_version, ViTConfig.from_dict(checkpoint["vit_config"]), checkpoint["state_dict"]


@task(name="adapt-backbone", cache_policy=NO_CACHE)
def run_adapt(vit_cfg, state, images, labels, num_classes: int, cfg: AdaptConfig):
    return adapt(vit_cfg, state, images, labels, num_classes, cfg, progress=True)


@task(name="register-classifier", cache_policy=NO_CACHE)
def register_classifier(settings, model_name, version, snapshot, parent, run_id, params, metrics, stored):
    with session_scope(settings) as session:
        writes.get_or_create_model(session, model_name, kind="classifier")
        return writes.add_model_version(
            session, model_name=model_name, dataset_version_id=version.id, label_snapshot_id=snapshot.id,
            parent_id=parent.id if parent else None, run_id=run_id, flow_run_id=current_flow_run_id(),
            code_revision=code_revision(), params=params, metrics=metrics,
            artifact_uri=stored.uri, sha256=stored.sha256)


@flow(name="adapt", log_prints=True)
def adapt_flow(dataset: str, backbone: str | None = None, method: str = "probe", fraction: float = 1.0,
               seed: int = 0, recipe: str = "demo", dataset_version: int | None = None,
               snapshot_version: int | None = None, model_name: str | None = None) -> dict:
    """Adapt `backbone` (a registered backbone ref like 'elpv-mae', 'elpv-mae:2', or 'scratch')
    with `fraction` of the snapshot's training labels; evaluate on its fixed test split."""
    settings = get_settings()
    backbone = backbone or f"{dataset}-mae"
    model_name = model_name or f"{dataset}-classifier"
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    cfg = adapt_recipe(method, recipe, seed)
    params = {"dataset": dataset, "backbone": backbone, "method": method, "fraction": fraction, "seed": seed,
              "recipe": recipe, "adapt": asdict(cfg)}
    with recorded_run(settings, "adapt", params) as run_id:
        version, snapshot = resolve_snapshot(settings, dataset, dataset_version, snapshot_version)
        parent, vit_cfg, state = load_backbone(settings, backbone, recipe)
        params["img_size"] = vit_cfg.img_size
        data = load_labeled_set(settings, dataset, version, snapshot, vit_cfg.img_size)
        train_idx, test_idx = test_split(data.image_sha256, data.labels)
        subset = label_subset(train_idx, data.labels, fraction, seed)
        num_classes = len(data.classes)
        classifier = run_adapt(vit_cfg, state, data.images[subset], data.labels[subset], num_classes, cfg)
        proba = predict_proba(classifier, data.images[test_idx])
        metrics = evaluate_predictions(data.labels[test_idx], proba, num_classes)
        metrics.update(n_train=int(len(subset)), n_test=int(len(test_idx)))
        checkpoint = save_checkpoint({"kind": "classifier", "vit_config": vit_cfg.to_dict(),
                                      "classes": data.classes, "classifier": classifier.state()})
        stored = store_artifact(settings, checkpoint, "checkpoints", f"{model_name}.pt")
        model_version = register_classifier(settings, model_name, version, snapshot, parent, run_id,
                                            params, metrics, stored)
    accuracy = metrics["accuracy"]
    print(f"adapt: {model_name} v{model_version.version} ({backbone} + {method}, {fraction:.0%} labels = "
          f"{len(subset)} images): test accuracy {accuracy['value']:.3f} "
          f"[{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}]")
    return {"model": model_name, "version": model_version.version, "model_version_id": model_version.id,
            "metrics": metrics}
