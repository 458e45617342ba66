"""The model registry's tables: datasets, label snapshots, runs, models, aliases,
evaluations and promotions; and what using a model leaves behind: its exports and drift
references (``model_artifact``) and its prediction batches (``prediction_batch``).

All timestamps are timezone-aware UTC. JSON columns hold plain JSON-able data (params,
metrics, evidence). Rows are append-only except ``Alias`` (moved by promotions) and
``Run`` (finished once); versions are immutable.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, CheckConstraint, Column, DateTime, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Named constraints, so that Alembic (and SQLite batch migrations) can address them
# later; must be set before any table is defined.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A DateTime that always comes back timezone-aware UTC.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored
    as naive UTC and tagged as UTC again on the way out. Naive input is refused rather
    than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: registry timestamps must be timezone-aware")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _created() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime)


def _json_dict() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Dataset(SQLModel, table=True):
    __tablename__ = "dataset"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    created_at: datetime = _created()


class DatasetVersion(SQLModel, table=True):
    """One immutable, DVC-tracked content state of a dataset."""

    __tablename__ = "dataset_version"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("dataset_id", "content_hash"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="dataset.id", index=True)
    version: int
    content_hash: str
    manifest_uri: str
    manifest_sha256: str
    dvc_md5: str
    dvc_file: str = Field(sa_type=Text)  # text of the .dvc file: enough to `dvc pull` it back
    n_images: int
    n_bytes: int
    n_quarantined: int = 0
    source_path: str
    flow_run_id: Optional[str] = None
    created_at: datetime = _created()


class LabelSnapshot(SQLModel, table=True):
    """An immutable set of labels for one dataset version (numbered per dataset version)."""

    __tablename__ = "label_snapshot"
    __table_args__ = (
        UniqueConstraint("dataset_version_id", "version"),
        UniqueConstraint("dataset_version_id", "content_hash"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    dataset_version_id: int = Field(foreign_key="dataset_version.id", index=True)
    version: int
    content_hash: str
    classes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    n_labeled: int
    n_issues: int = 0
    source: str  # an export file path, or e.g. "label-studio project 3"
    artifact_uri: str
    sha256: str
    flow_run_id: Optional[str] = None
    created_at: datetime = _created()


class Run(SQLModel, table=True):
    """One execution of a pipeline step (pretrain, adapt, evaluate, ...)."""

    __tablename__ = "run"
    __table_args__ = (CheckConstraint("status IN ('running', 'completed', 'failed')", name="status"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str = Field(index=True)
    flow_run_id: Optional[str] = None
    status: str = "running"  # running | completed | failed
    params: dict[str, Any] = _json_dict()
    code_revision: Optional[str] = None
    started_at: datetime = _created()
    finished_at: Optional[datetime] = Field(default=None, sa_type=UTCDateTime)
    error: Optional[str] = Field(default=None, sa_type=Text)


class RegisteredModel(SQLModel, table=True):
    __tablename__ = "registered_model"
    __table_args__ = (CheckConstraint("kind IN ('backbone', 'classifier', 'anomaly', 'detector', 'tokenizer')", name="kind"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    kind: str  # backbone | classifier
    description: str = Field(default="", sa_type=Text)
    created_at: datetime = _created()


class ModelVersion(SQLModel, table=True):
    """An immutable, numbered version of a registered model, with its lineage."""

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_model.id", index=True)
    version: int
    dataset_version_id: Optional[int] = Field(default=None, foreign_key="dataset_version.id")
    label_snapshot_id: Optional[int] = Field(default=None, foreign_key="label_snapshot.id")
    parent_id: Optional[int] = Field(default=None, foreign_key="model_version.id")  # parent backbone
    run_id: Optional[int] = Field(default=None, foreign_key="run.id")
    flow_run_id: Optional[str] = None
    code_revision: Optional[str] = None
    params: dict[str, Any] = _json_dict()
    metrics: dict[str, Any] = _json_dict()
    artifact_uri: str
    sha256: str
    created_at: datetime = _created()


class Alias(SQLModel, table=True):
    """A movable name (production, staging, baseline) for one version of a model."""

    __tablename__ = "alias"
    __table_args__ = (UniqueConstraint("model_id", "name"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_model.id")
    name: str
    model_version_id: int = Field(foreign_key="model_version.id")
    updated_at: datetime = _created()


class Evaluation(SQLModel, table=True):
    """One evaluation sweep on a label snapshot's fixed test split."""

    __tablename__ = "evaluation"

    id: Optional[int] = Field(default=None, primary_key=True)
    label_snapshot_id: int = Field(foreign_key="label_snapshot.id", index=True)
    run_id: Optional[int] = Field(default=None, foreign_key="run.id")
    flow_run_id: Optional[str] = None
    report_uri: str
    report_sha256: str
    plot_uri: Optional[str] = None
    plot_sha256: Optional[str] = None
    results_uri: Optional[str] = None
    results_sha256: Optional[str] = None
    summary: dict[str, Any] = _json_dict()
    created_at: datetime = _created()


