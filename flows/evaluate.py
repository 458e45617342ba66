"""Flow `evaluate`: the label-efficiency sweep (label fractions x backbones x adaptation
methods x seeds) and the sanity baselines on a snapshot's fixed test split, with its report,
plot and registry rows."""
from __future__ import annotations

import dataclasses
import json

from prefect import flow, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from components.data.images import Preprocess
from components.evaluation.baselines import (
    BASELINE_BACKBONE,
    SANITY_BASELINES,
    BaselineConfig,
)
from components.evaluation.episodes import (
    EpisodeConfig,
    episodes_markdown,
    evaluate_episodes,
    parse_specs,
)
from components.evaluation.learning_setting import (
    learning_settings_markdown,
    pretraining_saw_test_images,
)
from components.evaluation.metrics import DEFAULT_GATE_METRIC, check_metric
from components.evaluation.report import (
    efficiency_claim,
    markdown_report,
    plot_curves,
    samples_section,
    summary_table,
)
from components.evaluation.sweep import (
    Backbone,
    SweepConfig,
    SweepResult,
    SweepUnit,
    UnitResult,
    assemble_sweep,
    plan_units,
    run_unit,
    same_input_size,
)
from components.models.backbones import family_of, has_scratch_form
from components.names import check_dataset, check_model_ref
from components.orchestration.lineage import current_flow_run_id, recorded_run
from components.orchestration.task_runners import sweep_task_runner
from components.registry import usage, writes
from components.registry.db import session_scope
from components.registry.promotion import baseline_refs
from components.registry.refs import SCRATCH
from components.settings import get_settings
from components.storage import ArtifactError, open_store
from components.training.adapt import novelty_class_index
from components.training.recipes import AUTO, meta_config, recipe_for_run
from flows.tasks import (
    load_backbone,
    load_labeled_set,
    profile_dataset,
    resolve_label_snapshot,
    store_artifact,
)


@task(name="resolve-generic-baselines", cache_policy=NO_CACHE)
def generic_baselines(settings) -> list[str]:
    with session_scope(settings) as session:
        return baseline_refs(session)


@task(name="sweep-unit", task_run_name="sweep {unit.label}", cache_policy=NO_CACHE)
def sweep_unit(unit: SweepUnit, backbone: Backbone, images, labels, train_idx, test_idx, num_classes: int,
               cfg: SweepConfig) -> UnitResult:
    return run_unit(unit, backbone, images, labels, train_idx, test_idx, num_classes, cfg)


def sweep_on_task_runner(settings, backbones: list[Backbone], images, labels, train_idx, test_idx,
                         num_classes: int, cfg: SweepConfig) -> SweepResult:
    """The sweep's units as ``sweep-unit`` task runs on the task runner the settings choose
    (components/orchestration/task_runners.py: sequential, or a Dask cluster), put back together in plan
    order. A runner of its own rather than this flow's: the choice is a setting, read when
    the flow runs, and the other tasks of the flow gain nothing from a cluster."""
    by_name = {b.name: b for b in backbones}
    shared = {"images": images, "labels": labels, "train_idx": train_idx, "test_idx": test_idx,
              "num_classes": num_classes, "cfg": cfg}
    with sweep_task_runner(settings) as runner:
        futures = [runner.submit(sweep_unit, {"unit": unit, "backbone": by_name.get(unit.backbone), **shared})
                   for unit in plan_units(backbones, cfg)]
        parts = [future.result() for future in futures]
    return assemble_sweep(parts, backbones, labels, train_idx, test_idx, num_classes, cfg)


@task(name="episodic-evaluation", cache_policy=NO_CACHE)
def episodic_evaluation(backbones: list[Backbone], images, labels, train_idx, test_idx, cfg: EpisodeConfig):
    return evaluate_episodes(backbones, images, labels, train_idx, test_idx, cfg, progress=True)


@task(name="learning-settings", cache_policy=NO_CACHE)
def learning_settings(settings, backbone_dataset_versions: dict, evaluated_version) -> dict[str, bool]:
    """Per backbone: whether its pretraining saw this dataset's (test) images."""
    with session_scope(settings) as session:
        return {name: pretraining_saw_test_images(session, dv, evaluated_version)
                for name, dv in backbone_dataset_versions.items()}


