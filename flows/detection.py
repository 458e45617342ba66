"""Flow `adapt-detection`: a box detector (CenterNet-style head on a ResNet backbone) trained on
a box snapshot's training images, evaluated on its fixed test split (mAP@0.5, DeepPCB's
IoU > 0.33 precision / recall / F-score, bootstrap intervals over images), a report with
example images and their boxes, and its registry version (kind 'detector') with lineage.
Training checkpoints itself: a rerun with the same parameters after a crash or Ctrl-C resumes
from its last checkpoint."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.anomaly.features import feature_backbone
from components.evaluation.detection import (
    draw_boxes,
    evaluate_detection,
    markdown_report,
)
from components.models.checkpoint import save_checkpoint
from components.models.detection import detector_state
from components.models.resnet import ResNet
from components.orchestration.lineage import recorded_run
from components.registry.refs import SCRATCH
from components.settings import get_settings
from components.training.detect import DetectConfig, predict_boxes, train_detector
from components.training.device import cpu_threads
from components.training.pretrain import resume_path
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
def train(backbone, images, boxes, labels, num_classes: int, cfg: DetectConfig, checkpoint: Path):
    return train_detector(backbone, images, boxes, labels, num_classes, cfg, progress=True, checkpoint_path=checkpoint)


@task(name="detect-test-split", cache_policy=NO_CACHE)
def detect(model, images, cfg: DetectConfig):
    return predict_boxes(model, images, cfg, progress=True)


@task(name="evaluate-detector", cache_policy=NO_CACHE)
def evaluate(preds, truths, classes, score_threshold: float, seed: int):
    return evaluate_detection(preds, truths, classes, score_threshold=score_threshold, seed=seed)


@flow(name="adapt-detection", log_prints=True)
def detection_flow(dataset: str, backbone: str | None = None, snapshot_version: int | None = None,
                   dataset_version: int | None = None, img_size: int = 256, steps: int = 2000, batch_size: int = 16,
                   lr: float = 2e-3, crop: int | None = None, tile: int | None = None, score_threshold: float = 0.3,
                   seed: int = 0, threads: int | None = None, model_name: str | None = None) -> dict:
    """Train a detector on `dataset`'s box snapshot (`snapshot_version`, default the latest) from
    a registered ResNet backbone's encoder or from scratch (`backbone='scratch'`: a random small
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
        parent = None if backbone == SCRATCH else resolve_model_version(settings, backbone)
        checkpoint = None if parent is None else load_model_checkpoint(settings, parent)
        net, backbone_cfg = feature_backbone(checkpoint, img_size, seed)
        if not isinstance(net, ResNet):
            raise ValueError(f"backbone {backbone} is a {backbone_cfg.family}; the detector needs a ResNet backbone")
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
                                               description="box detector (CenterNet head on a ResNet), task=detection")
        checkpoint.unlink(missing_ok=True)  # registered: nothing left to resume
    m = metrics["map50"]
    resumed = f", resumed at step {history['resumed_from_step']}" if history["resumed_from_step"] else ""
    print(f"adapt-detection: {model_name} v{model_version.version} ({backbone}{resumed}): mAP@0.5 {m['value']:.3f} "
          f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}] on {len(test_idx)} test images")
    return {"model": model_name, "version": model_version.version, "model_version_id": model_version.id,
            "metrics": metrics, "report_uri": stored_report.uri, "boxes_uri": stored_boxes.uri}
