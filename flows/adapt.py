"""Flow `adapt`: adapt a backbone to a label snapshot (linear probe, fine-tuning, LoRA,
few-shot class prototypes, or meta-learning: Reptile / first-order MAML, then a probe) and
register the classifier with its lineage, its input preprocessing, its training record and
its test metrics."""
from __future__ import annotations

from dataclasses import replace

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.data.images import Preprocess
from components.evaluation.metrics import (
    DEFAULT_GATE_METRIC,
    check_metric,
    evaluate_predictions,
)
from components.evaluation.split import label_subset
from components.models.backbones import config_to_dict, family_of
from components.models.checkpoint import save_checkpoint
from components.names import check_dataset, check_model, check_model_ref
from components.orchestration.lineage import recorded_run
from components.settings import get_settings
from components.training.adapt import (
    AdaptConfig,
    adapt,
    novelty_class_index,
    predict_proba,
)
from components.training.kept_runs import take_run, training_key
from components.training.meta import META_METHODS, MetaConfig, meta_adapt
from components.training.recipes import AUTO, meta_config, recipe_for_run
from flows.tasks import (
    load_backbone,
    load_labeled_set,
    profile_dataset,
    register_model_version,
    resolve_label_snapshot,
    store_artifact,
)


@task(name="adapt-backbone", cache_policy=NO_CACHE)
def run_adapt(backbone_cfg, state, images, labels, num_classes: int, cfg: AdaptConfig, preprocess: dict):
    return adapt(backbone_cfg, state, images, labels, num_classes, cfg, progress=True, preprocess=preprocess)


@task(name="take-kept-sweep-run", cache_policy=NO_CACHE)
def kept_classifier(folder: str | None, backbone_cfg, state, images, labels, num_classes: int, cfg: AdaptConfig):
    return take_run(folder, training_key(backbone_cfg, state, images, labels, num_classes, cfg)) if folder else None


@task(name="meta-adapt-backbone", cache_policy=NO_CACHE)
def run_meta_adapt(backbone_cfg, state, images, labels, num_classes: int, cfg: MetaConfig, preprocess: dict):
    return meta_adapt(backbone_cfg, state, images, labels, num_classes, cfg, progress=True, preprocess=preprocess)


@task(name="test-metrics", cache_policy=NO_CACHE)
def test_metrics(classifier, data, n_train: int) -> dict:
    proba = predict_proba(classifier, data.images[data.test_idx])
    metrics = evaluate_predictions(data.labels[data.test_idx], proba, len(data.classes))
    return {**metrics, "n_train": n_train, "n_test": int(len(data.test_idx))}


