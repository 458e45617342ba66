"""How good a box detector is: VOC-style average precision per class (all-point interpolated)
and its mean at an IoU threshold, precision / recall / F-score at a score threshold (DeepPCB's
criterion: a detection counts when IoU > 0.33 with a box of the same class), each with a
percentile bootstrap interval over test images; a markdown report and box drawings.

Matching is VOC's: per image, detections in descending score order each take the unmatched
true box of their class they overlap most; one whose best box is already taken, or overlaps
it by no more than the threshold, is a false positive. Matching never crosses images, so
each detection's verdict is fixed once; the bootstrap only re-weights images (a detection
counts as often as its image was drawn), and the score order of the records never changes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from components.evaluation.anomaly import _interval
from components.evaluation.figures import figure_png, image_grid
from components.evaluation.report import backbone_sweep_markdown
from components.models.detection import box_iou

VOC_IOU = 0.5
DEEPPCB_IOU = 0.33


@dataclass
class Matched:
    """Every detection's class, score, image and verdict (true positive or not), and the number
    of true boxes per image and class ``[n_images, n_classes]``."""
    labels: np.ndarray
    scores: np.ndarray
    images: np.ndarray
    tp: np.ndarray
    n_true: np.ndarray


def match_image(pred: dict, truth: dict, iou_threshold: float) -> np.ndarray:
    """True-positive flags of one image's detections (in their given order)."""
    boxes, scores, labels = (np.asarray(pred[k]) for k in ("boxes", "scores", "labels"))
    t_boxes, t_labels = np.asarray(truth["boxes"]).reshape(-1, 4), np.asarray(truth["labels"])
    tp = np.zeros(len(scores), dtype=bool)
    if len(scores) == 0 or len(t_labels) == 0:
        return tp
    iou = box_iou(boxes, t_boxes)
    iou[labels[:, None] != t_labels[None, :]] = -1.0  # only boxes of the same class can match
    taken = np.zeros(len(t_labels), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        j = int(np.argmax(iou[i]))
        if iou[i, j] > iou_threshold and not taken[j]:
            tp[i], taken[j] = True, True
    return tp


def match(preds: Sequence[dict], truths: Sequence[dict], num_classes: int, iou_threshold: float) -> Matched:
    """Match every image's detections to its true boxes (``truths``: ``boxes`` ``[m, 4]``, ``labels`` ``[m]``)."""
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predicted images but {len(truths)} true ones")
    labels, scores, images, tp = [], [], [], []
    n_true = np.zeros((len(truths), num_classes), dtype=np.int64)
    for i, (p, t) in enumerate(zip(preds, truths)):
        t_labels = np.asarray(t["labels"], dtype=np.int64)
        if len(t_labels) and (t_labels.min() < 0 or t_labels.max() >= num_classes):
            raise ValueError(f"image {i}: a true class index outside 0..{num_classes - 1}")
        n_true[i] = np.bincount(t_labels, minlength=num_classes)
        labels.append(np.asarray(p["labels"], dtype=np.int64))
        scores.append(np.asarray(p["scores"], dtype=np.float64))
        images.append(np.full(len(p["scores"]), i, dtype=np.int64))
        tp.append(match_image(p, t, iou_threshold))
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    return Matched(cat(labels, np.int64), cat(scores, np.float64), cat(images, np.int64), cat(tp, bool), n_true)


def average_precision(tp_weights: np.ndarray, fp_weights: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    """All-point interpolated AP (VOC 2010+) of detections in descending score order, for each
    row of weights ``[R, n]`` (a detection's count: 1, or how often its image was drawn) with
    ``n_true`` ``[R]`` true boxes; NaN where there are no true boxes."""
    tp_c, fp_c = np.cumsum(tp_weights, axis=1), np.cumsum(fp_weights, axis=1)
    n_true = np.asarray(n_true, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp_c / n_true[:, None]
        precision = np.where(tp_c + fp_c > 0, tp_c / np.maximum(tp_c + fp_c, 1e-12), 0.0)
    R = len(n_true)
    mrec = np.concatenate([np.zeros((R, 1)), recall, np.ones((R, 1))], axis=1)
    mpre = np.concatenate([np.zeros((R, 1)), precision, np.zeros((R, 1))], axis=1)
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre, 1), axis=1), 1)  # the precision envelope
    # the area under the envelope: each recall step times the precision reached there (the
    # final step to recall 1 is not a detection and carries precision 0)
    ap = (np.diff(mrec[:, :-1], axis=1) * mpre[:, 1:-1]).sum(1)
    return np.where(n_true > 0, ap, np.nan)


