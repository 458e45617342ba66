"""Batch prediction with a registered classifier: load it from its checkpoint, predict
decoded images in batches (GPU when there is one), and write one row per image.

The per-image table is CSV (no extra dependency to read it back): ``image, sha256, class,
confidence, p_<class>..., embedding_id``; ``embedding_id`` is ``<embeddings sha256 prefix>:<row>``,
the row of the batch's embeddings file (float32 ``.npy``) that holds the image's pooled
features, the same features the drift monitor tests.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from components.training.adapt import Classifier, predict_with_features


@dataclass
class LoadedClassifier:
    """A classifier ready to predict, with the registry identity it was loaded as."""
    ref: str  # name:version
    model_version_id: int
    classifier: Classifier
    classes: list[str]


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
    """Everything one batch run produced, in input order (failures apart)."""
    names: list[str]
    sha256: list[str]
    proba: np.ndarray  # float32 [n, C]
    embeddings: np.ndarray  # float32 [n, D]
    failures: list[dict]  # {"name", "reason", "detail"}
    ignored: list[str]  # files skipped by extension


def predict_source(classifier: Classifier, source, batch_size: int = 256, device: str = "auto",
                   progress: bool = True) -> PredictionResult:
    """Predict every item of an :class:`components.inference.inputs.InputSource`, decoding and
    predicting ``batch_size`` images at a time (memory stays bounded); unusable files are
    collected in ``failures`` and never stop the others."""
    from tqdm.auto import tqdm

    from components.inference.inputs import iter_batches, model_input_size

    size = model_input_size(classifier)
    names, shas, probs, embs, failures = [], [], [], [], []
    with tqdm(total=len(source.items), desc="predict", unit="img", disable=not progress) as bar:
        for batch in iter_batches(source.items, size, batch_size, progress=bar.update):
            failures += batch.failures
            if len(batch.names):
                p, e = predict_arrays(classifier, batch.images, batch_size=batch_size, device=device)
                names += batch.names
                shas += batch.sha256
                probs.append(p)
                embs.append(e)
    num_classes = classifier.num_classes
    proba = np.concatenate(probs) if probs else np.zeros((0, num_classes), np.float32)
    embeddings = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
    return PredictionResult(names, shas, proba, embeddings, failures, list(source.ignored))
