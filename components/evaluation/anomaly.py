"""How good an anomaly model is: image AUROC, pixel AUROC against defect regions, and the
false-alarm / detection rates at its threshold, each with a bootstrap interval over images;
a markdown report and heat-map overlays.

Pixel AUROC pools every pixel of every test image (good images give only negatives), the
usual definition for MVTec-style benchmarks. It is computed from per-image score histograms
(``n_bins`` quantile bins of all scores), so that the bootstrap over images only re-weights
histograms instead of re-sorting millions of pixels; the binning error is below 1/n_bins.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from components.evaluation.figures import figure_png, image_grid
from components.evaluation.report import backbone_sweep_markdown


def auroc(is_anomaly: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random anomaly scores above a random good image (ties count half)."""
    y = np.asarray(is_anomaly, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # here: scipy.stats costs every CLI command a second of imports

    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _interval(point: float, values: np.ndarray, alpha: float) -> dict:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"value": point, "ci_low": float("nan"), "ci_high": float("nan")}
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return {"value": point, "ci_low": float(low), "ci_high": float(high)}


def image_auroc(is_anomaly: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                alpha: float = 0.05) -> dict:
    """Image AUROC with its percentile bootstrap interval over test images."""
    y, s = np.asarray(is_anomaly, dtype=bool), np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    rng = np.random.default_rng(seed)
    values = np.array([auroc(y[idx], s[idx]) for idx in rng.integers(0, len(y), size=(n_boot, len(y)))])
    return _interval(auroc(y, s), values, alpha)


def _hist_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from positive / negative histograms over ordered bins ``[..., n_bins]``."""
    below = np.cumsum(neg, axis=-1) - neg
    P, N = pos.sum(-1), neg.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((pos * below).sum(-1) + 0.5 * (pos * neg).sum(-1)) / (P * N)


def pixel_auroc(heatmaps: np.ndarray, masks: np.ndarray, n_bins: int = 1000, n_boot: int = 1000, seed: int = 0,
                alpha: float = 0.05) -> dict:
    """Pixel AUROC of heat maps ``[N, H, W]`` against boolean defect masks ``[N, H, W]``, bootstrap over images."""
    heatmaps, masks = np.asarray(heatmaps, dtype=np.float32), np.asarray(masks, dtype=bool)
    if heatmaps.shape != masks.shape:
        raise ValueError(f"heat maps {heatmaps.shape} and masks {masks.shape} differ in shape")
    if not masks.any() or masks.all():
        raise ValueError("pixel AUROC needs both defect and defect-free pixels")
    flat = heatmaps.reshape(len(heatmaps), -1)
    rng = np.random.default_rng(seed)
    sample = flat.ravel()[rng.integers(0, flat.size, size=min(flat.size, 200_000))]
    edges = np.unique(np.quantile(sample, np.linspace(0, 1, n_bins + 1)[1:-1]))
    bins = np.searchsorted(edges, flat, side="right")
    nb = len(edges) + 1
    m = masks.reshape(len(masks), -1)
    pos = np.stack([np.bincount(b[mi], minlength=nb) for b, mi in zip(bins, m)]).astype(np.float64)
    neg = np.stack([np.bincount(b[~mi], minlength=nb) for b, mi in zip(bins, m)]).astype(np.float64)
    point = float(_hist_auroc(pos.sum(0), neg.sum(0)))
    counts = rng.multinomial(len(pos), np.full(len(pos), 1 / len(pos)), size=n_boot).astype(np.float64)
    return _interval(point, _hist_auroc(counts @ pos, counts @ neg), alpha)


def boxes_to_mask(boxes: Sequence[Sequence[float]], original_size: tuple[int, int], size: int) -> np.ndarray:
    """Boolean mask ``[size, size]`` of boxes ``(x1, y1, x2, y2)`` given in pixels of an image
    of ``original_size`` (width, height), scaled like the image was."""
    width, height = original_size
    mask = np.zeros((size, size), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        c1, c2 = int(np.floor(x1 * size / width)), int(np.ceil(x2 * size / width))
        r1, r2 = int(np.floor(y1 * size / height)), int(np.ceil(y2 * size / height))
        mask[max(r1, 0):min(r2, size), max(c1, 0):min(c2, size)] = True
    return mask


def masks_from_box_snapshot(snapshot: dict, paths: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(masks ``[N, size, size]``, known ``[N]``): the defect regions of each image in ``paths``
    from a box snapshot's items (boxes in pixels of the stored width x height); ``known`` is
    False for images the box snapshot does not cover (their regions are not known)."""
    items = {it["path"]: it for it in snapshot["items"]}
    masks = np.zeros((len(paths), size, size), dtype=bool)
    known = np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        item = items.get(path)
        if item is None or not item.get("width") or not item.get("height"):
            continue
        known[i] = True
        masks[i] = boxes_to_mask([(b["x1"], b["y1"], b["x2"], b["y2"]) for b in item["boxes"]],
                                 (item["width"], item["height"]), size)
    return masks, known