def _class_ap(m: Matched, k: int, image_weights: np.ndarray) -> np.ndarray:
    """AP of class ``k`` under image weights ``[R, n_images]``."""
    sel = np.flatnonzero(m.labels == k)
    sel = sel[np.argsort(-m.scores[sel], kind="stable")]
    w = image_weights[:, m.images[sel]]
    tp = m.tp[sel].astype(np.float64)
    return average_precision(w * tp, w * (1 - tp), image_weights @ m.n_true[:, k])


def _bootstrap_weights(n_images: int, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=n_boot).astype(np.float64)


def mean_average_precision(m: Matched, classes: Sequence[str], n_boot: int = 1000, seed: int = 0,
                           alpha: float = 0.05) -> dict:
    """``map`` (mean over the classes that have true boxes) with its interval, and ``per_class`` AP."""
    n_images, K = m.n_true.shape
    point = np.ones((1, n_images))
    boot = _bootstrap_weights(n_images, n_boot, seed) if n_images else np.zeros((0, 0))
    per_class, point_aps, boot_aps = {}, [], []
    for k, name in enumerate(classes):
        ap = float(_class_ap(m, k, point)[0])
        if np.isnan(ap):
            continue  # no true box of this class in the test images: no AP to speak of
        per_class[name] = ap
        point_aps.append(ap)
        boot_aps.append(_class_ap(m, k, boot) if n_boot else np.zeros(0))
    if not point_aps:
        raise ValueError("no true boxes in the test images: mAP is undefined")
    values = np.nanmean(np.stack(boot_aps), axis=0) if n_boot else np.zeros(0)
    return {"map": _interval(float(np.mean(point_aps)), values, alpha), "per_class": per_class}


def _map_rows(m: Matched, image_weights: np.ndarray) -> np.ndarray:
    """mAP under each row of image weights ``[R, n_images]``, over the classes with true boxes
    in the whole test set (a class whose boxes a resample missed is left out of that row's mean)."""
    present = [k for k in range(m.n_true.shape[1]) if m.n_true[:, k].sum() > 0]
    if not present:
        raise ValueError("no true boxes in the test images: mAP is undefined")
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row where every class was missed: NaN
        return np.nanmean(np.stack([_class_ap(m, k, image_weights) for k in present]), axis=0)


