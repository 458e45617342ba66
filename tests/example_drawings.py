"""A detector and an anomaly model in a registry with the example drawings their evaluation
leaves behind (real PNGs from the evaluation's own drawing functions, in the artifact store,
under each version's ``params.artifacts``), and a second detector version without one: what
the API and dashboard tests read."""
from __future__ import annotations

import numpy as np

from components.evaluation.anomaly import heatmap_overlays
from components.evaluation.detection import draw_boxes
from components.registry import writes
from components.registry.db import session_scope
from components.settings import Settings
from components.storage import open_store

DETECTOR, ANOMALY = "pcb-detector", "pcb-anomaly"


def register_example_drawings(settings: Settings) -> dict[str, bytes]:
    """Register ``DETECTOR`` v1 (with its box drawing) and v2 (without), ``ANOMALY`` v1 (with its
    heat maps); returns each model's PNG bytes."""
    images = (np.arange(2 * 48 * 48) % 251).astype(np.uint8).reshape(2, 48, 48)
    truths = [{"boxes": np.array([[4, 4, 20, 20]], np.float32), "labels": np.array([0])}] * 2
    preds = [{"boxes": np.array([[5, 5, 21, 19]], np.float32), "scores": np.array([0.9], np.float32),
              "labels": np.array([0])}] * 2
    pngs = {DETECTOR: draw_boxes(images, preds, truths, ["short"], 0.3),
            ANOMALY: heatmap_overlays(images, images.astype(np.float32) / 255, ["good 0.10", "anomaly 0.90"])}
    store = open_store(settings)
    with session_scope(settings) as s:
        for name, kind, key in ((DETECTOR, "detector", "boxes"), (ANOMALY, "anomaly", "heatmaps")):
            stored = store.put_bytes(pngs[name], "reports", f"{name}-{key}.png")
            writes.get_or_create_model(s, name, kind)
            writes.add_model_version(s, name, artifact_uri=f"file:///m/{name}1", sha256="7" * 64, params={
                "task": kind, "artifacts": {key: {"uri": stored.uri, "sha256": stored.sha256}}})
        writes.add_model_version(s, DETECTOR, artifact_uri="file:///m/d2", sha256="8" * 64, params={"task": "detector"})
    return pngs
