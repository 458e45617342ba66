"""Flow `retrain`: what new labels start (the webhook receiver or the feedback flow).

pull the latest labels from Label Studio (when configured) -> adapt the production
model's backbone on the new snapshot -> evaluate it against the generic baselines and
from-scratch training on the new test split -> gate it for `production`."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.evaluation.metrics import DEFAULT_GATE_METRIC, check_metric
from components.evaluation.report import choose_candidate_method
from components.names import check_alias, check_dataset, check_model_ref
from components.registry import queries
from components.registry.db import session_scope
from components.settings import get_settings
from components.training.kept_runs import kept_runs_folder
from flows.adapt import adapt_flow
from flows.evaluate import evaluate_flow
from flows.feedback import feedback_flow
from flows.promote import promote_flow


@task(name="production-backbone", cache_policy=NO_CACHE)
def production_backbone(settings, model: str, alias: str) -> str | None:
    """``name:version`` of the backbone under the current ``alias`` holder of ``model``, or None."""
    with session_scope(settings) as session:
        version = queries.find_alias_version(session, model, alias)
        return queries.parent_ref(session, version) if version is not None else None


@flow(name="retrain", log_prints=True)
def retrain_flow(dataset: str, backbone: str | None = None, method: str | None = None, recipe: str = "demo",
                 fractions: list[float] = (0.25, 1.0), seeds: list[int] = (0,), margin: float = 0.0,
                 alias: str = "production", pull: bool = True, metric: str = DEFAULT_GATE_METRIC) -> dict:
    """Retrain `dataset`'s classifier on its newest labels and gate it for `alias` on `metric`.
    `backbone` defaults to the backbone of the current `alias` holder, else `<dataset>-mae`;
    `method` to the one the evaluation measured best at 100 % of the labels (probe or fine-tune)."""
    check_dataset(dataset)
    check_alias(alias)
    if backbone is not None:
        check_model_ref(backbone, allow=("scratch",))
    check_metric(metric)
    settings = get_settings()
    model = f"{dataset}-classifier"
    labels = feedback_flow(dataset, model=model, alias=alias, retrain_after=10**9) \
        if pull and settings.label_studio_url else None
    backbone = backbone or production_backbone(settings, model, alias) or f"{dataset}-mae"
    # The gate compares with training from scratch (fine-tuning on all labels): evaluate that too.
    # A candidate the sweep already trained (same backbone, labels, settings, seed) is taken, not retrained.
    with kept_runs_folder(settings.cache) as kept:
        evaluation = evaluate_flow(dataset, backbones=[backbone], fractions=fractions, seeds=seeds,
                                   methods=list(dict.fromkeys([method or "probe", "finetune"])),
                                   finetune_fractions=[1.0], finetune_seeds=[seeds[0]], recipe=recipe, metric=metric,
                                   keep_runs=str(kept))
        method, why = choose_candidate_method(evaluation["table"], backbone, metric, method)
        print(f"retrain: candidate {backbone} / {method}: {why}")
        candidate = adapt_flow(dataset, backbone=backbone, method=method, fraction=1.0, recipe=recipe,
                               reuse_from=str(kept))
    promotion = promote_flow(f"{candidate['model']}:{candidate['version']}", alias=alias,
                             evaluation_id=evaluation["evaluation_id"], margin=margin, actor="retrain", metric=metric)
    return {"labels": labels, "backbone": backbone, "evaluation_id": evaluation["evaluation_id"],
            "candidate": candidate, "promotion": promotion}