def paired_map_comparison(candidate: Sequence[dict], other: Sequence[dict], truths: Sequence[dict], num_classes: int,
                          rule: str = "better", threshold: float = 0.0, confidence: float = 0.95,
                          n_boot: int = 2000, seed: int = 0) -> dict:
    """Two detectors' mAP@0.5 on the same test images, compared under one rule as the classifier
    gate compares its metric (components/evaluation/metrics.paired_comparison, same keys but no
    accuracy): the same bootstrap resamples of images weight both detectors' matches, so the
    difference's interval is paired. ``better``: the one-sided lower ``confidence`` bound of
    candidate - other above ``threshold``; ``not_worse``: the upper bound not below it."""
    if rule not in ("better", "not_worse"):
        raise ValueError(f"rule must be 'better' or 'not_worse', got {rule!r}")
    if not len(candidate) == len(other) == len(truths):
        raise ValueError(f"{len(candidate)} and {len(other)} detected images for {len(truths)} test images")
    mc = match(candidate, truths, num_classes, VOC_IOU)
    mo = match(other, truths, num_classes, VOC_IOU)
    point = np.ones((1, len(truths)))
    vc, vo = float(_map_rows(mc, point)[0]), float(_map_rows(mo, point)[0])
    diffs = np.zeros(0)
    if n_boot and len(truths):
        w = _bootstrap_weights(len(truths), n_boot, seed)
        diffs = _map_rows(mc, w) - _map_rows(mo, w)
        diffs = diffs[~np.isnan(diffs)]
    if diffs.size:
        low, high = (float(q) for q in np.quantile(diffs, [1 - confidence, confidence]))
        p_value = float(np.mean(diffs <= 0) if rule == "better" else np.mean(diffs >= 0))
    else:  # no resamples: no evidence, cannot pass a "better"
        low = high = p_value = float("nan")
    if rule == "better":
        passed = bool(low > threshold)
        verdict = "better" if passed else "not significantly better"
    else:
        passed = bool(high >= threshold)
        verdict = "not significantly worse" if passed else "significantly worse"
    return {"rule": rule, "metric": "map50", "candidate": vc, "other": vo, "diff": vc - vo, "ci_low": low,
            "ci_high": high, "threshold": float(threshold), "p_value": p_value, "verdict": verdict, "passed": passed}


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1e-12), np.where(n_true > 0, 0.0, np.nan))
        recall = np.where(n_true > 0, tp / np.maximum(n_true, 1e-12), np.nan)
        f = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, np.where(np.isnan(precision) | np.isnan(recall), np.nan, f)


def precision_recall_f(m: Matched, classes: Sequence[str], score_threshold: float, n_boot: int = 1000,
                       seed: int = 0, alpha: float = 0.05) -> dict:
    """Precision, recall and F-score of the detections scoring >= ``score_threshold`` over all
    classes (with intervals), and per class (points). Matching runs on all detections in score
    order, so a kept detection's verdict is the one it would have among the kept ones alone."""
    n_images, K = m.n_true.shape
    kept = m.scores >= score_threshold
    onehot = np.zeros((n_images, 2, K))  # per image and class: true positives, detections
    np.add.at(onehot, (m.images[kept], 0, m.labels[kept]), m.tp[kept].astype(np.float64))
    np.add.at(onehot, (m.images[kept], 1, m.labels[kept]), 1.0)
    tp_all, pred_all, true_all = onehot[:, 0].sum(1), onehot[:, 1].sum(1), m.n_true.sum(1).astype(np.float64)
    p, r, f = _prf(np.array([tp_all.sum()]), np.array([pred_all.sum()]), np.array([true_all.sum()]))
    out = {"score_threshold": float(score_threshold)}
    if n_boot and n_images:
        w = _bootstrap_weights(n_images, n_boot, seed)
        bp, br, bf = _prf(w @ tp_all, w @ pred_all, w @ true_all)
    else:
        bp = br = bf = np.zeros(0)
    out.update({"precision": _interval(float(p[0]), bp, alpha), "recall": _interval(float(r[0]), br, alpha),
                "fscore": _interval(float(f[0]), bf, alpha)})
    cp, cr, cf = _prf(onehot[:, 0].sum(0), onehot[:, 1].sum(0), m.n_true.sum(0).astype(np.float64))
    out["per_class"] = {name: {"precision": float(cp[k]), "recall": float(cr[k]), "fscore": float(cf[k])}
                        for k, name in enumerate(classes) if m.n_true[:, k].sum() > 0}
    return out


