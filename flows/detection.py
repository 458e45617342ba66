"""Flow `adapt-detection`: a box detector (CenterNet-style head on a ResNet or ViT backbone) trained on
a box snapshot's training images, evaluated on its fixed test split (mAP@0.5, DeepPCB's
IoU > 0.33 precision / recall / F-score, bootstrap intervals over images), a report with
example images and their boxes, and its registry version (kind 'detector') with lineage.
Training checkpoints itself: a rerun with the same parameters after a crash or Ctrl-C resumes
from its last checkpoint.

Flow `evaluate-detection`: the label-efficiency sweep for detectors: the same recipe trained
from each backbone (registered ResNet or ViT backbones, e.g. domain-pretrained and generic,
and scratch) on nested fractions of the training images, scored on the same test split; its
report, plot and evaluation rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.anomaly.features import feature_backbone
from components.evaluation.detection import (
    draw_boxes,
    evaluate_detection,
    markdown_report,
    sweep_markdown,
)
from components.evaluation.report import summary_table
from components.evaluation.split import label_subset
from components.evaluation.sweep import checked_axes
from components.models.backbones import checkpoint_config, family_of
from components.models.checkpoint import save_checkpoint
from components.models.detection import DETECTOR_FAMILIES, detector_state
from components.names import check_model_ref
from components.orchestration.lineage import recorded_run
from components.registry.refs import SCRATCH
from components.settings import get_settings
from components.training.detect import DetectConfig, predict_boxes, train_detector
from components.training.device import cpu_threads
from components.training.resume import resume_path
from flows.evaluate import record_backbone_sweep
from flows.tasks import (
    load_box_set,
    load_model_checkpoint,
    register_model_version,
    resolve_label_snapshot,
    resolve_model_version,
    store_artifact,
)

# Migration 0004's kind: the classifier-only steps (promotion, export) refuse it; prediction
# chooses its predictor by it (components/inference/predictors.py).
REGISTRY_KIND = "detector"
TASK = "detection"
EXAMPLES = 8


@task(name="train-detector", cache_policy=NO_CACHE)
def train(backbone, images, boxes, labels, num_classes: int, cfg: DetectConfig, checkpoint: Path | None):
    return train_detector(backbone, images, boxes, labels, num_classes, cfg, progress=True, checkpoint_path=checkpoint)


@task(name="detect-test-split", cache_policy=NO_CACHE)
def detect(model, images, cfg: DetectConfig):
    return predict_boxes(model, images, cfg, progress=True)


@task(name="evaluate-detector", cache_policy=NO_CACHE)
def evaluate(preds, truths, classes, score_threshold: float, seed: int):
    return evaluate_detection(preds, truths, classes, score_threshold=score_threshold, seed=seed)


def detector_backbone(settings, ref: str, img_size: int):
    """(checkpoint or None for scratch, model version or None) of the backbone a detector starts
    from, refused in one line unless it is a ResNet or a ViT whose patches divide ``img_size``."""
    if ref == SCRATCH:
        return None, None
    parent = resolve_model_version(settings, ref)
    checkpoint = load_model_checkpoint(settings, parent)
    cfg = checkpoint_config(checkpoint)
    family = family_of(cfg)
    if family not in DETECTOR_FAMILIES:
        raise ValueError(f"backbone {ref} is a {family}; the detector needs a ResNet or ViT backbone")
    if family == "vit" and img_size % cfg.patch_size:
        raise ValueError(f"backbone {ref} is a ViT with {cfg.patch_size} px patches: --img-size must be a "
                         f"multiple of {cfg.patch_size}, got {img_size}")
    return checkpoint, parent


@flow(name="adapt-detection", log_prints=True)
def detection_flow(dataset: str, backbone: str | None = None, snapshot_version: int | None = None,
                   dataset_version: int | None = None, img_size: int = 256, steps: int = 2000, batch_size: int = 16,
                   lr: float = 2e-3, crop: int | None = None, tile: int | None = None, score_threshold: float = 0.3,
                   seed: int = 0, threads: int | None = None, model_name: str | None = None) -> dict:
    """Train a detector on `dataset`'s box snapshot (`snapshot_version`, default the latest) from
    a registered ResNet or ViT backbone's encoder or from scratch (`backbone='scratch'`: a random small
    ResNet), evaluate it on the snapshot's test split and register it. `crop`: train on random
    crop x crop windows of the img_size images (small defects keep their pixels at a small
    image's cost per step). `tile`: detect in overlapping tile x tile windows (for test and
    later predictions; recorded in the detector) instead of on whole images."""
    settings = get_settings()
    backbone = backbone or f"{dataset}-mae"
    model_name = model_name or f"{dataset}-detector"
    if not 0 < score_threshold < 1:
        raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
    cfg = DetectConfig(steps=steps, batch_size=batch_size, lr=lr, crop=crop, tile=tile, seed=seed)
    runtime = cpu_threads(threads)
    params = {"task": TASK, "method": "centernet", "dataset": dataset, "backbone": backbone, "img_size": img_size,
              "score_threshold": score_threshold, "detect": cfg.to_dict(), "runtime": runtime}
    with recorded_run(settings, "adapt-detection", params) as run_id:
        checkpoint, parent = detector_backbone(settings, backbone, img_size)
        net, _ = feature_backbone(checkpoint, img_size, seed)
        version, snapshot = resolve_label_snapshot(settings, dataset, dataset_version, snapshot_version)
        params["snapshot"] = snapshot.version
        data = load_box_set(settings, dataset, version, snapshot, img_size)
        train_idx, test_idx = data.train_idx, data.test_idx
        if len(test_idx) == 0:
            raise ValueError(f"snapshot v{snapshot.version} of {dataset} has too few images for a test split")
        checkpoint = resume_path(settings.home, version.id, cfg, parent.sha256 if parent else f"scratch-{seed}",
                                 kind="detector", inputs={"snapshot": snapshot.version, "img_size": img_size})
        model, history = train(net, data.images[train_idx], [data.boxes[i] for i in train_idx],
                               [data.labels[i] for i in train_idx], len(data.classes), cfg, checkpoint)
        preds = detect(model, data.images[test_idx], cfg)
        truths = [{"boxes": data.boxes[i], "labels": data.labels[i]} for i in test_idx]
        metrics = evaluate(preds, truths, data.classes, score_threshold, seed)
        metrics.update({"n_train": int(len(train_idx)), "n_train_boxes": int(sum(len(data.boxes[i]) for i in train_idx)),
                        "train_seconds": round(history["seconds"], 1), "first_loss": history["loss"][0],
                        "final_loss": history["loss"][-1],
                        "resumed_from_step": history["resumed_from_step"]})
        context = {"dataset": f"{dataset} v{version.version}", "box snapshot": f"v{snapshot.version}",
                   "backbone": backbone, "input": f"{img_size}x{img_size} px",
                   "training": f"{len(train_idx)} images, {metrics['n_train_boxes']} boxes, {steps} steps of "
                               f"{batch_size}, {metrics['train_seconds']} s on {runtime.get('threads', '?')} threads",
                   "classes": ", ".join(data.classes)}
        shown = list(range(min(EXAMPLES, len(test_idx))))
        drawing = draw_boxes(data.images[test_idx[shown]], [preds[i] for i in shown], [truths[i] for i in shown],
                             data.classes, score_threshold)
        report = markdown_report(f"Detector {model_name} on {dataset}", metrics, context)
        stored_boxes = store_artifact(settings, drawing, "reports", f"{model_name}-boxes.png")
        stored_report = store_artifact(settings, report.encode(), "reports", f"{model_name}-evaluation.md")
        params["artifacts"] = {"boxes": {"uri": stored_boxes.uri, "sha256": stored_boxes.sha256},
                               "report": {"uri": stored_report.uri, "sha256": stored_report.sha256}}
        decoding = {"max_detections": cfg.max_detections, "score_threshold": cfg.score_threshold,
                    "nms_iou": cfg.nms_iou, "report_score_threshold": score_threshold,
                    **({"tile": cfg.tile, "tile_overlap": cfg.tile_overlap} if cfg.tile else {})}
        state = detector_state(model, data.classes, img_size, decoding)
        stored = store_artifact(settings, save_checkpoint(state), "checkpoints", f"{model_name}.pt")
        model_version = register_model_version(settings, model_name, REGISTRY_KIND, stored, run_id=run_id,
                                               dataset_version=version, snapshot=snapshot, parent=parent,
                                               params=params, metrics=metrics,
                                               description="box detector (CenterNet head), task=detection")
        checkpoint.unlink(missing_ok=True)  # registered: nothing left to resume
    m = metrics["map50"]
    resumed = f", resumed at step {history['resumed_from_step']}" if history["resumed_from_step"] else ""
    print(f"adapt-detection: {model_name} v{model_version.version} ({backbone}{resumed}): mAP@0.5 {m['value']:.3f} "
          f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}] on {len(test_idx)} test images")
    return {"model": model_name, "version": model_version.version, "model_version_id": model_version.id,
            "metrics": metrics, "report_uri": stored_report.uri, "boxes_uri": stored_boxes.uri}


# What a sweep row keeps of a detector's evaluation (the per-class and precision / recall
# detail stays in each cell's results file entry).
SWEEP_METRICS = ("map50", "map33", "fscore33")
SWEEP_METHOD = "centernet"


@flow(name="evaluate-detection", log_prints=True)
def evaluate_detection_flow(dataset: str, backbones: list[str] | None = None, include_scratch: bool = True,
                            fractions: list[float] = (0.1, 0.25, 1.0), seeds: list[int] = (0,),
                            snapshot_version: int | None = None, dataset_version: int | None = None,
                            img_size: int = 256, steps: int = 2000, batch_size: int = 16, lr: float = 2e-3,
                            crop: int | None = None, tile: int | None = None, score_threshold: float = 0.3,
                            threads: int | None = None) -> dict:
    """Train the same detector recipe from each of `backbones` (registered ResNet or ViT backbone refs)
    and from scratch (unless `include_scratch` is off) on `fractions` of the box snapshot's
    training images (stratified by defect / none, nested across fractions for one seed), for
    each seed, and score every detector on the snapshot's test split (mAP@0.5 the decision
    metric). Nothing is registered but the evaluation: the detectors are measurements."""
    settings = get_settings()
    refs, fractions, seeds = checked_axes([check_model_ref(r) for r in (backbones or [])],
                                          SCRATCH if include_scratch else None, fractions, seeds)
    if not 0 < score_threshold < 1:
        raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
    configs = {seed: DetectConfig(steps=steps, batch_size=batch_size, lr=lr, crop=crop, tile=tile, seed=seed)
               for seed in seeds}
    runtime = cpu_threads(threads)
    params = {"task": TASK, "method": SWEEP_METHOD, "dataset": dataset, "backbones": refs, "fractions": fractions,
              "seeds": seeds, "img_size": img_size, "score_threshold": score_threshold,
              "detect": configs[seeds[0]].to_dict(), "runtime": runtime}
    with recorded_run(settings, "evaluate-detection", params) as run_id:
        chosen = {ref: detector_backbone(settings, ref, img_size) for ref in refs}  # all checked before any training
        version, snapshot = resolve_label_snapshot(settings, dataset, dataset_version, snapshot_version)
        params["snapshot"] = snapshot.version
        data = load_box_set(settings, dataset, version, snapshot, img_size)
        test_idx = data.test_idx
        if len(test_idx) == 0:
            raise ValueError(f"snapshot v{snapshot.version} of {dataset} has too few images for a test split")
        has_defect = np.array([len(b) > 0 for b in data.boxes], np.int64)
        truths = [{"boxes": data.boxes[i], "labels": data.labels[i]} for i in test_idx]
        rows, cells = [], []
        for ref, (checkpoint, _) in chosen.items():
            for seed in seeds:
                for fraction in fractions:
                    subset = label_subset(data.train_idx, has_defect, fraction, seed)
                    net, _ = feature_backbone(checkpoint, img_size, seed)  # a fresh copy: training changes it
                    model, history = train(net, data.images[subset], [data.boxes[i] for i in subset],
                                           [data.labels[i] for i in subset], len(data.classes), configs[seed], None)
                    metrics = evaluate(detect(model, data.images[test_idx], configs[seed]), truths, data.classes,
                                       score_threshold, seed)
                    rows.append({"backbone": ref, "method": SWEEP_METHOD, "fraction": fraction, "seed": seed,
                                 "n_train": int(len(subset)), "metrics": {k: metrics[k] for k in SWEEP_METRICS}})
                    cells.append({**rows[-1], "detail": metrics, "train_seconds": round(history["seconds"], 1)})
                    m = metrics["map50"]
                    print(f"evaluate-detection: {ref}, {fraction:.0%} ({len(subset)} images), seed {seed}: mAP@0.5 "
                          f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
        table = summary_table(rows)
        context = {"dataset": f"{dataset} v{version.version}", "box snapshot": f"v{snapshot.version}",
                   "test split": f"{len(test_idx)} images, {sum(len(t['boxes']) for t in truths)} boxes",
                   "train pool": f"{len(data.train_idx)} images", "input": f"{img_size}x{img_size} px",
                   "recipe": f"{steps} steps of {batch_size}, lr {lr:g}" + (f", {crop} px crops" if crop else "")
                             + (f", detected in {tile} px tiles" if tile else ""),
                   "decision metric": "map50"}
        markdown = sweep_markdown(f"Detection label efficiency on {dataset}", table, context)
        evaluation, report, plot = record_backbone_sweep(
            settings, snapshot, run_id, TASK, "map50", rows, table, markdown, context, cells,
            {ref: parent.id if parent else None for ref, (_, parent) in chosen.items()},
            f"{dataset}: mAP@0.5 vs training images")
    print(f"evaluate-detection: {len(rows)} detectors on {len(test_idx)} test images; report {report.uri}")
    return {"evaluation_id": evaluation.id, "report_uri": report.uri, "plot_uri": plot.uri, "metric": "map50",
            "table": table, "markdown": markdown}
