"""Flow `adapt`: adapt a backbone to a label snapshot (linear probe, fine-tuning, LoRA,
few-shot class prototypes, or meta-learning: Reptile / first-order MAML, then a probe) and
register the classifier with its lineage and its test metrics."""
from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.evaluation.metrics import evaluate_predictions
from components.evaluation.split import label_subset
from components.models.checkpoint import save_checkpoint
from components.orchestration.lineage import recorded_run
from components.settings import get_settings
from components.training.adapt import AdaptConfig, adapt, predict_proba
from components.training.meta import META_METHODS, MetaConfig, meta_adapt
from components.training.recipes import adapt_config, meta_config, pretrain_config
from flows.tasks import (
    load_backbone,
    load_labeled_set,
    register_model_version,
    resolve_label_snapshot,
    store_artifact,
)


@task(name="adapt-backbone", cache_policy=NO_CACHE)
def run_adapt(vit_cfg, state, images, labels, num_classes: int, cfg: AdaptConfig):
    return adapt(vit_cfg, state, images, labels, num_classes, cfg, progress=True)


@task(name="meta-adapt-backbone", cache_policy=NO_CACHE)
def run_meta_adapt(backbone_cfg, state, images, labels, num_classes: int, cfg: MetaConfig):
    return meta_adapt(backbone_cfg, state, images, labels, num_classes, cfg, progress=True)


@task(name="test-metrics", cache_policy=NO_CACHE)
def test_metrics(classifier, data, n_train: int) -> dict:
    proba = predict_proba(classifier, data.images[data.test_idx])
    metrics = evaluate_predictions(data.labels[data.test_idx], proba, len(data.classes))
    return {**metrics, "n_train": n_train, "n_test": int(len(data.test_idx))}


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
    cfg = meta_config(method, recipe, seed) if method in META_METHODS else adapt_config(method, recipe, seed)
    params = {"dataset": dataset, "backbone": backbone, "method": method, "fraction": fraction, "seed": seed,
              "recipe": recipe, "adapt": asdict(cfg)}
    with recorded_run(settings, "adapt", params) as run_id:
        version, snapshot = resolve_label_snapshot(settings, dataset, dataset_version, snapshot_version)
        parent, vit_cfg, state = load_backbone(settings, backbone, pretrain_config(recipe).vit)
        params["img_size"] = vit_cfg.img_size
        data = load_labeled_set(settings, dataset, version, snapshot, vit_cfg.img_size)
        subset = label_subset(data.train_idx, data.labels, fraction, seed)
        if method in META_METHODS:  # episodes from the same labeled subset, then the real task's head
            classifier, meta = run_meta_adapt(vit_cfg, state, data.images[subset], data.labels[subset],
                                              len(data.classes), cfg)
            params["meta_training"] = meta.summary()
            params["baseline_method"] = cfg.final  # what the gate adapts the baselines with
        else:
            classifier = run_adapt(vit_cfg, state, data.images[subset], data.labels[subset], len(data.classes), cfg)
        metrics = test_metrics(classifier, data, int(len(subset)))
        checkpoint = save_checkpoint({"kind": "classifier", "vit_config": vit_cfg.to_dict(),
                                      "classes": data.classes, "classifier": classifier.state()})
        stored = store_artifact(settings, checkpoint, "checkpoints", f"{model_name}.pt")
        model_version = register_model_version(settings, model_name, "classifier", stored, run_id=run_id,
                                               dataset_version=version, snapshot=snapshot, parent=parent,
                                               params=params, metrics=metrics)
    accuracy = metrics["accuracy"]
    print(f"adapt: {model_name} v{model_version.version} ({backbone} + {method}, {fraction:.0%} labels = "
          f"{len(subset)} images): test accuracy {accuracy['value']:.3f} "
          f"[{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}]")
    return {"model": model_name, "version": model_version.version, "model_version_id": model_version.id,
            "metrics": metrics}