def _rate(flags: np.ndarray, n_boot: int, seed: int, alpha: float) -> dict:
    if flags.size == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    values = flags[rng.integers(0, flags.size, size=(n_boot, flags.size))].mean(1)
    return {**_interval(float(flags.mean()), values, alpha), "n": int(flags.size)}


def evaluate_anomaly(is_anomaly: np.ndarray, scores: np.ndarray, threshold: float | None,
                     heatmaps: np.ndarray | None = None, masks: np.ndarray | None = None,
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """All metrics of one test set: image AUROC; at the threshold, the false-alarm rate on good
    images and the detection rate on anomalies; pixel AUROC when defect masks are given."""
    y = np.asarray(is_anomaly, dtype=bool)
    metrics: dict = {"n_test_good": int((~y).sum()), "n_test_anomalous": int(y.sum())}
    if y.any() and (~y).any():
        metrics["image_auroc"] = image_auroc(y, scores, n_boot, seed, alpha)
    if threshold is not None:
        flagged = np.asarray(scores) > threshold
        metrics["threshold"] = float(threshold)
        metrics["false_alarm_rate"] = _rate(flagged[~y], n_boot, seed, alpha)
        metrics["detection_rate"] = _rate(flagged[y], n_boot, seed, alpha)
    if masks is not None and heatmaps is not None:
        metrics["pixel_auroc"] = pixel_auroc(heatmaps, masks, n_boot=n_boot, seed=seed, alpha=alpha)
    return metrics


def _cell(m: dict) -> str:
    return f"{m['value']:.3f} ({m['ci_low']:.3f}-{m['ci_high']:.3f})"


def markdown_report(title: str, metrics: dict, context: dict) -> str:
    """The evaluation as markdown: context lines, then one row per metric with its 95 % interval."""
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in context.items()] + ["", "| metric | value (95% CI) |",
                                                                                     "| --- | --- |"]
    for name in ("image_auroc", "pixel_auroc", "false_alarm_rate", "detection_rate"):
        if name in metrics:
            extra = f" (n = {metrics[name]['n']})" if "n" in metrics[name] else ""
            lines.append(f"| {name.replace('_', ' ')} | {_cell(metrics[name])}{extra} |")
    if "threshold" in metrics:
        lines.append(f"| threshold (score >) | {metrics['threshold']:.4g} |")
    lines += ["", f"Test images: {metrics['n_test_good']} good, {metrics['n_test_anomalous']} anomalous. "
              "Intervals: percentile bootstrap over test images."]
    return "\n".join(lines) + "\n"


def pick_examples(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float | None,
                  n: int = 8) -> tuple[np.ndarray, list[str]]:
    """(indices, titles) of the examples a report shows: the highest-scoring anomalies and the
    highest-scoring good images, half each (what an inspector would look at first: the
    clearest detections and the nearest false alarms), titled with class, score and verdict."""
    scores, y = np.asarray(scores), np.asarray(is_anomaly, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    pick = np.r_[order[y[order]][:n // 2], order[~y[order]][:n - min(n // 2, int(y.sum()))]][:n]
    flagged = (lambda s: s > threshold) if threshold is not None else (lambda s: False)
    return pick, [f"{'anomaly' if y[i] else 'good'} {scores[i]:.2f}{' FLAGGED' if flagged(scores[i]) else ''}"
                  for i in pick]


def heatmap_overlays(images: np.ndarray, heatmaps: np.ndarray, titles: Sequence[str],
                     masks: np.ndarray | None = None, vmax: float | None = None, columns: int = 4,
                     vmin: float | None = None) -> bytes:
    """A PNG grid: each image in gray with its heat map over it (and its defect regions outlined);
    the colour scale runs from ``vmin`` to ``vmax`` (default: the heat maps' own range)."""
    if len(images) == 0:
        raise ValueError("no images to draw")
    vmax = float(np.max(heatmaps)) if vmax is None else vmax
    vmin = float(np.min(heatmaps)) if vmin is None else vmin
    fig, axes = image_grid(len(images), columns, (3, 3.2))
    for i, ax in enumerate(axes[:len(images)]):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.imshow(heatmaps[i], cmap="jet", alpha=0.45, vmin=vmin, vmax=vmax)
        if masks is not None and masks[i].any():
            ax.contour(masks[i].astype(float), levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(titles[i], fontsize=8)
    return figure_png(fig)


def sweep_markdown(title: str, table: Sequence[dict], context: dict) -> str:
    """Backbones compared for anomaly detection (``summary_table`` rows) as markdown: image AUROC,
    pixel AUROC, and the false-alarm and detection rates at each model's threshold."""
    return backbone_sweep_markdown(
        title, table, context, [("image_auroc", "image AUROC (95% CI)"), ("pixel_auroc", "pixel AUROC"),
                                ("false_alarm_rate", "false alarms (good test images)"),
                                ("detection_rate", "detected anomalies")],
        "good images fitted", "Every model is the same memory-bank recipe on its backbone's patch features, fitted "
        "on the same good images (nested across fractions for one seed), thresholded on the same held-out good "
        "images and scored on the snapshot's fixed test split. Intervals: percentile bootstrap over test images "
        "(seed means).")