@flow(name="adapt", log_prints=True)
def adapt_flow(dataset: str, backbone: str | None = None, method: str = "probe", fraction: float = 1.0,
               seed: int = 0, recipe: str = AUTO, dataset_version: int | None = None,
               snapshot_version: int | None = None, model_name: str | None = None,
               budget_minutes: float | None = None, finetune_runs: int = 1,
               metric: str = DEFAULT_GATE_METRIC, good_class: str | None = None,
               reuse_from: str | None = None) -> dict:
    """Adapt `backbone` (a registered backbone ref like 'elpv-simclr', 'elpv-mae:2', or 'scratch')
    with `fraction` of the snapshot's training labels; evaluate on its fixed test split.
    `reuse_from` (the pipeline's): a folder of a sweep's kept full-label classifiers; one trained
    from exactly this run's backbone, labels, settings and seed is taken instead of training again.
    A registered backbone decodes images as it was pretrained (its recorded preprocessing).
    `metric`: what the auto recipe's fine-tune fits its class offsets for (the gate's metric).
    `good_class` (the svm on a descriptor backbone): the normal class, whose training images make
    the position-aware novelty bank (AdaptConfig.novelty_class)."""
    check_dataset(dataset)
    check_metric(metric)
    if backbone is not None:
        check_model_ref(backbone, allow=("scratch",))
    if model_name is not None:
        check_model(model_name)
    settings = get_settings()
    model_name = model_name or f"{dataset}-classifier"
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    version, snapshot = resolve_label_snapshot(settings, dataset, dataset_version, snapshot_version)
    novelty_class = None if good_class is None else novelty_class_index(good_class, snapshot.classes, [method])
    profile = None
    if recipe == AUTO:
        # The label count sizes the epochs; class balance is decided from the labels themselves
        # when training starts (AdaptConfig.class_balance = auto).
        profile = replace(profile_dataset(settings, dataset, version), n_labels=int(snapshot.n_labeled))
    resolved, runtime = recipe_for_run(recipe, profile, budget_minutes=budget_minutes, finetune_runs=finetune_runs,
                                       pretrain=False, seed=seed, metric=metric)
    if method in META_METHODS:
        cfg = meta_config(method, recipe, seed, probe=resolved.adapt["probe"])
    elif method in resolved.adapt:
        cfg = resolved.adapt[method]
    else:
        raise ValueError(f"unknown adaptation method {method!r} (methods: {', '.join([*resolved.adapt, *META_METHODS])})")
    if novelty_class is not None:
        cfg = replace(cfg, novelty_class=novelty_class)
    backbone = backbone or f"{dataset}-{resolved.pretrain.method}"
    params = {"dataset": dataset, "backbone": backbone, "method": method, "fraction": fraction, "seed": seed,
              "recipe": recipe, "adapt": cfg.to_dict(), "budget_minutes": budget_minutes, "runtime": runtime,
              "good_class": good_class}
    with recorded_run(settings, "adapt", params) as run_id:
        parent, backbone_cfg, state, preprocess = load_backbone(settings, backbone, resolved.backbone,
                                                                resolved.preprocess.to_dict())
        pre = Preprocess.coerce(preprocess or backbone_cfg.img_size)
        if pre.size != backbone_cfg.img_size:
            raise ValueError(f"backbone {backbone} takes {backbone_cfg.img_size} px, its preprocessing says {pre.size}")
        params.update({"img_size": backbone_cfg.img_size, "preprocess": pre.to_dict(),
                       "family": family_of(backbone_cfg), "architecture": config_to_dict(backbone_cfg)})
        if good_class is not None and family_of(backbone_cfg) != "descriptor":
            raise ValueError(f"a good class gives a descriptor backbone's svm its novelty bank; {backbone} is a "
                             f"{family_of(backbone_cfg)} backbone")
        print(f"adapt: {backbone} ({family_of(backbone_cfg)}), input {pre.describe()}; {method}"
              + (f" {cfg.epochs} epochs, {cfg.optimizer}, validation {cfg.val_fraction:.0%}, class balance "
                 f"{cfg.class_balance}, EMA {cfg.ema_decay or 'off'}, TTA {cfg.tta}"
                 if method in ("finetune", "lora") else "")
              + f"; {runtime['threads']} thread(s)")
        data = load_labeled_set(settings, dataset, version, snapshot, pre)
        subset = label_subset(data.train_idx, data.labels, fraction, seed)
        if method in META_METHODS:  # episodes from the same labeled subset, then the real task's head
            classifier, meta = run_meta_adapt(backbone_cfg, state, data.images[subset], data.labels[subset],
                                              len(data.classes), cfg, pre.to_dict())
            params["meta_training"] = meta.summary()
            params["baseline_method"] = cfg.final  # what the gate adapts the baselines with
        else:
            classifier = kept_classifier(reuse_from, backbone_cfg, state, data.images[subset], data.labels[subset],
                                         len(data.classes), cfg)
            if classifier is not None:
                classifier.preprocess = pre.to_dict()
                params["reused_sweep_run"] = True
                print("adapt: the sweep's full-label run with this backbone, these labels, settings and seed "
                      "is taken as it is (not trained again)")
            else:
                classifier = run_adapt(backbone_cfg, state, data.images[subset], data.labels[subset],
                                       len(data.classes), cfg, pre.to_dict())
        metrics = test_metrics(classifier, data, int(len(subset)))
        training = classifier.training_log
        if training:
            params["training"] = training
        if "epochs_run" in training:
            print(f"adapt: {training.get('epochs_run')} epochs ({training.get('stopped')}), kept epoch "
                  f"{training.get('best_epoch')} (validation balanced accuracy "
                  f"{training.get('best_val_balanced_accuracy')}), class balance {training.get('class_balance')}")
        elif "landmarks" in training:
            print(f"adapt: {training['landmarks_from_training_images']} of the kernel's {training['landmarks']} "
                  "landmarks redrawn from the training images"
                  + (f"; novelty bank of {training['novelty_bank']} {good_class!r} training images"
                     if "novelty_bank" in training else ""))
        checkpoint = save_checkpoint({"kind": "classifier", "backbone_config": config_to_dict(backbone_cfg),
                                      "preprocess": pre.to_dict(), "classes": data.classes,
                                      "classifier": classifier.state()})
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
