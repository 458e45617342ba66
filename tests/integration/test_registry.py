"""The model registry on SQLite and on a real PostgreSQL: migrations, versioning,
constraints, lineage, atomic promotions and rollbacks."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError, StatementError
from sqlmodel import Session, SQLModel, select

from components.registry import db, views
from components.registry import queries as q
from components.registry import writes as w
from components.registry.promotion import PromotionError, record_promotion, rollback
from components.registry.tables import (
    Alias,
    DatasetVersion,
    ModelArtifact,
    ModelVersion,
    PromotionEvent,
)
from components.settings import Settings

TABLES = {
    "dataset", "dataset_version", "label_snapshot", "run", "registered_model", "model_version",
    "alias", "evaluation", "evaluation_result", "promotion_event",
    "model_artifact", "prediction_batch",  # migration 0002: exports, drift references, prediction batches
}


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path):
    """The URL of an empty database (no registry tables) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'registry.db'}"
        return
    url = request.getfixturevalue("postgres_database")
    db.downgrade(url, "base")
    with db.engine_for(url).begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    """The URL of a registry at head with no rows, on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        db.upgrade(url)
        return url
    url = request.getfixturevalue("postgres_database")
    db.upgrade(url)
    with db.engine_for(url).begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(sorted(TABLES))} RESTART IDENTITY CASCADE")
    return url


@pytest.fixture
def session(url):
    with Session(db.engine_for(url), expire_on_commit=False) as s:
        yield s


def _dataset_version(s: Session, name: str = "elpv", content: str = "c1"):
    ds = w.get_or_create_dataset(s, name)
    return w.add_dataset_version(
        s, ds.id, content_hash=content, manifest_uri=f"file:///a/manifest/{content}.json",
        manifest_sha256="m" * 64, dvc_md5="d" * 32 + ".dir", dvc_file="outs:\n- md5: x\n",
        n_images=10, n_bytes=1000, source_path="/data/raw",
    )


def _snapshot(s: Session, dv_id: int, content: str = "l1"):
    return w.add_label_snapshot(
        s, dv_id, content_hash=content, classes=["good", "crack"], n_labeled=8, n_issues=1,
        source="export.json", artifact_uri=f"file:///a/labels/{content}.json", sha256="l" * 64,
    )


def _models(s: Session, n_versions: int = 3):
    """A classifier with ``n_versions`` versions; returns their ids."""
    w.get_or_create_model(s, "elpv-clf", "classifier")
    return [
        w.add_model_version(s, "elpv-clf", artifact_uri=f"file:///a/clf/{i}", sha256=f"{i}" * 64).id
        for i in range(1, n_versions + 1)
    ]


def _alias_state(url: str, alias: str = "production"):
    """(alias target version or None, number of events) read through a fresh session."""
    with Session(db.engine_for(url)) as s:
        mv = q.get_alias_version(s, "elpv-clf", alias)
        n_events = len(s.exec(select(PromotionEvent)).all())
        return (mv.version if mv else None), n_events


# --- migrations -----------------------------------------------------------------------


def test_upgrade_from_empty_creates_all_tables_and_is_idempotent(empty_url):
    assert db.current_revision(empty_url) is None
    db.upgrade(empty_url)
    names = set(sa.inspect(db.engine_for(empty_url)).get_table_names())
    assert names == TABLES | {"alembic_version"}
    assert db.current_revision(empty_url) == db.head_revision()

    db.upgrade(empty_url)  # second run: nothing to do, nothing broken
    db.ensure_schema(Settings(database_url=empty_url))
    assert db.current_revision(empty_url) == db.head_revision()

    db.downgrade(empty_url, "base")
    assert set(sa.inspect(db.engine_for(empty_url)).get_table_names()) <= {"alembic_version"}
    db.upgrade(empty_url)
    assert set(sa.inspect(db.engine_for(empty_url)).get_table_names()) == TABLES | {"alembic_version"}


def test_migration_head_matches_the_models(url):
    def diff(metadata):
        with db.engine_for(url).connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts=db.migration_options()), metadata)

    assert diff(SQLModel.metadata) == []
    # The comparison is able to see a difference at all.
    changed = sa.MetaData(naming_convention=SQLModel.metadata.naming_convention)
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["run"].append_column(sa.Column("extra", sa.Integer()))
    assert [d[0] for d in diff(changed)] == ["add_column"]


def _artifact_rows(url: str) -> list[tuple]:
    with db.engine_for(url).connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(
            "SELECT id, model_version_id, kind, artifact_uri, sha256, size, details FROM model_artifact ORDER BY id")]


def test_migration_0005_adds_samples_artifacts_to_a_filled_registry_without_loss(empty_url):
    """A registry in use at 0004 (a model, versions, an export) upgrades to the 'samples' kind with
    every row, index and foreign key kept; the downgrade drops only the samples rows."""
    db.upgrade(empty_url, "0004")
    with Session(db.engine_for(empty_url)) as s:
        ids = _models(s, 2)
        s.add(ModelArtifact(model_version_id=ids[1], kind="onnx", artifact_uri="file:///a/x.onnx", sha256="e" * 64,
                            size=123, details={"opset": 17}))
        s.commit()
    with Session(db.engine_for(empty_url)) as s, pytest.raises(IntegrityError):  # 0004 refuses the new kind
        s.add(ModelArtifact(model_version_id=ids[0], kind="samples", artifact_uri="file:///a/s.png",
                            sha256="f" * 64, size=1))
        s.flush()
    before = _artifact_rows(empty_url)
    assert [r[2] for r in before] == ["onnx"]

    db.upgrade(empty_url)
    assert db.current_revision(empty_url) == "0005" == db.head_revision()
    assert _artifact_rows(empty_url) == before
    inspector = sa.inspect(db.engine_for(empty_url))
    assert "ix_model_artifact_model_version_id" in {i["name"] for i in inspector.get_indexes("model_artifact")}
    with Session(db.engine_for(empty_url)) as s:
        assert [v.version for v in s.exec(select(ModelVersion).order_by(ModelVersion.id)).all()] == [1, 2]
        s.add(ModelArtifact(model_version_id=ids[0], kind="samples", artifact_uri="file:///a/s.png",
                            sha256="f" * 64, size=1, details={"n": 4}))
        s.commit()
    with Session(db.engine_for(empty_url)) as s, pytest.raises(IntegrityError):  # still no unknown kinds
        s.add(ModelArtifact(model_version_id=ids[0], kind="video", artifact_uri="u", sha256="0", size=1))
        s.flush()
    with Session(db.engine_for(empty_url)) as s, pytest.raises(IntegrityError):  # the foreign key survived
        s.add(ModelArtifact(model_version_id=999, kind="samples", artifact_uri="u", sha256="0", size=1))
        s.flush()
    assert [r[2] for r in _artifact_rows(empty_url)] == ["onnx", "samples"]

    db.downgrade(empty_url, "0004")
    assert _artifact_rows(empty_url) == before


def test_session_scope_upgrades_commits_and_rolls_back(empty_url, tmp_path):
    settings = Settings(home=tmp_path / "home", database_url=empty_url)
    with db.session_scope(settings) as s:
        w.get_or_create_dataset(s, "kept")
    with pytest.raises(RuntimeError, match="boom"):
        with db.session_scope(settings) as s:
            w.get_or_create_dataset(s, "discarded")
            raise RuntimeError("boom")
    with db.session_scope(settings) as s:
        assert [d["name"] for d in views.list_datasets(s)] == ["kept"]


def test_sqlite_engine_enforces_foreign_keys_and_uses_wal(tmp_path):
    url = f"sqlite:///{tmp_path / 'deep' / 'dir' / 'r.db'}"
    db.upgrade(url)
    with db.engine_for(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    with Session(db.engine_for(url)) as s, pytest.raises(IntegrityError):
        s.add(DatasetVersion(dataset_id=999, version=1, content_hash="x", manifest_uri="u",
                             manifest_sha256="s", dvc_md5="m", dvc_file="", n_images=0, n_bytes=0,
                             source_path="/"))
        s.flush()


# --- datasets, snapshots, runs, versions ----------------------------------------------


def test_dataset_versions_are_numbered_and_content_addressed(session, url):
    ds = w.get_or_create_dataset(session, "elpv")
    assert w.get_or_create_dataset(session, "elpv").id == ds.id
    v1 = _dataset_version(session, content="c1")
    v2 = _dataset_version(session, content="c2")
    other = _dataset_version(session, name="wafers", content="c1")  # same content, other dataset
    assert (v1.version, v2.version, other.version) == (1, 2, 1)
    assert q.find_dataset_version(session, ds.id, "c1").id == v1.id
    assert q.find_dataset_version(session, ds.id, "nope") is None
    assert q.latest_dataset_version(session, "elpv").id == v2.id
    assert q.get_dataset_version(session, "elpv", 1).id == v1.id
    with pytest.raises(q.AlreadyRegistered, match="version 1"):
        _dataset_version(session, content="c1")
    session.commit()

    # The database itself refuses duplicates, whatever the code in front of it does.
    with pytest.raises(IntegrityError):
        with session.begin_nested():
            session.add(DatasetVersion(dataset_id=ds.id, version=3, content_hash="c1", manifest_uri="u",
                                       manifest_sha256="s", dvc_md5="m", dvc_file="", n_images=0,
                                       n_bytes=0, source_path="/"))
    with pytest.raises(IntegrityError):
        with session.begin_nested():
            session.add(DatasetVersion(dataset_id=ds.id, version=2, content_hash="c9", manifest_uri="u",
                                       manifest_sha256="s", dvc_md5="m", dvc_file="", n_images=0,
                                       n_bytes=0, source_path="/"))
    datasets = {d["name"]: d for d in views.list_datasets(session)}
    assert datasets["elpv"]["n_versions"] == 2 and datasets["elpv"]["latest_version"] == 2


def test_label_snapshots_are_numbered_per_dataset_version(session):
    dv1 = _dataset_version(session, content="c1")
    dv2 = _dataset_version(session, content="c2")
    s1 = _snapshot(session, dv1.id, "l1")
    s2 = _snapshot(session, dv1.id, "l2")
    s3 = _snapshot(session, dv2.id, "l1")
    assert (s1.version, s2.version, s3.version) == (1, 2, 1)
    assert q.find_label_snapshot(session, dv1.id, "l2").id == s2.id
    assert q.latest_label_snapshot(session, dv1.id).id == s2.id
    assert q.get_label_snapshot(session, s1.id).classes == ["good", "crack"]
    with pytest.raises(q.AlreadyRegistered):
        _snapshot(session, dv1.id, "l1")
    with pytest.raises(q.NotFound, match="dataset_version id 999"):
        _snapshot(session, 999, "l9")


def test_timestamps_are_timezone_aware_utc(session, url):
    dv = _dataset_version(session)
    session.commit()
    with Session(db.engine_for(url)) as fresh:
        created = fresh.get(DatasetVersion, dv.id).created_at
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 60
    dv.created_at = datetime(2020, 1, 1)  # naive: refused, not guessed at
    session.add(dv)
    with pytest.raises(StatementError, match="timezone-aware"):
        session.flush()


def test_runs_start_and_finish_once(session):
    run = w.start_run(session, "pretrain", flow_run_id="fr-1", params={"steps": 10}, code_revision="abc")
    assert run.status == "running" and run.finished_at is None
    w.finish_run(session, run.id, status="failed", error="CUDA OOM")
    assert run.status == "failed" and run.error == "CUDA OOM" and run.finished_at is not None
    with pytest.raises(ValueError, match="already finished"):
        w.finish_run(session, run.id)
    with pytest.raises(ValueError):
        w.finish_run(session, w.start_run(session, "x").id, status="running")
    with pytest.raises(q.NotFound, match="run id 424242"):
        w.finish_run(session, 424242)


def test_model_versions_are_numbered_per_model(session):
    w.get_or_create_model(session, "elpv-mae", "backbone")
    w.get_or_create_model(session, "elpv-clf", "classifier")
    a1 = w.add_model_version(session, "elpv-mae", artifact_uri="file:///b1", sha256="1" * 64)
    a2 = w.add_model_version(session, "elpv-mae", artifact_uri="file:///b2", sha256="2" * 64)
    c1 = w.add_model_version(session, "elpv-clf", artifact_uri="file:///c1", sha256="3" * 64)
    assert (a1.version, a2.version, c1.version) == (1, 2, 1)
    assert q.get_model_version(session, "elpv-mae", 2).id == a2.id
    assert q.latest_model_version(session, "elpv-mae").id == a2.id
    with pytest.raises(ValueError, match="registered as a backbone"):
        w.get_or_create_model(session, "elpv-mae", "classifier")
    with pytest.raises(ValueError, match="kind"):
        w.get_or_create_model(session, "x", "segmenter")


def test_concurrent_writers_get_distinct_version_numbers(url):
    """A second writer waits for the first instead of computing the same next version."""
    with Session(db.engine_for(url)) as s:
        w.get_or_create_model(s, "elpv-clf", "classifier")
        s.commit()
    first = Session(db.engine_for(url))
    v1 = w.add_model_version(first, "elpv-clf", artifact_uri="file:///1", sha256="1" * 64).version
    got: dict = {}

    def second_writer():
        try:
            with Session(db.engine_for(url)) as s:
                got["version"] = w.add_model_version(s, "elpv-clf", artifact_uri="file:///2", sha256="2" * 64).version
                s.commit()
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            got["error"] = exc

    t = threading.Thread(target=second_writer)
    t.start()
    time.sleep(0.4)
    assert t.is_alive(), f"second writer did not wait for the first: {got}"
    first.commit()
    first.close()
    t.join(10)
    assert got == {"version": 2} and v1 == 1


# --- lineage --------------------------------------------------------------------------


def test_model_detail_shows_full_lineage(session):
    dv = _dataset_version(session, content="c1")
    snap = _snapshot(session, dv.id)
    run = w.start_run(session, "pretrain", flow_run_id="fr-pre")
    w.get_or_create_model(session, "elpv-mae", "backbone", description="MAE on ELPV")
    bb = w.add_model_version(session, "elpv-mae", artifact_uri="file:///bb", sha256="b" * 64,
                             dataset_version_id=dv.id, run_id=run.id, flow_run_id="fr-pre",
                             code_revision="rev1", params={"mask_ratio": 0.75}, metrics={"loss": 0.3})
    w.get_or_create_model(session, "elpv-clf", "classifier")
    clf = w.add_model_version(session, "elpv-clf", artifact_uri="file:///clf", sha256="c" * 64,
                              dataset_version_id=dv.id, label_snapshot_id=snap.id, parent_id=bb.id,
                              flow_run_id="fr-adapt", code_revision="rev2",
                              params={"method": "probe"}, metrics={"accuracy": 0.9})
    record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                     candidate_version_id=clf.id, evidence={"gate": "passed"}, actor="tester")

    detail = views.model_detail(session, "elpv-clf")
    (v,) = detail["versions"]
    assert v["version"] == 1 and v["aliases"] == ["production"]
    assert v["dataset"] == {"id": dv.id, "name": "elpv", "version": 1, "content_hash": "c1"}
    assert v["label_snapshot"]["version"] == 1 and v["label_snapshot"]["classes"] == ["good", "crack"]
    assert v["parent"] == "elpv-mae:1" and v["parent_id"] == bb.id
    assert (v["flow_run_id"], v["code_revision"]) == ("fr-adapt", "rev2")
    assert v["params"] == {"method": "probe"} and v["metrics"] == {"accuracy": 0.9}
    assert (v["artifact_uri"], v["sha256"]) == ("file:///clf", "c" * 64)
    assert detail["aliases"] == {"production": 1}
    (event,) = detail["promotions"]
    assert (event["decision"], event["new_version"], event["previous_version"]) == ("promoted", 1, None)
    assert event["evidence"] == {"gate": "passed"} and event["actor"] == "tester"

    backbone = views.model_detail(session, "elpv-mae")["versions"][0]
    assert backbone["run_id"] == run.id and backbone["parent"] is None and backbone["label_snapshot"] is None

    models = {m["name"]: m for m in views.list_models(session)}
    assert models["elpv-clf"] | {"created_at": None} == {
        "name": "elpv-clf", "kind": "classifier", "description": "", "n_versions": 1,
        "latest_version": 1, "aliases": {"production": 1}, "created_at": None,
    }
    assert models["elpv-mae"]["description"] == "MAE on ELPV" and models["elpv-mae"]["aliases"] == {}


def test_evaluations_and_referenced_artifacts(session):
    dv = _dataset_version(session)
    snap = _snapshot(session, dv.id)
    (v1,) = _models(session, 1)
    metric = {"value": 0.9, "ci_low": 0.85, "ci_high": 0.94}
    ev = w.add_evaluation(
        session, label_snapshot_id=snap.id, report_uri="file:///a/report.md", report_sha256="r" * 64,
        plot_uri="file:///a/plot.png", plot_sha256="p" * 64, summary={"ratio": 0.2},
        results=[{"backbone": "elpv-mae:1", "model_version_id": v1, "method": "probe", "fraction": 0.1,
                  "seed": 0, "n_train": 50, "metrics": {"accuracy": metric, "macro_f1": metric,
                                                        "balanced_accuracy": metric}},
                 {"backbone": "imagenet-vit", "method": "probe", "fraction": 1.0, "seed": 0,
                  "n_train": 500, "metrics": {"accuracy": metric}}],
    )
    detail = views.evaluation_detail(session, ev.id)
    assert [r["backbone"] for r in detail["results"]] == ["elpv-mae:1", "imagenet-vit"]
    assert detail["results"][0]["model_version"] == "elpv-clf:1" and detail["results_file"] is None
    assert detail["results"][0]["metrics"]["macro_f1"]["ci_low"] == 0.85
    refs = q.referenced_artifacts(session)
    assert {(r.table, r.uri) for r in refs} == {
        ("dataset_version", "file:///a/manifest/c1.json"), ("label_snapshot", "file:///a/labels/l1.json"),
        ("model_version", "file:///a/clf/1"), ("evaluation", "file:///a/report.md"),
        ("evaluation", "file:///a/plot.png"),
    }
    table, row_id, uri, sha = next(r for r in refs if r.table == "model_version")
    assert (row_id, sha) == (v1, "1" * 64)
    assert views.list_evaluations(session)[0]["id"] == ev.id


# --- aliases and promotions -----------------------------------------------------------


def test_promotion_moves_alias_and_records_event(session, url):
    v1, v2, v3 = _models(session)
    e1 = record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                          candidate_version_id=v1, evidence={"n": 1}, actor="flow", reason="first")
    e2 = record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                          candidate_version_id=v2, evidence={"n": 2}, actor="flow")
    e3 = record_promotion(session, model_name="elpv-clf", alias="production", decision="rejected",
                          candidate_version_id=v3, evidence={"p_value": 0.4}, actor="flow", reason="not better")
    session.commit()
    assert (e1.previous_version_id, e1.new_version_id) == (None, v1)
    assert (e2.previous_version_id, e2.new_version_id) == (v1, v2)
    assert (e3.previous_version_id, e3.new_version_id, e3.candidate_version_id) == (v2, None, v3)
    assert _alias_state(url) == (2, 3)
    assert q.get_alias_version(session, "elpv-clf", "staging") is None
    with pytest.raises(PromotionError, match="already holds"):
        record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                         candidate_version_id=v2, evidence={}, actor="flow")
    with pytest.raises(PromotionError, match="decision"):
        record_promotion(session, model_name="elpv-clf", alias="production", decision="maybe",
                         candidate_version_id=v3, evidence={}, actor="flow")
    assert [p["decision"] for p in views.model_detail(session, "elpv-clf")["promotions"]] == [
        "rejected", "promoted", "promoted"]


def test_one_version_per_alias_per_model(session):
    v1, v2, _ = _models(session)
    record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                     candidate_version_id=v1, evidence={}, actor="flow")
    session.commit()
    model_id = q.get_model(session, "elpv-clf").id
    with pytest.raises(IntegrityError):
        with session.begin_nested():
            session.add(Alias(model_id=model_id, name="production", model_version_id=v2))
    assert len(session.exec(select(Alias)).all()) == 1


def test_failed_promotion_leaves_neither_alias_move_nor_event(session, url):
    v1, v2, v3 = _models(session)
    w.get_or_create_model(session, "other", "classifier")
    foreign = w.add_model_version(session, "other", artifact_uri="file:///o", sha256="o" * 64).id
    record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                     candidate_version_id=v1, evidence={}, actor="flow")
    session.commit()
    assert _alias_state(url) == (1, 1)

    # Simulate the database failing on the event insert, *after* the alias row was
    # already updated inside the transaction (e.g. a dropped connection or a disk full).
    statements: list[str] = []
    engine = db.engine_for(url)

    def fail_on_event_insert(conn, cursor, statement, *args):
        statements.append(" ".join(statement.split()[:3]).lower())
        if statement.lstrip().upper().startswith("INSERT INTO PROMOTION_EVENT"):
            raise RuntimeError("database went away")

    sa.event.listen(engine, "before_cursor_execute", fail_on_event_insert)
    try:
        with pytest.raises(RuntimeError, match="database went away"):
            record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                             candidate_version_id=v2, evidence={"p_value": 0.01}, actor="flow")
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_on_event_insert)
    assert "update alias set" in statements, statements
    assert statements.index("update alias set") < statements.index("insert into promotion_event")

    # Same session: the alias is back where it was, and the caller may even commit.
    assert q.get_alias_version(session, "elpv-clf", "production").id == v1
    session.commit()
    assert _alias_state(url) == (1, 1)

    with pytest.raises(PromotionError, match="evidence must be plain JSON"):
        record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                         candidate_version_id=v2, evidence={"p_value": Decimal("0.01")}, actor="flow")
    with pytest.raises(q.NotFound, match="evaluation id 777"):
        record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                         candidate_version_id=v2, evaluation_id=777, evidence={}, actor="flow")
    with pytest.raises(q.NotFound, match=f"no version with id {foreign}"):
        record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                         candidate_version_id=foreign, evidence={}, actor="flow")
    session.commit()
    assert _alias_state(url) == (1, 1)

    # A failure in the caller's transaction after the promotion undoes it as well.
    settings = Settings(database_url=url)
    with pytest.raises(RuntimeError):
        with db.session_scope(settings) as s:
            record_promotion(s, model_name="elpv-clf", alias="production", decision="promoted",
                             candidate_version_id=v3, evidence={}, actor="flow")
            raise RuntimeError("flow crashed before the end of the transaction")
    assert _alias_state(url) == (1, 1)


def test_rollback_walks_back_through_promotions(session, url):
    v1, v2, v3 = _models(session)
    with pytest.raises(PromotionError, match="no alias 'production'"):
        rollback(session, "elpv-clf", "production", actor="ops")
    for vid in (v1, v2, v3):
        record_promotion(session, model_name="elpv-clf", alias="production", decision="promoted",
                         candidate_version_id=vid, evidence={}, actor="flow")
    ev = rollback(session, "elpv-clf", "production", actor="ops", reason="bad canary")
    assert (ev.decision, ev.previous_version_id, ev.new_version_id) == ("rollback", v3, v2)
    assert ev.evidence["from_version"] == 3 and ev.evidence["to_version"] == 2 and ev.actor == "ops"
    assert rollback(session, "elpv-clf", "production", actor="ops").new_version_id == v1
    with pytest.raises(PromotionError, match="nothing to roll back: elpv-clf:1"):
        rollback(session, "elpv-clf", "production", actor="ops")
    session.commit()
    assert _alias_state(url) == (1, 5)
    decisions = [p["decision"] for p in views.model_detail(session, "elpv-clf")["promotions"]]
    assert decisions == ["rollback", "rollback", "promoted", "promoted", "promoted"]


def test_not_found_errors_name_what_is_missing(session):
    _models(session, 1)
    cases = [
        (lambda: q.get_model_version(session, "nope", 1), "model 'nope' not found"),
        (lambda: q.get_model_version(session, "elpv-clf", 9), "model 'elpv-clf' has no version 9"),
        (lambda: q.get_alias_version(session, "nope", "production"), "model 'nope'"),
        (lambda: views.model_detail(session, "nope"), "model 'nope'"),
        (lambda: w.add_model_version(session, "nope", artifact_uri="u", sha256="s"), "model 'nope'"),
        (lambda: q.latest_dataset_version(session, "ghost"), "dataset 'ghost' not found"),
        (lambda: q.get_dataset_version(session, "ghost", 1), "dataset 'ghost'"),
        (lambda: q.get_evaluation(session, 31337), "evaluation id 31337"),
        (lambda: rollback(session, "nope", "production", actor="ops"), "model 'nope'"),
    ]
    for call, message in cases:
        with pytest.raises(q.NotFound, match=message):
            call()
    assert issubclass(q.NotFound, LookupError)
    w.get_or_create_dataset(session, "empty")
    with pytest.raises(q.NotFound, match="'empty' has no versions"):
        q.latest_dataset_version(session, "empty")