class EvaluationResult(SQLModel, table=True):
    """One cell of the sweep: backbone x method x label fraction x seed."""

    __tablename__ = "evaluation_result"

    id: Optional[int] = Field(default=None, primary_key=True)
    evaluation_id: int = Field(foreign_key="evaluation.id", index=True)
    backbone: str
    model_version_id: Optional[int] = Field(default=None, foreign_key="model_version.id")
    method: str
    fraction: float
    seed: int
    n_train: int
    # {"accuracy": {"value", "ci_low", "ci_high"}, "macro_f1": {...}, "balanced_accuracy": {...}}
    metrics: dict[str, Any] = _json_dict()


class PromotionEvent(SQLModel, table=True):
    """The record of one promotion decision and its evidence."""

    __tablename__ = "promotion_event"
    __table_args__ = (CheckConstraint("decision IN ('promoted', 'rejected', 'rollback')", name="decision"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_model.id", index=True)
    alias: str
    decision: str  # promoted | rejected | rollback
    candidate_version_id: Optional[int] = Field(default=None, foreign_key="model_version.id")
    previous_version_id: Optional[int] = Field(default=None, foreign_key="model_version.id")
    new_version_id: Optional[int] = Field(default=None, foreign_key="model_version.id")
    evaluation_id: Optional[int] = Field(default=None, foreign_key="evaluation.id")
    evidence: dict[str, Any] = _json_dict()
    actor: str
    reason: str = Field(default="", sa_type=Text)
    created_at: datetime = _created()


class ModelArtifact(SQLModel, table=True):
    """A file derived from a model version: an ONNX or TorchScript export with the result of
    its parity check, the drift reference its prediction batches are compared with, or a grid
    of images a sequential backbone generated (``samples``, with how they were drawn and their
    Fréchet distances in ``details``)."""

    __tablename__ = "model_artifact"
    __table_args__ = (CheckConstraint("kind IN ('onnx', 'torchscript', 'drift_reference', 'samples')", name="kind"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    kind: str  # onnx | torchscript | drift_reference | samples
    artifact_uri: str
    sha256: str
    size: int
    details: dict[str, Any] = _json_dict()  # opset, inputs/outputs, preprocessing; the reference's make-up
    checks: dict[str, Any] = _json_dict()  # the parity check (onnxruntime/TorchScript vs torch) and its verdict
    flow_run_id: Optional[str] = None
    created_at: datetime = _created()


class PredictionBatch(SQLModel, table=True):
    """One `dlvm predict` run: which model version saw which inputs, where the per-image
    predictions are, and how the batch compared with the model's training data."""

    __tablename__ = "prediction_batch"

    id: Optional[int] = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    source: str = Field(sa_type=Text)  # a folder, dataset:NAME:V or s3://bucket/prefix
    n_images: int  # predicted
    n_failed: int = 0  # unreadable, reported per file in the summary
    predictions_uri: str  # CSV, one row per image
    predictions_sha256: str
    summary_uri: str  # JSON: counts, failures, drift report
    summary_sha256: str
    embeddings_uri: Optional[str] = None  # float32 .npy [n_images, D], rows = the CSV's embedding_id
    embeddings_sha256: Optional[str] = None
    class_counts: dict[str, Any] = _json_dict()
    drift_alert: Optional[bool] = None  # None: not tested (too few images or no reference)
    drift: dict[str, Any] = _json_dict()
    flow_run_id: Optional[str] = None
    created_at: datetime = _created()


RUN_STATUSES = ("running", "completed", "failed")
MODEL_KINDS = ("backbone", "classifier", "anomaly", "detector", "tokenizer")
DECISIONS = ("promoted", "rejected", "rollback")
MODEL_ARTIFACT_KINDS = ("onnx", "torchscript", "drift_reference", "samples")