def evaluate_detection(preds: Sequence[dict], truths: Sequence[dict], classes: Sequence[str],
                       score_threshold: float = 0.3, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Every detection metric of one test set: mAP@0.5 (VOC), mAP@0.33 and precision / recall /
    F-score at ``score_threshold`` with DeepPCB's IoU > 0.33 criterion; per-class values."""
    voc = match(preds, truths, len(classes), VOC_IOU)
    pcb = match(preds, truths, len(classes), DEEPPCB_IOU)
    map50 = mean_average_precision(voc, classes, n_boot, seed, alpha)
    map33 = mean_average_precision(pcb, classes, n_boot, seed, alpha)
    prf = precision_recall_f(pcb, classes, score_threshold, n_boot, seed, alpha)
    return {"map50": map50["map"], "ap50_per_class": map50["per_class"],
            "map33": map33["map"], "ap33_per_class": map33["per_class"],
            "precision33": prf["precision"], "recall33": prf["recall"], "fscore33": prf["fscore"],
            "prf33_per_class": prf["per_class"], "score_threshold": float(score_threshold),
            "n_test_images": len(truths), "n_test_boxes": int(voc.n_true.sum())}


# --- report ------------------------------------------------------------------------


def _cell(m: dict) -> str:
    return f"{m['value']:.3f} ({m['ci_low']:.3f}-{m['ci_high']:.3f})"


def markdown_report(title: str, metrics: dict, context: dict) -> str:
    """The evaluation as markdown: context lines, the headline metrics with their 95 % intervals,
    then one row per class."""
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in context.items()]
    lines += ["", "| metric | value (95% CI) |", "| --- | --- |",
              f"| mAP@0.5 (VOC, all-point) | {_cell(metrics['map50'])} |",
              f"| mAP@0.33 | {_cell(metrics['map33'])} |",
              f"| precision (IoU > 0.33, score >= {metrics['score_threshold']:g}) | "
              f"{_cell(metrics['precision33'])} |",
              f"| recall (IoU > 0.33) | {_cell(metrics['recall33'])} |",
              f"| F-score (IoU > 0.33) | {_cell(metrics['fscore33'])} |",
              "", "| class | AP@0.5 | AP@0.33 | precision | recall | F-score |", "| --- | --- | --- | --- | --- | --- |"]
    for name, ap in metrics["ap50_per_class"].items():
        prf = metrics["prf33_per_class"].get(name, {})
        lines.append(f"| {name} | {ap:.3f} | {metrics['ap33_per_class'].get(name, float('nan')):.3f} | "
                     f"{prf.get('precision', float('nan')):.3f} | {prf.get('recall', float('nan')):.3f} | "
                     f"{prf.get('fscore', float('nan')):.3f} |")
    lines += ["", f"Test images: {metrics['n_test_images']}, true boxes: {metrics['n_test_boxes']}. "
              "Intervals: percentile bootstrap over test images."]
    return "\n".join(lines) + "\n"


def draw_boxes(images: np.ndarray, preds: Sequence[dict], truths: Sequence[dict], classes: Sequence[str],
               score_threshold: float, columns: int = 4) -> bytes:
    """A PNG grid: each image in gray, its true boxes in green, its detections scoring at least
    ``score_threshold`` in red with class and score."""
    from matplotlib.patches import Rectangle

    fig, axes = image_grid(len(images), columns, (3.5, 3.7))
    for i, ax in enumerate(axes[:len(images)]):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        for (x1, y1, x2, y2) in np.asarray(truths[i]["boxes"]).reshape(-1, 4):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.2))
        shown = 0
        for (x1, y1, x2, y2), s, k in zip(preds[i]["boxes"], preds[i]["scores"], preds[i]["labels"]):
            if s < score_threshold:
                continue
            shown += 1
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=0.9))
            ax.text(x1, y1 - 1, f"{classes[k]} {s:.2f}", color="red", fontsize=5)
        ax.set_title(f"{len(truths[i]['labels'])} true (green), {shown} found (red)", fontsize=8)
    return figure_png(fig)


def sweep_markdown(title: str, table: Sequence[dict], context: dict) -> str:
    """A detection label-efficiency sweep (``summary_table`` rows) as markdown: mAP@0.5, mAP@0.33
    and the IoU > 0.33 F-score per backbone and fraction of the training images."""
    return backbone_sweep_markdown(
        title, table, context, [("map50", "mAP@0.5 (95% CI)"), ("map33", "mAP@0.33"), ("fscore33", "F-score (IoU > 0.33)")],
        "training images", "Every detector is trained with the same recipe on the same images (for one seed the "
        "subsets are nested across fractions) and scored on the snapshot's fixed test split. Intervals: percentile "
        "bootstrap over test images (seed means).")
