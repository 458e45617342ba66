"""What the detection and anomaly tests of `dlvm evaluate --task ...` check alike: one
evaluation of the task, a result row per (backbone, fraction) with the backbone's version
linked, nested fractions of the full training pool, its report and plot stored."""
from __future__ import annotations

from clirun import dlvm_in_process
from sqlmodel import select

from components.registry.db import session_scope
from components.registry.tables import (
    Evaluation,
    EvaluationResult,
    ModelVersion,
    RegisteredModel,
)
from components.settings import Settings
from components.storage import open_store


def pretrain_resnet_and_vit(env: dict) -> None:
    """Two backbones of the `pcb` dataset, in this process: `pcb-simclr` (a 32 px ResNet, any
    input size) and `pcb-mae` (a 32 px ViT, its own size only)."""
    from flows.pretrain import pretrain_flow

    with dlvm_in_process(env):
        pretrain_flow("pcb", recipe="tiny-cnn", method="simclr", model_name="pcb-simclr")
        pretrain_flow("pcb", recipe="tiny", method="mae", model_name="pcb-mae")


def checked_sweep(settings: Settings, task: str, metric: str, backbone: str, n_full: int) -> tuple:
    """(the evaluation, its cells by (backbone, fraction)) after a sweep of ``backbone`` and scratch
    over fractions 0.5 and 1.0, checked; ``n_full``: the images fraction 1.0 trains on."""
    with session_scope(settings) as session:
        evaluation = session.exec(select(Evaluation)).one()
        rows = session.exec(select(EvaluationResult)).all()
        version = session.exec(select(ModelVersion).join(RegisteredModel).where(RegisteredModel.name == backbone)).one()
    assert evaluation.summary["task"] == task and evaluation.summary["metric"] == metric
    cells = {(r.backbone, r.fraction): r for r in rows}
    assert set(cells) == {(backbone, 0.5), (backbone, 1.0), ("scratch", 0.5), ("scratch", 1.0)}
    assert cells[(backbone, 1.0)].model_version_id == version.id and cells[("scratch", 1.0)].model_version_id is None
    assert cells[("scratch", 1.0)].n_train == n_full and 0 < cells[("scratch", 0.5)].n_train < n_full
    for r in rows:
        m = r.metrics[metric]
        assert 0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1, (r.backbone, r.fraction, m)
    store = open_store(settings)
    report = store.get_bytes(evaluation.report_uri, evaluation.report_sha256).decode()
    assert f"| {backbone} | 50% (" in report and "| scratch | 100% (" in report
    assert store.get_bytes(evaluation.plot_uri, evaluation.plot_sha256).startswith(b"\x89PNG")
    return evaluation, cells
