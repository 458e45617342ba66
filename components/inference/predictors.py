"""What a registered model predicts for an image: one class per model kind behind one
interface, chosen once by the registered kind (:func:`predictor_for`). `dlvm predict` (the
predict flow) and the prediction endpoint both go through it, so a kind is added here once.

| kind | per image | predictions CSV (one row per image, per box for a detector) |
| --- | --- | --- |
| classifier | class, its probability, every class's probability; pooled features (drift) | ``image, sha256, class, confidence, p_<class>..., embedding_id`` |
| anomaly | score (its worst patch's distance to the good patches); anomalous when score > the threshold set on held-out good images for the stated false-alarm rate; a heat map | ``image, sha256, score, decision, threshold, false_alarm_rate`` |
| detector | boxes scoring at least ``min_score``: class, score, corners in the original image's pixels | ``image, sha256, width, height, class, score, x1, y1, x2, y2`` (an image without boxes: one row, box fields empty) |

Anomaly models and detectors run on the CPU (their scoring code keeps its tensors there).
"""
from __future__ import annotations

import copy
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

PREDICTED_KINDS = ("classifier", "anomaly", "detector")


class UnsupportedKind(ValueError):
    """A registered model of a kind that does not predict (a backbone, a tokenizer)."""


@dataclass
class BatchOutput:
    """One batch's predictions: a JSON-able record per image, and the arrays a kind keeps
    beside them (classifier: ``proba``, ``embeddings``; anomaly: ``heatmaps``, not stored)."""
    records: list[dict]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _csv(header: list[str], rows: list[list]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


class ClassifierPredictor:
    kind = "classifier"

    def __init__(self, classifier):
        from components.inference.inputs import model_input_size

        self.model, self.classes = classifier, list(classifier.classes)
        self.input_size = model_input_size(classifier)

    def to(self, device: str) -> "ClassifierPredictor":
        self.model.to(device)
        return self

    def predict(self, images: np.ndarray, sizes: list, batch_size: int, device: str) -> BatchOutput:
        from components.inference.predict import predict_arrays

        proba, embeddings = predict_arrays(self.model, images, batch_size=batch_size, device=device)
        records = []
        for p in proba:
            top = int(np.argmax(p))
            records.append({"class": self.classes[top], "confidence": float(p[top]),
                            "probabilities": {c: float(v) for c, v in zip(self.classes, p)}})
        return BatchOutput(records, {"proba": proba, "embeddings": embeddings})

    def table(self, names: list[str], shas: list[str], records: list[dict], embeddings_tag: str) -> bytes:
        from components.inference.predict import predictions_csv

        rows = [{"image": n, "sha256": s, **r, "embedding_id": f"{embeddings_tag}:{i}"}
                for i, (n, s, r) in enumerate(zip(names, shas, records))]
        return predictions_csv(rows, self.classes)

    def counts(self, records: list[dict]) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for r in records:
            counts[r["class"]] += 1
        return counts

    def summary_fields(self) -> dict:
        """What a batch summary says about how this model decided (a classifier: nothing beyond its rows)."""
        return {}


class AnomalyPredictor:
    kind = "anomaly"

    def __init__(self, model):
        if model.threshold is None:
            raise ValueError("this anomaly model has no threshold: refit it with `dlvm adapt --task anomaly`")
        self.model, self.input_size = model, model.img_size
        self.threshold, self.false_alarm_rate = float(model.threshold), model.false_alarm_rate

    def to(self, device: str) -> "AnomalyPredictor":
        return self  # CPU (see the module docstring)

    def predict(self, images: np.ndarray, sizes: list, batch_size: int, device: str) -> BatchOutput:
        scores, heatmaps = self.model.score(images)
        records = [{"score": float(s), "anomalous": bool(s > self.threshold), "threshold": self.threshold,
                    "false_alarm_rate": self.false_alarm_rate} for s in scores]
        return BatchOutput(records, {"heatmaps": heatmaps})

    def table(self, names: list[str], shas: list[str], records: list[dict], embeddings_tag: str) -> bytes:
        rate = "" if self.false_alarm_rate is None else f"{self.false_alarm_rate:g}"
        return _csv(["image", "sha256", "score", "decision", "threshold", "false_alarm_rate"],
                    [[n, s, f"{r['score']:.6g}", "anomalous" if r["anomalous"] else "normal",
                      f"{self.threshold:.6g}", rate] for n, s, r in zip(names, shas, records)])

    def counts(self, records: list[dict]) -> dict[str, int]:
        n = sum(r["anomalous"] for r in records)
        return {"anomalous": n, "normal": len(records) - n}

    def summary_fields(self) -> dict:
        return {"threshold": self.threshold, "false_alarm_rate": self.false_alarm_rate}


class DetectorPredictor:
    kind = "detector"

    def __init__(self, model, classes: list[str], img_size: int, decoding: dict, min_score: float | None = None):
        self.model, self.classes, self.input_size = model, list(classes), int(img_size)
        self.min_score = float(decoding.get("report_score_threshold", 0.3) if min_score is None else min_score)
        if not 0 <= self.min_score < 1:
            raise ValueError(f"--min-score must be in [0, 1), got {self.min_score}")
        self.max_detections, self.nms_iou = int(decoding.get("max_detections", 100)), decoding.get("nms_iou")

    def to(self, device: str) -> "DetectorPredictor":
        return self  # CPU (see the module docstring)

    def reporting_at(self, min_score: float) -> "DetectorPredictor":
        """The same detector reporting boxes from ``min_score`` (the held one is left as it is)."""
        if not 0 <= min_score < 1:
            raise ValueError(f"min_score must be in [0, 1), got {min_score}")
        other = copy.copy(self)
        other.min_score = float(min_score)
        return other

    def predict(self, images: np.ndarray, sizes: list, batch_size: int, device: str) -> BatchOutput:
        from components.training.detect import DetectConfig, predict_boxes

        cfg = DetectConfig(max_detections=self.max_detections, score_threshold=0.0, nms_iou=self.nms_iou)
        records = []
        for found, original in zip(predict_boxes(self.model, images, cfg, batch_size=batch_size), sizes):
            width, height = original or (self.input_size, self.input_size)  # unknown size: the model's frame
            sx, sy = width / self.input_size, height / self.input_size
            boxes = [{"class": self.classes[int(k)], "score": float(s), "x1": float(b[0] * sx),
                      "y1": float(b[1] * sy), "x2": float(b[2] * sx), "y2": float(b[3] * sy)}
                     for b, s, k in zip(found["boxes"], found["scores"], found["labels"]) if s >= self.min_score]
            records.append({"width": int(width), "height": int(height), "min_score": self.min_score,
                            "boxes": sorted(boxes, key=lambda b: -b["score"])})
        return BatchOutput(records)

    def table(self, names: list[str], shas: list[str], records: list[dict], embeddings_tag: str) -> bytes:
        rows = []
        for n, s, r in zip(names, shas, records):
            frame = [n, s, r["width"], r["height"]]
            rows += [frame + [b["class"], f"{b['score']:.4f}", *(f"{b[k]:.1f}" for k in ("x1", "y1", "x2", "y2"))]
                     for b in r["boxes"]] or [frame + [""] * 6]
        return _csv(["image", "sha256", "width", "height", "class", "score", "x1", "y1", "x2", "y2"], rows)

    def counts(self, records: list[dict]) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for r in records:
            for b in r["boxes"]:
                counts[b["class"]] += 1
        return counts

    def summary_fields(self) -> dict:
        return {"min_score": self.min_score}


def check_predicts(kind: str, ref: str) -> None:
    """Refuse, in one line naming it, a registered kind that does not predict (before its checkpoint is read)."""
    if kind not in PREDICTED_KINDS:
        raise UnsupportedKind(f"{ref} is a {kind}: prediction takes a classifier, an anomaly model or a detector")


def predictor_for(kind: str, checkpoint: dict, ref: str, min_score: float | None = None):
    """The predictor of a registered model of ``kind`` from its checkpoint; ``min_score``: the
    score a detector's box needs to be reported (default: the one its evaluation reported at)."""
    check_predicts(kind, ref)
    if min_score is not None and kind != "detector":
        raise ValueError(f"--min-score is for detectors; {ref} is of kind {kind}")
    if kind == "classifier":
        from components.inference.predict import classifier_from_checkpoint
        return ClassifierPredictor(classifier_from_checkpoint(checkpoint))
    if kind == "anomaly":
        from components.anomaly.patchcore import PatchCore
        return AnomalyPredictor(PatchCore.from_state(checkpoint))
    from components.models.detection import detector_from_state
    return DetectorPredictor(detector_from_state(checkpoint), checkpoint["classes"], checkpoint["img_size"],
                             dict(checkpoint.get("decoding") or {}), min_score)


def heatmap_file(folder: Path, name: str) -> Path:
    """Where the overlay of input ``name`` (a relative path or an S3 key) goes under ``folder``:
    the same sub-folders, ``.heatmap.png`` for its suffix; never outside ``folder``."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".", "..", "/")]
    if not parts:
        raise ValueError(f"no file name in {name!r}")
    return Path(folder).joinpath(*parts[:-1], PurePosixPath(parts[-1]).stem + ".heatmap.png")


def write_heatmaps(folder: Path, predictor: AnomalyPredictor, names: list[str], images: np.ndarray,
                   output: BatchOutput) -> list[Path]:
    """One heat-map overlay PNG per image (the evaluation's drawing, one image to a file). The
    colour scale runs from 0 to twice the threshold on every file, so a colour means the same
    distance everywhere and the threshold sits mid-scale."""
    from components.evaluation.anomaly import heatmap_overlays

    written = []
    for i, (name, record) in enumerate(zip(names, output.records)):
        verdict = "ANOMALOUS" if record["anomalous"] else "normal"
        png = heatmap_overlays(images[i:i + 1], output.arrays["heatmaps"][i:i + 1],
                               [f"{PurePosixPath(name).name}: {record['score']:.3g} {verdict}"],
                               vmin=0.0, vmax=max(2 * predictor.threshold, 1e-6), columns=1)
        path = heatmap_file(folder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        written.append(path)
    return written