@task(name="generated-samples", cache_policy=NO_CACHE)
def generated_samples(settings, backbones: list[Backbone]) -> list[dict]:
    """Per sequential backbone: its version's newest `samples` grid (`dlvm generate`) with its bytes,
    or none yet. A grid the store cannot give is reported in the section, not a failed evaluation."""
    with session_scope(settings) as session:
        entries = [{"backbone": b.name, "artifact": usage.latest_samples(session, b.model_version_id), "png": None,
                    "error": None}
                   for b in backbones if family_of(b.config) == "sequential" and b.model_version_id is not None]
    store = open_store(settings)
    for e in entries:
        if e["artifact"] is not None:
            try:
                e["png"] = store.get_bytes(e["artifact"]["artifact_uri"], e["artifact"]["sha256"])
            except ArtifactError as exc:
                e["error"] = str(exc)
    return entries


@task(name="register-evaluation", cache_policy=NO_CACHE)
def register_evaluation(settings, snapshot, run_id, report, plot, results, summary, rows, version_of: dict):
    """The evaluation row and its result rows (each with the model version of its backbone, by name)."""
    with session_scope(settings) as session:
        return writes.add_evaluation(
            session, label_snapshot_id=snapshot.id, run_id=run_id, flow_run_id=current_flow_run_id(),
            report_uri=report.uri, report_sha256=report.sha256, plot_uri=plot.uri, plot_sha256=plot.sha256,
            results_uri=results.uri, results_sha256=results.sha256, summary=summary,
            results=[dict(row, model_version_id=version_of.get(row["backbone"])) for row in rows])


def record_backbone_sweep(settings, snapshot, run_id, task_name: str, metric: str, rows: list[dict], table: list[dict],
                          markdown: str, context: dict, details: list[dict], version_of: dict, plot_title: str):
    """Store a detection or anomaly sweep's report, plot (``metric`` vs fraction) and per-cell
    details, and register it as an evaluation of ``snapshot`` (summary ``task``: what it measured)."""
    stem = f"{snapshot.id}-{task_name}"
    report = store_artifact(settings, markdown.encode(), "reports", f"{stem}-evaluation.md")
    plot = store_artifact(settings, plot_curves(rows, metric, title=plot_title), "reports", f"{stem}-efficiency.png")
    results = store_artifact(settings, json.dumps(details, default=float).encode(), "evaluations", f"{stem}-sweep.json")
    summary = {"task": task_name, "metric": metric, "table": table, "context": context}
    evaluation = register_evaluation(settings, snapshot, run_id, report, plot, results, summary, rows, version_of)
    return evaluation, report, plot


@task(name="publish-prefect-artifacts", cache_policy=NO_CACHE)
def publish(settings, dataset: str, markdown: str, table: list[dict], plot):
    key = f"{dataset}-label-efficiency".lower().replace("_", "-")
    create_markdown_artifact(markdown, key=key, description=f"label-efficiency report for {dataset}")
    create_table_artifact([{"backbone": row["backbone"], "method": row["method"], "fraction": row["fraction"],
                            "n_train": row["n_train"],
                            **{f"{name} (95% CI)": f"{m['value']:.3f} ({m['ci_low']:.3f}-{m['ci_high']:.3f})"
                               for name, m in row["metrics"].items()}} for row in table],
                          key=f"{key}-table")
    create_image_artifact(open_store(settings).presigned_url(plot.uri), key=f"{key}-plot")


