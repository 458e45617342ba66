"""Flow `adapt-anomaly`: an anomaly model from good images only (PatchCore-style memory bank
on a backbone's patch features), its threshold for a stated false-alarm rate, its evaluation
on the snapshot's test split when defect labels exist, a heat-map artifact, and its registry
version with lineage.

Flow `evaluate-anomaly`: backbones compared for anomaly detection: the same memory-bank recipe
on each backbone's features (registered backbones, e.g. domain-pretrained and generic, and a
random ResNet), fitted on fractions of the good training images and scored on the same test
split; its report, plot and evaluation rows."""
from __future__ import annotations

import json

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.anomaly.features import FeatureConfig, feature_backbone
from components.anomaly.patchcore import PatchCoreConfig, fit_patchcore
from components.anomaly.sets import sets_from_good_images, sets_from_labels
from components.evaluation.anomaly import (
    evaluate_anomaly,
    heatmap_overlays,
    markdown_report,
    masks_from_box_snapshot,
    pick_examples,
    pixel_auroc,
    sweep_markdown,
)
from components.evaluation.report import summary_table
from components.evaluation.split import label_subset
from components.evaluation.sweep import checked_axes
from components.labeling.boxes import is_box_snapshot
from components.models.checkpoint import save_checkpoint
from components.names import check_model_ref
from components.orchestration.lineage import recorded_run
from components.registry.refs import SCRATCH
from components.settings import get_settings
from flows.evaluate import record_backbone_sweep
from flows.tasks import (
    load_artifact,
    load_dataset_images,
    load_labeled_set,
    load_model_checkpoint,
    register_model_version,
    resolve_dataset_version,
    resolve_label_snapshot,
    resolve_model_version,
    store_artifact,
)

# Its own registry kind (migration 0003), so the classifier-only steps (promotion, export)
# refuse an anomaly model by its kind, and prediction chooses its predictor by it.
REGISTRY_KIND = "anomaly"
TASK = "anomaly"
EXAMPLES = 8


@task(name="fit-anomaly-model", cache_policy=NO_CACHE)
def fit_model(backbone, backbone_cfg, good_images, cfg: PatchCoreConfig):
    return fit_patchcore(backbone, backbone_cfg, good_images, cfg, progress=True)


@task(name="calibrate-threshold", cache_policy=NO_CACHE)
def calibrate(model, good_images, false_alarm_rate: float):
    return model.calibrate(good_images, false_alarm_rate, progress=True)


@task(name="score-test-split", cache_policy=NO_CACHE)
def score(model, images):
    return model.score(images, progress=True)


def bank_config(cnn_stages, vit_blocks, coreset_fraction: float, max_bank: int, fit_dihedral: bool,
                image_coreset_fraction: float, seed: int) -> PatchCoreConfig:
    """The memory-bank recipe both anomaly flows take from their parameters."""
    return PatchCoreConfig(features=FeatureConfig(cnn_stages=tuple(cnn_stages), vit_blocks=tuple(vit_blocks)),
                           coreset_fraction=coreset_fraction, max_bank=max_bank, fit_dihedral=fit_dihedral,
                           image_coreset_fraction=image_coreset_fraction, seed=seed)


