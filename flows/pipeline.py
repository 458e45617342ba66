"""Flow `pipeline`: the whole loop, one flow run with a child flow run per step:
ingest -> labels -> pretrain (domain, and generic when configured) -> evaluate -> adapt -> promote."""
from __future__ import annotations

from prefect import flow

from components.evaluation.metrics import DEFAULT_GATE_METRIC, check_metric
from components.evaluation.report import choose_candidate
from components.names import check_dataset
from components.registry.refs import SCRATCH
from components.settings import get_settings
from components.training.adapt import novelty_class_index
from components.training.kept_runs import kept_runs_folder
from components.training.recipes import (
    AUTO,
    PRETRAIN_SHARE,
    is_descriptor_recipe,
    pipeline_finetune_runs,
    recipe_methods,
)
from flows.adapt import adapt_flow
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.labels import labels_flow
from flows.pretrain import pretrain_flow
from flows.promote import promote_flow
from flows.tasks import set_baseline


@flow(name="pipeline", log_prints=True)
def pipeline_flow(source: str, dataset: str, labels_export: str, classes: list[str] | None = None,
                  recipe: str = AUTO,
                  pretrain_steps: int | None = None, generic_source: str | None = None,
                  generic_dataset: str = "generic", fractions: list[float] = (0.05, 0.1, 0.25, 0.5, 1.0),
                  seeds: list[int] = (0, 1, 2), methods: list[str] | None = None,
                  finetune_fractions: list[float] | None = (1.0,), finetune_seeds: list[int] | None = (0,),
                  candidate_method: str | None = None, margin: float = 0.0,
                  budget_minutes: float | None = None, pretrain_method: str | None = None,
                  metric: str = DEFAULT_GATE_METRIC, good_class: str | None = None) -> dict:
    """Run every step on `source` images labeled by `labels_export` (a Label Studio export;
    `classes`, when given, are the only labels accepted). `good_class` (a descriptor recipe's
    svm, in the sweep and the candidate): the normal class, whose training images make the
    position-aware novelty bank.
    With `generic_source` (a folder of generic images), a backbone pretrained with the same
    recipe and budget on it joins the comparison as the generic baseline (and takes its
    model's `baseline` alias, a recorded promotion event).

    `methods` (default: the recipe's, `dlvm recipes`) are the adaptation methods swept.
    Probes run on every fraction and seed; fine-tuning, minutes a run on CPU, on
    `finetune_fractions` x `finetune_seeds`; the sanity baselines beside them. The candidate
    is adapted on all labels: the domain backbone with `candidate_method` when given, otherwise
    with the method the sweep measured best for it at 100 % of the labels on `metric`, unless a
    from-scratch model measured clearly better (its interval above the domain's best: a domain
    backbone that makes models worse is not what the line gets, and the report says so); the gate then
    decides on `metric` (macro_f1, balanced_accuracy or accuracy) against the majority class,
    the strongest sanity baseline, the strongest from-scratch model, the strongest generic
    backbone and the current holder (flows/promote.py).

    `recipe` `auto` (the default) chooses input, architecture, pretraining steps and
    fine-tuning epochs from the data and the device so that the domain pretraining and
    every fine-tune run share `budget_minutes` (a generic baseline's pretraining comes on
    top: it gets the same recipe and steps, for a fair comparison)."""
    check_dataset(dataset)
    check_dataset(generic_dataset)
    check_metric(metric)
    methods = list(methods or recipe_methods(recipe))
    if candidate_method is not None and candidate_method not in methods:
        raise ValueError(f"candidate_method {candidate_method!r} is not among the swept methods {list(methods)}")
    # a good class is checked before anything runs when the classes are given, else once the labels are in
    if good_class is not None and not is_descriptor_recipe(recipe):
        raise ValueError(f"a good class gives a descriptor backbone's svm its novelty bank; recipe {recipe} makes "
                         "no descriptor backbone")
    if good_class is not None and classes:
        novelty_class_index(good_class, list(classes), methods)
    ingest = ingest_flow(source, dataset)
    labels = labels_flow(labels_export, dataset, classes=classes)
    if good_class is not None:  # before minutes of pretraining
        novelty_class_index(good_class, list(labels["class_counts"]), methods)
    n_backbones = 2 + bool(generic_source)  # domain, scratch, generic
    finetune_runs = pipeline_finetune_runs(n_backbones, len(finetune_fractions or fractions),
                                           len(finetune_seeds or seeds), methods, candidate_method)
    adapt_budget = budget_minutes * (1 - PRETRAIN_SHARE) if budget_minutes else None
    if recipe == AUTO:
        print(f"pipeline: recipe auto, budget {budget_minutes or 'default'} min shared by pretraining and "
              f"{finetune_runs} fine-tune run(s)")
    budget = dict(budget_minutes=budget_minutes, finetune_runs=finetune_runs)
    backbones = [pretrain_flow(dataset, recipe=recipe, steps=pretrain_steps, method=pretrain_method, **budget)]
    if generic_source:
        ingest_flow(generic_source, generic_dataset)
        backbones.append(pretrain_flow(generic_dataset, recipe=recipe, steps=pretrain_steps, method=pretrain_method,
                                       **budget))
        set_baseline(get_settings(), backbones[-1]["model_version_id"], actor="pipeline", reason="generic baseline",
                     evidence={"source": generic_source, "dataset": generic_dataset, "recipe": recipe,
                               "pretrain_steps": pretrain_steps, "compared_on": dataset})
    refs = [f"{b['model']}:{b['version']}" for b in backbones]
    adapt_budget = dict(budget_minutes=adapt_budget, finetune_runs=finetune_runs)
    # the sweep's full-label classifiers wait in a folder for the candidate step: the candidate that
    # matches one of them in backbone, labels, settings and seed is taken, not trained again
    with kept_runs_folder(get_settings().cache) as kept:
        evaluation = evaluate_flow(dataset, backbones=refs, fractions=fractions, seeds=seeds, methods=methods,
                                   finetune_fractions=finetune_fractions, finetune_seeds=finetune_seeds,
                                   recipe=recipe, metric=metric, good_class=good_class, keep_runs=str(kept),
                                   **adapt_budget)
        backbone, method, why = choose_candidate(evaluation["table"], [refs[0], SCRATCH], metric, candidate_method)
        print(f"pipeline: candidate {backbone} / {method}: {why}")
        candidate = adapt_flow(dataset, backbone=backbone, method=method, fraction=1.0, recipe=recipe,
                               metric=metric, good_class=good_class if method == "svm" else None,
                               reuse_from=str(kept), **adapt_budget)
    promotion = promote_flow(f"{candidate['model']}:{candidate['version']}",
                             evaluation_id=evaluation["evaluation_id"], margin=margin, metric=metric)
    return {"ingest": ingest, "labels": labels, "backbones": refs, "evaluation": evaluation,
            "candidate": candidate, "candidate_backbone": backbone, "candidate_method": method,
            "promotion": promotion}