@flow(name="evaluate", log_prints=True)
def evaluate_flow(dataset: str, backbones: list[str] | None = None, include_scratch: bool = True,
                  fractions: list[float] = (0.05, 0.1, 0.25, 0.5, 1.0), seeds: list[int] = (0, 1, 2),
                  methods: list[str] = ("probe",), finetune_fractions: list[float] | None = None,
                  finetune_seeds: list[int] | None = None, recipe: str = AUTO, reference: str | None = None,
                  dataset_version: int | None = None, snapshot_version: int | None = None,
                  budget_minutes: float | None = None, finetune_runs: int | None = None,
                  episodes: list[str] | None = None, episode_count: int = 300,
                  metric: str = DEFAULT_GATE_METRIC, baseline_fractions: list[float] | None = (1.0,),
                  good_class: str | None = None, keep_runs: str | None = None) -> dict:
    """Compare backbones on the snapshot's test split. `keep_runs` (the pipeline's): a folder where
    the full-label runs of the trained methods keep their classifiers for the candidate step.
    `backbones` are registered backbone refs (default: the dataset's own MAE backbone and every
    backbone's `baseline` alias holder of the same input size); 'scratch' is added unless
    include_scratch is off.
    The sanity baselines (majority class; logistic regression and RBF-SVM on pixels and on
    HOG) always run beside them, on the same label subsets, at `baseline_fractions` of the
    labels with the first seed (None: every fraction).
    `metric` (macro_f1, balanced_accuracy or accuracy) is what the baselines' cross-validation,
    the label-efficiency ratio and its reference are decided on.
    `reference` names the backbone whose 100 %-label score defines label efficiency
    (default: the best non-domain backbone); no ratio is claimed unless that reference is
    significantly better than the majority class. With the `auto` recipe the fine-tuning epochs
    come from the data's profile and `budget_minutes` (shared by the sweep's fine-tune runs).
    `episodes` ('4way1shot', ...) adds the episodic few-shot evaluation (`episode_count`
    episodes each from the test split: prototypes, probe, fine-tune, Reptile, MAML) to the report.
    `good_class` (a descriptor recipe's svm): the normal class, whose training images make each
    svm run's position-aware novelty bank (AdaptConfig.novelty_class)."""
    check_dataset(dataset)
    for ref in list(backbones or []) + ([reference] if reference else []):
        check_model_ref(ref, allow=("scratch",))
    check_metric(metric)
    if 1.0 not in [float(f) for f in fractions]:
        raise ValueError("fractions must include 1.0: the sanity baselines and the promotion gate compare "
                         "full-label runs")
    baseline_fractions = [float(f) for f in baseline_fractions] if baseline_fractions else None
    if baseline_fractions and not set(baseline_fractions) <= {float(f) for f in fractions}:
        raise ValueError(f"baseline_fractions {baseline_fractions} must be among fractions {list(fractions)}")
    settings = get_settings()
    version, snapshot = resolve_label_snapshot(settings, dataset, dataset_version, snapshot_version)
    profile = None
    if recipe == AUTO:
        profile = dataclasses.replace(profile_dataset(settings, dataset, version), n_labels=int(snapshot.n_labeled))
    n_trained = (len(finetune_fractions or fractions) * len(finetune_seeds or seeds)
                 * len([m for m in methods if m in ("finetune", "lora")]))
    resolved, runtime = recipe_for_run(recipe, profile, budget_minutes=budget_minutes,
                                       finetune_runs=finetune_runs or max(1, n_trained * (len(backbones or [1])
                                                                                          + include_scratch)),
                                       pretrain=False, metric=metric)
    svm_cfg = resolved.adapt["svm"]
    if good_class is not None:
        if family_of(resolved.backbone) != "descriptor":
            raise ValueError(f"a good class gives a descriptor backbone's svm its novelty bank; recipe {recipe} "
                             f"makes a {family_of(resolved.backbone)} backbone")
        svm_cfg = dataclasses.replace(svm_cfg, novelty_class=novelty_class_index(good_class, snapshot.classes, methods))
    domain_method = resolved.pretrain.method
    if include_scratch and not has_scratch_form(resolved.backbone):
        include_scratch = False
        print(f"evaluate: no from-scratch row: a {family_of(resolved.backbone)} backbone learns nothing from labels, "
              "and unfitted it is a degenerate model; the sanity baselines are its comparison")
    generic = [] if backbones else [r for r in generic_baselines(settings) if not r.startswith(f"{dataset}-{domain_method}:")]
    refs = list(backbones or [f"{dataset}-{domain_method}", *generic]) + ([SCRATCH] if include_scratch else [])
    cfg = SweepConfig(fractions=tuple(fractions), seeds=tuple(seeds), methods=tuple(methods),
                      finetune_fractions=tuple(finetune_fractions) if finetune_fractions else None,
                      finetune_seeds=tuple(finetune_seeds) if finetune_seeds else None,
                      probe=resolved.adapt["probe"], finetune=resolved.adapt["finetune"],
                      lora=resolved.adapt["lora"], prototype=resolved.adapt["prototype"], svm=svm_cfg,
                      baselines=SANITY_BASELINES, baseline=BaselineConfig(metric=metric),
                      baseline_fractions=tuple(baseline_fractions) if baseline_fractions else None,
                      keep_dir=keep_runs)
    params = {"dataset": dataset, "backbones": refs, "fractions": list(fractions), "seeds": list(seeds),
              "methods": list(methods), "finetune_fractions": finetune_fractions,
              "finetune_seeds": finetune_seeds, "recipe": recipe, "baselines_by_alias": generic,
              "budget_minutes": budget_minutes, "runtime": runtime,
              "episodes": list(episodes) if episodes else None, "episode_count": episode_count,
              "metric": metric, "baseline_fractions": baseline_fractions, "good_class": good_class}
    episode_cfg = (EpisodeConfig(specs=parse_specs(episodes), episodes=episode_count,
                                 meta=meta_config("reptile", recipe, probe=resolved.adapt["probe"]))
                   if episodes else None)
    with recorded_run(settings, "evaluate", params) as run_id:
        requested, inputs, pretrained_on = [], [], {}
        for ref in refs:
            model_version, backbone_cfg, state, preprocess = load_backbone(settings, ref, resolved.backbone,
                                                                           resolved.preprocess.to_dict())
            requested.append(Backbone(ref, backbone_cfg, state, model_version.id if model_version else None))
            inputs.append(Preprocess.coerce(preprocess or backbone_cfg.img_size))
            pretrained_on[ref] = model_version.dataset_version_id if model_version else None
        backbone_list, notes = same_input_size(requested, generic)
        for note in notes:
            print(f"evaluate: {note}")
        refs = [b.name for b in backbone_list]
        # Decoded as the domain backbone was pretrained (its recorded preprocessing).
        pre = inputs[[b.name for b in requested].index(refs[0])]
        print(f"evaluate: input {pre.describe()}")
        data = load_labeled_set(settings, dataset, version, snapshot, pre)
        train_idx, test_idx = data.train_idx, data.test_idx
        result = sweep_on_task_runner(settings, backbone_list, data.images, data.labels, train_idx, test_idx,
                                      len(data.classes), cfg)
        table = summary_table(result.rows)
        domain = refs[0]
        # No ratio against a reference no better than always answering the majority class.
        claim = efficiency_claim(result.to_dict(include_proba=False), refs, domain, metric, reference)
        reference, reference_check, efficiency = claim["reference"], claim["reference_check"], claim["label_efficiency"]
        context = {"dataset": f"{dataset} v{version.version}", "label snapshot": f"v{snapshot.version} "
                   f"({len(data.labels)} labels, classes {', '.join(data.classes)})",
                   "test split": f"{len(test_idx)} images (stratified, hash-assigned)",
                   "train pool": f"{len(train_idx)} images", "decision metric": metric,
                   "reference backbone": reference or "-"}
        if good_class is not None:
            context["svm novelty bank"] = f"the {good_class!r} training images of each run"
        markdown = markdown_report(result.rows, f"Label efficiency on {dataset}", context, None,
                                   reference_backbone=reference, target_backbones=claim["targets"] or None,
                                   efficiency_metric=metric, reference_check=reference_check, scratch=SCRATCH)
        saw_test = learning_settings(settings, {r: pretrained_on[r] for r in refs}, version)
        markdown += "\n" + learning_settings_markdown(saw_test, list(methods))
        episodic = None
        if episode_cfg is not None:
            episodic = episodic_evaluation(backbone_list, data.images, data.labels, train_idx, test_idx, episode_cfg)
            markdown += "\n" + episodes_markdown(episodic, episode_cfg)
        samples = generated_samples(settings, backbone_list)
        if samples:
            markdown += "\n" + "\n".join(samples_section(samples))
        plot_png = plot_curves(result.rows, metric)
        report = store_artifact(settings, markdown.encode(), "reports", f"{dataset}-evaluation.md")
        plot = store_artifact(settings, plot_png, "reports", f"{dataset}-label-efficiency.png")
        results = store_artifact(settings, result.to_json().encode(), "evaluations", f"{dataset}-sweep.json")
        summary = {"domain": domain, "table": table, "metric": metric, "label_efficiency": efficiency,
                   "reference": reference, "reference_check": reference_check, "context": context,
                   "sanity_baselines": [row for row in table if row["backbone"] == BASELINE_BACKBONE],
                   "transductive_backbones": sorted(r for r, saw in saw_test.items() if saw)}
        if episodic is not None:
            summary["episodes"] = episodic.to_dict()
        if samples:
            summary["samples"] = [{"backbone": e["backbone"], "artifact_id": e["artifact"]["id"],
                                   "version": e["artifact"]["version"],
                                   "quality": e["artifact"]["details"].get("quality")}
                                  for e in samples if e["artifact"] is not None]
        evaluation = register_evaluation(settings, snapshot, run_id, report, plot, results, summary, result.rows,
                                         {b.name: b.model_version_id for b in backbone_list})
        publish(settings, dataset, markdown, table, plot)
    print(f"evaluate: {len(result.rows)} runs on {len(test_idx)} test images; report {report.uri}")
    return {"evaluation_id": evaluation.id, "report_uri": report.uri, "plot_uri": plot.uri, "metric": metric,
            "table": table, "label_efficiency": efficiency, "reference_check": reference_check,
            "markdown": markdown}