def defect_regions(settings, dataset: str, version, regions_snapshot: int, paths: list[str],
                   is_anomaly: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixel masks of the box snapshot's defect regions at ``size``, which images they speak for:
    anomalies with boxes, and every good image, which has no defect region by definition)."""
    _, box_row = resolve_label_snapshot(settings, dataset, version.version, regions_snapshot)
    boxes = json.loads(load_artifact(settings, box_row.artifact_uri, box_row.sha256))
    if not is_box_snapshot(boxes):
        raise ValueError(f"snapshot v{regions_snapshot} of {dataset} holds image classes, not boxes")
    masks, known = masks_from_box_snapshot(boxes, paths, size)
    return masks, known | ~is_anomaly


@flow(name="adapt-anomaly", log_prints=True)
def anomaly_flow(dataset: str, backbone: str | None = None, good_class: str | None = None,
                 false_alarm_rate: float = 0.01, img_size: int | None = None, coreset_fraction: float = 0.1,
                 max_bank: int = 20_000, cnn_stages: tuple[int, ...] = (2, 3), vit_blocks: tuple[int, ...] = (-1,),
                 fit_dihedral: bool = False, image_coreset_fraction: float = 1.0, seed: int = 0,
                 dataset_version: int | None = None, snapshot_version: int | None = None, regions_snapshot: int | None = None, model_name: str | None = None) -> dict:
    """Fit an anomaly model on `dataset`'s good images: every image of a dataset version, or
    with `good_class` the images of that class in a label snapshot's training pool (the test
    split, all classes, then measures it). `backbone`: a registered backbone ref or 'scratch'
    (random small ResNet). `regions_snapshot`: a box snapshot (version number, same dataset
    version) whose boxes are the defect regions the heat maps' pixel AUROC is measured against."""
    settings = get_settings()
    backbone = backbone or f"{dataset}-mae"
    model_name = model_name or f"{dataset}-anomaly"
    if not 0 <= false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in [0, 1), got {false_alarm_rate}")
    cfg = bank_config(cnn_stages, vit_blocks, coreset_fraction, max_bank, fit_dihedral, image_coreset_fraction, seed)
    params = {"task": TASK, "method": "patchcore", "dataset": dataset, "backbone": backbone,
              "good_class": good_class, "false_alarm_rate": false_alarm_rate, "regions_snapshot": regions_snapshot,
              "patchcore": cfg.to_dict()}
    if regions_snapshot is not None and good_class is None:
        raise ValueError("defect regions need a test split: give --good-class with --regions-snapshot")
    with recorded_run(settings, "adapt-anomaly", params) as run_id:
        parent = None if backbone == SCRATCH else resolve_model_version(settings, backbone)
        checkpoint = None if parent is None else load_model_checkpoint(settings, parent)
        net, backbone_cfg = feature_backbone(checkpoint, img_size, seed)
        size = backbone_cfg.img_size
        params["img_size"] = size
        snapshot = None
        if good_class is None:
            version = resolve_dataset_version(settings, dataset, dataset_version)
            manifest, images = load_dataset_images(settings, dataset, version, size)
            sets = sets_from_good_images([item["sha256"] for item in manifest["images"]])
        else:
            version, snapshot = resolve_label_snapshot(settings, dataset, dataset_version, snapshot_version)
            data = load_labeled_set(settings, dataset, version, snapshot, size)
            images = data.images
            sets = sets_from_labels(data.labels, data.classes, good_class, data.image_sha256, data.train_idx,
                                    data.test_idx)
        model = fit_model(net, backbone_cfg, images[sets.fit], cfg)
        calibrate(model, images[sets.calibration], false_alarm_rate)
        metrics = {"n_fit": int(len(sets.fit)), "n_calibration": int(len(sets.calibration)),
                   "memory_bank": int(model.bank.shape[0]), "threshold": model.threshold,
                   "false_alarm_rate_target": false_alarm_rate}
        context = {"dataset": f"{dataset} v{version.version}", "backbone": backbone,
                   "good images": (f"class {good_class!r} of snapshot v{snapshot.version}" if snapshot
                                   else "every image of the dataset version"),
                   "fit / calibration": f"{len(sets.fit)} / {len(sets.calibration)} good images",
                   "memory bank": f"{model.bank.shape[0]} patches of {model.bank.shape[1]} features",
                   "threshold": f"for a {false_alarm_rate:.1%} false-alarm rate on held-out good images"}
        if len(sets.test) and sets.test_is_anomaly.any() and (~sets.test_is_anomaly).any():
            shown = images[sets.test]
            scores, heat = score(model, shown)
            metrics.update(evaluate_anomaly(sets.test_is_anomaly, scores, model.threshold))
            masks = None
            if regions_snapshot is not None:
                masks, usable = defect_regions(settings, dataset, version, regions_snapshot,
                                               [data.paths[i] for i in sets.test], sets.test_is_anomaly, size)
                if masks[usable].any():
                    metrics["pixel_auroc"] = pixel_auroc(heat[usable], masks[usable])
                    metrics["n_pixel_images"] = int(usable.sum())
            pick, titles = pick_examples(scores, sets.test_is_anomaly, model.threshold, EXAMPLES)
        else:  # no anomalies to test against: show the held-out good images the threshold came from
            shown = images[sets.calibration[:EXAMPLES]]
            scores, heat = score(model, shown)
            pick, titles = pick_examples(scores, np.zeros(len(scores), bool), model.threshold, EXAMPLES)
            metrics.update({"n_test_good": 0, "n_test_anomalous": 0})
            masks = None
        overlay = heatmap_overlays(shown[pick], heat[pick], titles, masks[pick] if masks is not None else None)
        report = markdown_report(f"Anomaly model {model_name} on {dataset}", metrics, context)
        stored_heat = store_artifact(settings, overlay, "reports", f"{model_name}-heatmaps.png")
        stored_report = store_artifact(settings, report.encode(), "reports", f"{model_name}-evaluation.md")
        params["artifacts"] = {"heatmaps": {"uri": stored_heat.uri, "sha256": stored_heat.sha256},
                               "report": {"uri": stored_report.uri, "sha256": stored_report.sha256}}
        stored = store_artifact(settings, save_checkpoint(model.state()), "checkpoints", f"{model_name}.pt")
        model_version = register_model_version(settings, model_name, REGISTRY_KIND, stored, run_id=run_id,
                                               dataset_version=version, snapshot=snapshot, parent=parent,
                                               params=params, metrics=metrics,
                                               description="anomaly model (PatchCore memory bank), task=anomaly")
    line = f"adapt-anomaly: {model_name} v{model_version.version} ({backbone}, bank {model.bank.shape[0]})"
    if "image_auroc" in metrics:
        a = metrics["image_auroc"]
        line += f": image AUROC {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"
    print(line)
    return {"model": model_name, "version": model_version.version, "model_version_id": model_version.id,
            "metrics": metrics, "report_uri": stored_report.uri, "heatmaps_uri": stored_heat.uri}


