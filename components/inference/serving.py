"""The prediction endpoint's model holder: the classifier an alias points at, kept loaded
and reloaded only when the alias moves (one indexed registry read per request tells).

torch is imported on the first prediction, not with this module: the registry API that
holds one of these starts (and serves reads) without it."""
from __future__ import annotations

import threading

import numpy as np

from components.inference.inputs import decode_image_bytes, model_input_size
from components.registry import queries
from components.registry.db import read_session
from components.settings import Settings
from components.storage import open_store


class ServedModels:
    """``predict(name, alias, image_bytes)`` with the alias holder's classifier, loaded once per version."""

    def __init__(self, settings: Settings, device: str = "cpu"):
        self.settings = settings
        self.device = device
        self.loads = 0  # how many times a checkpoint was read and built (the reload test counts them)
        self._held: dict[tuple[str, str], LoadedClassifier] = {}
        self._lock = threading.Lock()

    def _holder(self, name: str, alias: str):
        with read_session(self.settings) as session:
            version = queries.get_alias_version(session, name, alias)
        if version is None:
            raise queries.NotFound(f"model {name!r} has no version with alias {alias!r}")
        return version

    def model(self, name: str, alias: str):
        """The :class:`components.inference.predict.LoadedClassifier` ``name@alias`` holds now."""
        version = self._holder(name, alias)
        held = self._held.get((name, alias))
        if held is not None and held.model_version_id == version.id:
            return held
        with self._lock:  # one load per move, however many requests arrive meanwhile
            held = self._held.get((name, alias))
            if held is None or held.model_version_id != version.id:
                from components.inference.predict import LoadedClassifier, classifier_from_checkpoint
                from components.models.checkpoint import load_checkpoint
                checkpoint = load_checkpoint(open_store(self.settings).get_bytes(version.artifact_uri, version.sha256))
                classifier = classifier_from_checkpoint(checkpoint).to(self.device)
                held = LoadedClassifier(f"{name}:{version.version}", version.id, classifier, classifier.classes)
                self._held[(name, alias)] = held
                self.loads += 1
        return held

    def predict(self, name: str, alias: str, data: bytes) -> dict:
        held = self.model(name, alias)
        from components.inference.predict import predict_arrays
        image = np.array(decode_image_bytes(data, model_input_size(held.classifier)))  # writable: torch shares it
        proba, _ = predict_arrays(held.classifier, image[None], batch_size=1, device=self.device)
        p = proba[0]
        top = int(np.argmax(p))
        return {"model": name, "alias": alias, "version": int(held.ref.rsplit(":", 1)[1]),
                "class": held.classes[top], "confidence": float(p[top]),
                "probabilities": {c: float(v) for c, v in zip(held.classes, p)}}
