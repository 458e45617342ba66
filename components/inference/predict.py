"""Batch prediction with a registered model: predict decoded images in batches (GPU when there
is one, for a classifier) with a predictor of the model's kind (components/inference/
predictors.py), and, for a classifier, its table of one row per image.

The per-image table is CSV (no extra dependency to read it back): ``image, sha256, class,
confidence, p_<class>..., embedding_id``; ``embedding_id`` is ``<embeddings sha256 prefix>:<row>``,
the row of the batch's embeddings file (float32 ``.npy``) that holds the image's pooled
features, the same features the drift monitor tests.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np

from components.training.adapt import Classifier, predict_with_features


def classifier_from_checkpoint(checkpoint: dict) -> Classifier:
    """The classifier in a classifier checkpoint (flows/adapt.py writes them), in eval mode;
    the class names come from the checkpoint when the state does not carry them."""
    if "classifier" not in checkpoint:
        raise ValueError(f"not a classifier checkpoint (kind={checkpoint.get('kind')!r}): "
                         "predict, export and serve need a classifier, not a backbone")
    classifier = Classifier.from_state(checkpoint["classifier"])
    classifier.classes = classifier.classes or list(checkpoint.get("classes") or [])
    if len(classifier.classes) != classifier.num_classes:
        classifier.classes = [f"class_{i}" for i in range(classifier.num_classes)]
    return classifier.eval()


def predict_arrays(classifier: Classifier, images: np.ndarray, batch_size: int = 256,
                   device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities float32 [N, C], pooled features float32 [N, D]) of uint8 images [N, H, W]."""
    return predict_with_features(classifier, images, batch_size=batch_size, device=device)


def prediction_rows(names: list[str], shas: list[str], proba: np.ndarray, classes: list[str],
                    embeddings_tag: str, first_row: int = 0) -> list[dict]:
    rows = []
    for i, (name, sha, p) in enumerate(zip(names, shas, proba)):
        top = int(np.argmax(p))
        rows.append({"image": name, "sha256": sha, "class": classes[top], "confidence": float(p[top]),
                     "probabilities": {c: float(v) for c, v in zip(classes, p)},
                     "embedding_id": f"{embeddings_tag}:{first_row + i}"})
    return rows


def predictions_csv(rows: list[dict], classes: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "sha256", "class", "confidence", *[f"p_{c}" for c in classes], "embedding_id"])
    for r in rows:
        writer.writerow([r["image"], r["sha256"], r["class"], f"{r['confidence']:.6f}",
                         *[f"{r['probabilities'][c]:.6f}" for c in classes], r["embedding_id"]])
    return out.getvalue().encode()


def read_predictions_csv(data: bytes) -> list[dict]:
    """The rows of :func:`predictions_csv` back (probabilities as floats)."""
    rows = []
    for r in csv.DictReader(io.StringIO(data.decode())):
        probs = {k[2:]: float(v) for k, v in r.items() if k.startswith("p_")}
        rows.append({"image": r["image"], "sha256": r["sha256"], "class": r["class"],
                     "confidence": float(r["confidence"]), "probabilities": probs, "embedding_id": r["embedding_id"]})
    return rows


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def per_class_report(labels: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Accuracy and, per class, recall and support on labeled images: where a model fails."""
    labels = np.asarray(labels, np.int64)
    pred = np.asarray(proba).argmax(axis=1)
    per_class = {}
    for i, name in enumerate(classes):
        mask = labels == i
        per_class[name] = {"support": int(mask.sum()),
                           "recall": float((pred[mask] == i).mean()) if mask.any() else None}
    return {"n": int(len(labels)), "accuracy": float((pred == labels).mean()) if len(labels) else None,
            "per_class": per_class}


@dataclass
class PredictionResult:
    """Everything one batch run produced, in input order (failures apart): a record per image
    (components/inference/predictors.py says what each kind's hold) and the kind's arrays."""
    names: list[str]
    sha256: list[str]
    records: list[dict]
    arrays: dict[str, np.ndarray]  # classifier: proba [n, C], embeddings [n, D]
    failures: list[dict]  # {"name", "reason", "detail"}
    ignored: list[str]  # files skipped by extension

    @property
    def proba(self) -> np.ndarray | None:
        return self.arrays.get("proba")

    @property
    def embeddings(self) -> np.ndarray | None:
        return self.arrays.get("embeddings")


def predict_source(predictor, source, batch_size: int = 256, device: str = "auto", progress: bool = True,
                   on_batch: Callable | None = None) -> PredictionResult:
    """Predict every item of an :class:`components.inference.inputs.InputSource` with a predictor
    of any kind (components/inference/predictors.py), decoding and predicting ``batch_size``
    images at a time (memory stays bounded); unusable files are collected in ``failures`` and
    never stop the others. ``on_batch(names, images, output)`` sees each batch's output before
    it is let go (the anomaly heat maps are written there, never all held at once)."""
    from tqdm.auto import tqdm

    from components.inference.inputs import iter_batches

    names, shas, records, arrays, failures = [], [], [], {}, []
    with tqdm(total=len(source.items), desc="predict", unit="img", disable=not progress) as bar:
        for batch in iter_batches(source.items, predictor.input_size, batch_size, progress=bar.update):
            failures += batch.failures
            if len(batch.names):
                out = predictor.predict(batch.images, batch.sizes, batch_size, device)
                if on_batch is not None:
                    on_batch(batch.names, batch.images, out)
                names += batch.names
                shas += batch.sha256
                records += out.records
                for key in ("proba", "embeddings"):  # what is kept of a batch: never the heat maps
                    if key in out.arrays:
                        arrays.setdefault(key, []).append(out.arrays[key])
    kept = {k: np.concatenate(v) for k, v in arrays.items()}
    if predictor.kind == "classifier" and not names:
        kept = {"proba": np.zeros((0, len(predictor.classes)), np.float32), "embeddings": np.zeros((0, 0), np.float32)}
    return PredictionResult(names, shas, records, kept, failures, list(source.ignored))