SWEEP_METHOD = "patchcore"


@flow(name="evaluate-anomaly", log_prints=True)
def evaluate_anomaly_flow(dataset: str, good_class: str, backbones: list[str] | None = None,
                          include_scratch: bool = True, fractions: list[float] = (1.0,), seeds: list[int] = (0,),
                          img_size: int | None = None, false_alarm_rate: float = 0.01, coreset_fraction: float = 0.1,
                          max_bank: int = 20_000, cnn_stages: tuple[int, ...] = (2, 3),
                          vit_blocks: tuple[int, ...] = (-1,), fit_dihedral: bool = False,
                          image_coreset_fraction: float = 1.0, dataset_version: int | None = None,
                          snapshot_version: int | None = None, regions_snapshot: int | None = None) -> dict:
    """Fit the same memory-bank recipe on each of `backbones` (registered backbone refs) and a
    random small ResNet (unless `include_scratch` is off) from `fractions` of the `good_class`
    training images (nested for one seed), threshold each for `false_alarm_rate` on the held-out
    good images, and score the snapshot's test split (every other class an anomaly): image
    AUROC (the decision metric), false-alarm and detection rates, and pixel AUROC against a box
    snapshot's regions. Every backbone sees the same images at one input size."""
    settings = get_settings()
    refs, fractions, seeds = checked_axes([check_model_ref(r) for r in (backbones or [])],
                                          SCRATCH if include_scratch else None, fractions, seeds)
    if not 0 <= false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in [0, 1), got {false_alarm_rate}")
    configs = {seed: bank_config(cnn_stages, vit_blocks, coreset_fraction, max_bank, fit_dihedral,
                                 image_coreset_fraction, seed) for seed in seeds}
    params = {"task": TASK, "method": SWEEP_METHOD, "dataset": dataset, "backbones": refs, "good_class": good_class,
              "fractions": fractions, "seeds": seeds, "false_alarm_rate": false_alarm_rate,
              "regions_snapshot": regions_snapshot, "patchcore": configs[seeds[0]].to_dict()}
    with recorded_run(settings, "evaluate-anomaly", params) as run_id:
        chosen = {}  # every backbone loaded, and its input size checked, before any fitting
        for ref in refs:
            parent = None if ref == SCRATCH else resolve_model_version(settings, ref)
            checkpoint = None if parent is None else load_model_checkpoint(settings, parent)
            chosen[ref] = (checkpoint, parent, feature_backbone(checkpoint, img_size, 0)[1].img_size)
        sizes = {ref: size for ref, (_, _, size) in chosen.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the backbones take different input sizes ({', '.join(f'{r}: {s} px' for r, s in sizes.items())}): "
                             "give --img-size (ResNets take any size; a ViT any multiple of its patch)")
        size = next(iter(sizes.values()))
        params["img_size"] = size
        version, snapshot = resolve_label_snapshot(settings, dataset, dataset_version, snapshot_version)
        data = load_labeled_set(settings, dataset, version, snapshot, size)
        sets = sets_from_labels(data.labels, data.classes, good_class, data.image_sha256, data.train_idx,
                                data.test_idx)
        y = sets.test_is_anomaly
        if not (y.any() and (~y).any()):
            raise ValueError(f"the test split of snapshot v{snapshot.version} needs good and anomalous images")
        masks = usable = None
        if regions_snapshot is not None:
            masks, usable = defect_regions(settings, dataset, version, regions_snapshot,
                                           [data.paths[i] for i in sets.test], y, size)
        test_images = data.images[sets.test]
        rows = []
        for ref, (checkpoint, _, _) in chosen.items():
            for seed in seeds:
                for fraction in fractions:
                    fit = label_subset(sets.fit, np.zeros(len(data.labels), np.int64), fraction, seed)
                    net, backbone_cfg = feature_backbone(checkpoint, size, seed)
                    model = fit_model(net, backbone_cfg, data.images[fit], configs[seed])
                    calibrate(model, data.images[sets.calibration], false_alarm_rate)
                    scores, heat = score(model, test_images)
                    measured = evaluate_anomaly(y, scores, model.threshold, seed=seed)
                    metrics = {k: measured[k] for k in ("image_auroc", "false_alarm_rate", "detection_rate")}
                    if masks is not None and masks[usable].any():
                        metrics["pixel_auroc"] = pixel_auroc(heat[usable], masks[usable], seed=seed)
                    rows.append({"backbone": ref, "method": SWEEP_METHOD, "fraction": fraction, "seed": seed,
                                 "n_train": int(len(fit)), "metrics": metrics})
                    a = metrics["image_auroc"]
                    print(f"evaluate-anomaly: {ref}, {fraction:.0%} of the good images ({len(fit)}), seed {seed}: "
                          f"image AUROC {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]")
        table = summary_table(rows)
        context = {"dataset": f"{dataset} v{version.version}", "label snapshot": f"v{snapshot.version}",
                   "good images": f"class {good_class!r}: {len(sets.fit)} to fit, {len(sets.calibration)} to set "
                                  f"the threshold", "test split": f"{int((~y).sum())} good, {int(y.sum())} anomalous",
                   "input": f"{size}x{size} px", "false-alarm target": f"{false_alarm_rate:.1%}",
                   "decision metric": "image_auroc"}
        markdown = sweep_markdown(f"Anomaly detection by backbone on {dataset}", table, context)
        evaluation, report, plot = record_backbone_sweep(
            settings, snapshot, run_id, TASK, "image_auroc", rows, table, markdown, context, rows,
            {ref: parent.id if parent else None for ref, (_, parent, _) in chosen.items()},
            f"{dataset}: image AUROC vs good images")
    print(f"evaluate-anomaly: {len(rows)} anomaly models on {len(sets.test)} test images; report {report.uri}")
    return {"evaluation_id": evaluation.id, "report_uri": report.uri, "plot_uri": plot.uri, "metric": "image_auroc",
            "table": table, "markdown": markdown}
