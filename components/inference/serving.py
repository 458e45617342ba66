"""The prediction endpoint's model holder: the model an alias (or a version number) points at,
as a predictor of its registered kind (components/inference/predictors.py), kept loaded and
reloaded only when the alias moves (one indexed registry read per request tells).

torch is imported on the first prediction, not with this module: the registry API that
holds one of these starts (and serves reads) without it."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.inference.inputs import decode_image_bytes_sized
from components.registry import queries
from components.registry.db import read_session
from components.registry.tables import RegisteredModel
from components.settings import Settings
from components.storage import open_store


@dataclass
class LoadedModel:
    """A model ready to predict, with the registry identity it was loaded as."""
    ref: str  # name:version
    version: int
    model_version_id: int
    predictor: Any  # a predictor of components/inference/predictors.py


class ServedModels:
    """``predict(name, alias, image_bytes, version=None)`` with the model the alias (or
    ``version``) holds, loaded once per version."""

    def __init__(self, settings: Settings, device: str = "cpu"):
        self.settings = settings
        self.device = device
        self.loads = 0  # how many times a checkpoint was read and built (the reload test counts them)
        self._held: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def _holder(self, name: str, alias: str, version: int | None):
        with read_session(self.settings) as session:
            if version is not None:  # anomaly models and detectors have no aliases: they are asked by number
                row = queries.get_model_version(session, name, version)
            else:
                row = queries.get_alias_version(session, name, alias)
                if row is None:
                    raise queries.NotFound(f"model {name!r} has no version with alias {alias!r}")
            return row, session.get(RegisteredModel, row.model_id).kind

    def model(self, name: str, alias: str, version: int | None = None) -> LoadedModel:
        """The :class:`LoadedModel` ``name@alias`` (or ``name:version``) holds now."""
        row, kind = self._holder(name, alias, version)
        from components.inference.predictors import check_predicts
        check_predicts(kind, f"{name}:{row.version}")
        key = (name, alias if version is None else f"v{version}")
        held = self._held.get(key)
        if held is not None and held.model_version_id == row.id:
            return held
        with self._lock:  # one load per move, however many requests arrive meanwhile
            held = self._held.get(key)
            if held is None or held.model_version_id != row.id:
                from components.inference.predictors import predictor_for
                from components.models.checkpoint import load_checkpoint
                checkpoint = load_checkpoint(open_store(self.settings).get_bytes(row.artifact_uri, row.sha256))
                predictor = predictor_for(kind, checkpoint, f"{name}:{row.version}").to(self.device)
                held = LoadedModel(f"{name}:{row.version}", row.version, row.id, predictor)
                self._held[key] = held
                self.loads += 1
        return held

    def predict(self, name: str, alias: str, data: bytes, version: int | None = None,
                min_score: float | None = None) -> dict:
        """One image's prediction; ``min_score``: a detector's reporting score for this request."""
        held = self.model(name, alias, version)
        predictor = held.predictor
        if min_score is not None:
            if predictor.kind != "detector":
                raise ValueError(f"min_score is for detectors; {held.ref} is of kind {predictor.kind}")
            predictor = predictor.reporting_at(min_score)
        image, size = decode_image_bytes_sized(data, predictor.input_size)
        out = predictor.predict(np.array(image)[None], [size], 1, self.device)  # writable: torch shares it
        return {"model": name, "alias": alias if version is None else None, "version": held.version,
                "kind": held.predictor.kind, **out.records[0]}
