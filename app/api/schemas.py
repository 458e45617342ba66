"""Request and response bodies of the registry API: its OpenAPI spec is built from these.

Responses mirror the plain dicts of ``components.registry.queries`` and ``monitoring``;
free-form JSON (params, metrics, evidence, summaries) stays ``dict``.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

# A model or dataset name and an alias: the one rule of components/names.py, which the
# command line, the flows and the registry writes apply too (re-exported for deps.py).
from components.names import ALIAS_PATTERN, NAME_PATTERN  # noqa: F401


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    schema_revision: Optional[str]


class ModelSummary(BaseModel):
    name: str
    kind: str
    description: str
    n_versions: int
    latest_version: Optional[int]
    aliases: dict[str, int] = Field(description="alias name -> version number")
    created_at: Optional[str]


class ModelVersionOut(BaseModel):
    id: int
    version: int
    created_at: Optional[str]
    aliases: list[str]
    dataset: Optional[dict[str, Any]]
    label_snapshot: Optional[dict[str, Any]]
    parent: Optional[str] = Field(description="the parent backbone as 'name:version'")
    parent_id: Optional[int]
    run_id: Optional[int]
    flow_run_id: Optional[str]
    code_revision: Optional[str]
    params: dict[str, Any]
    metrics: dict[str, Any]
    artifact_uri: str
    sha256: str


class PromotionOut(BaseModel):
    id: int
    model: Optional[str] = None
    alias: str
    decision: Literal["promoted", "rejected", "rollback"]
    candidate_version: Optional[int]
    previous_version: Optional[int]
    new_version: Optional[int]
    evaluation_id: Optional[int]
    evidence: dict[str, Any]
    actor: str
    reason: str
    created_at: Optional[str]


class ModelDetail(BaseModel):
    name: str
    kind: str
    description: str
    created_at: Optional[str]
    aliases: dict[str, int]
    versions: list[ModelVersionOut]
    promotions: list[PromotionOut]


class LineageNode(BaseModel):
    """One step of a model version's history; the other fields depend on ``kind``."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["dataset_version", "label_snapshot", "model_version"]
    id: int
    ref: str


class LabelSnapshotOut(BaseModel):
    id: int
    version: int
    n_labeled: int
    n_issues: int
    classes: list[str]
    source: str
    content_hash: str
    created_at: Optional[str]


class DatasetVersionOut(BaseModel):
    id: int
    version: int
    n_images: int
    n_bytes: int
    n_quarantined: int
    content_hash: str
    dvc_md5: str
    source_path: str
    flow_run_id: Optional[str]
    created_at: Optional[str]
    label_snapshots: list[LabelSnapshotOut]


class DatasetSummary(BaseModel):
    name: str
    n_versions: int
    latest_version: Optional[int]
    n_images: Optional[int]
    content_hash: Optional[str]
    created_at: Optional[str]


class DatasetHistory(BaseModel):
    name: str
    created_at: Optional[str]
    versions: list[DatasetVersionOut]


class EvaluationSummary(BaseModel):
    id: int
    label_snapshot_id: int
    flow_run_id: Optional[str]
    summary: dict[str, Any]
    created_at: Optional[str]


class EvaluationDetail(BaseModel):
    id: int
    label_snapshot_id: int
    run_id: Optional[int]
    flow_run_id: Optional[str]
    report: dict[str, Any]
    plot: Optional[dict[str, Any]]
    results_file: Optional[dict[str, Any]]
    summary: dict[str, Any]
    created_at: Optional[str]
    results: list[dict[str, Any]]


class RunOut(BaseModel):
    id: int
    kind: str
    status: Literal["running", "completed", "failed"]
    flow_run_id: Optional[str]
    error: Optional[str]
    started_at: Optional[str]
    finished_at: Optional[str]


class FlowRunOut(BaseModel):
    id: str
    name: str
    flow: str
    state: str
    start_time: str
    url: Optional[str] = Field(description="the run in the Prefect UI, when one is known")


class FlowRuns(BaseModel):
    prefect_ui: Optional[str]
    runs: list[FlowRunOut]
    error: Optional[str] = Field(None, description="why Prefect could not be read, when it could not")


class Alert(BaseModel):
    kind: Literal["failed_run", "stale_production", "metric_drop", "drift"]
    severity: Literal["error", "warning"]
    model: Optional[str]
    message: str
    run_id: Optional[int] = None
    flow_run_id: Optional[str] = None
    batch_id: Optional[int] = Field(None, description="the prediction batch that drifted (kind drift)")


class Box(BaseModel):
    """One box a detector found, in pixels of the image as sent."""
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class")
    score: float
    x1: float
    y1: float
    x2: float
    y2: float


class Prediction(BaseModel):
    """One image's prediction by the version an alias (or `?version=`) points at; the fields
    present are those of the model's kind."""
    model_config = ConfigDict(populate_by_name=True)

    model: str
    alias: Optional[str] = Field(None, description="the alias asked for (absent when a version number was)")
    version: int
    kind: Literal["classifier", "anomaly", "detector"]
    class_: Optional[str] = Field(None, alias="class", description="classifier: the predicted class")
    confidence: Optional[float] = Field(None, description="classifier: its probability")
    probabilities: Optional[dict[str, float]] = Field(None, description="classifier: every class's probability")
    score: Optional[float] = Field(None, description="anomaly: the image's anomaly score")
    anomalous: Optional[bool] = Field(None, description="anomaly: score > threshold")
    threshold: Optional[float] = Field(None, description="anomaly: set on held-out good images for "
                                                         "false_alarm_rate")
    false_alarm_rate: Optional[float] = None
    boxes: Optional[list[Box]] = Field(None, description="detector: boxes scoring at least min_score, best first")
    min_score: Optional[float] = None
    width: Optional[int] = Field(None, description="detector: the image's width, the frame of the boxes")
    height: Optional[int] = None


class LabelingProgress(BaseModel):
    configured: bool = Field(description="whether DLVM_LABEL_STUDIO_URL is set")
    dataset: str
    project: Optional[dict[str, Any]] = Field(None, description="the dataset's Label Studio project and its counts")
    error: Optional[str] = None


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN/Infinity: 422, not a 500
    version: int = Field(ge=1, description="the candidate version of this model")
    alias: str = Field("production", pattern=ALIAS_PATTERN)
    margin: float = Field(0.0, ge=-1.0, le=1.0, description="how much better than the holder and generic backbones")
    metric: Literal["macro_f1", "balanced_accuracy", "accuracy"] = Field(
        "macro_f1", description="what the gate decides on (accuracy is always reported)")
    evaluation_id: Optional[int] = Field(None, ge=1, description="default: the latest on the candidate's snapshot")
    actor: str = Field("api", min_length=1, max_length=100)
    reason: str = Field("", max_length=1000)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alias: str = Field("production", pattern=ALIAS_PATTERN)
    actor: str = Field("api", min_length=1, max_length=100)
    reason: str = Field("manual rollback", max_length=1000)


class PromotionDecision(BaseModel):
    model: str
    alias: str
    decision: Literal["promoted", "rejected", "rollback"]
    event_id: int
    version: int = Field(description="the version the decision is about (the rollback target for rollbacks)")
    gate: Optional[dict[str, Any]] = None


class Problem(BaseModel):
    detail: str
