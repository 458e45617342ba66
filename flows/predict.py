"""Flow `predict`: a registered classifier, anomaly model or detector (NAME means
NAME@production), chosen by its registered kind, on a folder, a dataset version or an S3
prefix -> its predictions table (CSV: one row per image, per box for a detector), a JSON
summary with every unreadable file, for a classifier the embeddings (.npy) and the drift
report, all stored as artifacts; for an anomaly model optionally a heat-map overlay per image
in a local folder; and a `prediction_batch` row saying which model version saw which inputs,
when, in which flow run."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.data import access
from components.data.validate import ALLOWED_EXTENSIONS
from components.inference import drift
from components.inference.inputs import model_input_size, resolve_source
from components.inference.predict import (
    classifier_from_checkpoint,
    npy_bytes,
    per_class_report,
    predict_arrays,
    predict_source,
)
from components.inference.predictors import (
    check_predicts,
    predictor_for,
    write_heatmaps,
)
from components.orchestration.lineage import current_flow_run_id, recorded_run
from components.registry import queries, usage
from components.registry.db import session_scope
from components.registry.tables import Dataset, DatasetVersion, RegisteredModel
from components.settings import get_settings
from flows.tasks import (
    load_artifact,
    load_model_checkpoint,
    resolve_model_version,
    store_artifact,
)

ONCE = dict(cache_policy=NO_CACHE)
SHOWN = 20  # images whose predictions the flow's return value carries


def production_ref(model: str) -> str:
    """A bare model name means the version in production."""
    return model if (":" in model or "@" in model) else f"{model}@production"


@task(name="load-classifier", **ONCE)
def load_classifier(settings, version):
    return classifier_from_checkpoint(load_model_checkpoint(settings, version))


@task(name="load-predictor", **ONCE)
def load_predictor(settings, version, ref: str, min_score: float | None):
    """The version's model as a predictor of its registered kind (refused here, before any
    input is read, when that kind does not predict)."""
    with session_scope(settings) as session:
        kind = session.get(RegisteredModel, version.model_id).kind
    check_predicts(kind, ref)
    return predictor_for(kind, load_model_checkpoint(settings, version), ref, min_score)


@task(name="resolve-inputs", **ONCE)
def resolve_inputs(settings, source: str, size: int):
    return resolve_source(settings, source, size)


@task(name="predict-images", **ONCE)
def run_predictions(predictor, inputs, batch_size: int, device: str, heatmap_dir: str | None = None):
    written = []

    def heatmaps(names, images, output):
        written.extend(write_heatmaps(Path(heatmap_dir), predictor, names, images, output))
    result = predict_source(predictor, inputs, batch_size=batch_size, device=device,
                            on_batch=heatmaps if heatmap_dir else None)
    return result, [str(p) for p in written]


@task(name="model-training-data", **ONCE)
def training_data(settings, version):
    """(dataset name, dataset version row, label snapshot row) a classifier version was trained on."""
    with session_scope(settings) as session:
        snapshot = queries.get_label_snapshot(session, version.label_snapshot_id)
        dataset_version = session.get(DatasetVersion, snapshot.dataset_version_id)
        return session.get(Dataset, dataset_version.dataset_id).name, dataset_version, snapshot


@task(name="drift-reference", **ONCE)
def drift_reference(settings, version, classifier, device: str):
    """The version's drift reference: the registered one, or built now from its training
    data and registered (once per model version)."""
    with session_scope(settings) as session:
        existing = usage.latest_model_artifact(session, version.id, "drift_reference")
    if existing is not None:
        return drift.DriftReference.from_bytes(load_artifact(settings, existing.artifact_uri, existing.sha256))
    if version.label_snapshot_id is None:
        return None
    dataset, dataset_version, snapshot = training_data(settings, version)
    size = model_input_size(classifier)
    data = access.labeled_set(settings, dataset, dataset_version, snapshot, size)
    manifest, all_images = access.dataset_images(settings, dataset, dataset_version, size)
    basis, held_out, test_labels = drift.reference_images(data, manifest, all_images)
    _, basis_emb = predict_arrays(classifier, basis, device=device)
    proba, emb = predict_arrays(classifier, held_out, device=device)
    reference = drift.build_reference(basis_emb, emb, proba)
    stored = store_artifact(settings, reference.to_bytes(), "drift", f"{dataset}-reference.npz")
    details = {"dataset": f"{dataset} v{dataset_version.version}", "label_snapshot": f"v{snapshot.version}",
               "n_reference": reference.n, "n_test_split": int(len(test_labels)),
               "n_unlabeled": int(reference.n - len(test_labels)), "n_basis": int(len(basis)),
               "n_components": int(reference.components.shape[0]),
               "test_split": per_class_report(test_labels, proba[:len(test_labels)], list(data.classes))}
    with session_scope(settings) as session:
        usage.add_model_artifact(session, model_version_id=version.id, kind="drift_reference",
                                 artifact_uri=stored.uri, sha256=stored.sha256, size=stored.size, details=details,
                                 flow_run_id=current_flow_run_id())
    return reference


@task(name="compare-with-training-data", **ONCE)
def compare(reference, result, cfg: drift.DriftConfig):
    if reference is None:
        return {"tested": False, "alert": None, "reason": "the model version has no training data on record"}
    return drift.compare_batch(reference, result.embeddings, result.proba, cfg)


@task(name="register-prediction-batch", **ONCE)
def register_batch(settings, version, source: str, result, csv_file, summary_file, embeddings_file,
                   class_counts: dict, report: dict):
    with session_scope(settings) as session:
        return usage.add_prediction_batch(
            session, model_version_id=version.id, source=source, n_images=len(result.names),
            n_failed=len(result.failures), predictions_uri=csv_file.uri, predictions_sha256=csv_file.sha256,
            summary_uri=summary_file.uri, summary_sha256=summary_file.sha256,
            embeddings_uri=embeddings_file.uri if embeddings_file else None,
            embeddings_sha256=embeddings_file.sha256 if embeddings_file else None,
            class_counts=class_counts, drift_alert=report.get("alert"), drift=report,
            flow_run_id=current_flow_run_id())


@flow(name="predict", log_prints=True)
def predict_flow(source: str, model: str, batch_size: int = 256, device: str | None = None,
                 drift_alpha: float = 0.01, min_score: float | None = None, heatmap_dir: str | None = None) -> dict:
    """Predict every image of `source` (a folder, dataset:NAME[:V] or s3://bucket/prefix) with
    `model` (NAME = NAME@production, NAME:V, NAME@ALIAS) of kind classifier (then compare the
    batch with its training data), anomaly (`heatmap_dir`: write a heat-map overlay PNG per
    image there) or detector (boxes scoring at least `min_score`, default the score its
    evaluation reported precision and recall at)."""
    settings = get_settings()
    ref = production_ref(model)
    device = device or settings.device
    cfg = drift.DriftConfig(alpha=drift_alpha)
    with recorded_run(settings, "predict", {"source": source, "model": ref, "batch_size": batch_size,
                                            "min_score": min_score, "heatmap_dir": heatmap_dir}):
        version = resolve_model_version(settings, ref)
        name = ref.split("@")[0].split(":")[0]
        predictor = load_predictor(settings, version, ref, min_score)
        if heatmap_dir and predictor.kind != "anomaly":
            raise ValueError(f"--heatmap-dir is for anomaly models; {ref} is a {predictor.kind}")
        inputs = resolve_inputs(settings, source, predictor.input_size)
        if not inputs.items:
            raise ValueError(f"{inputs.description} holds no images ({', '.join(sorted(ALLOWED_EXTENSIONS))})")
        result, heatmaps = run_predictions(predictor, inputs, batch_size, device, heatmap_dir)
        if predictor.kind == "classifier":
            report = compare(drift_reference(settings, version, predictor.model, device), result, cfg)
        else:  # the drift monitor compares a classifier's pooled features and class mix
            report = {"tested": False, "alert": None,
                      "reason": f"drift is tested for classifiers (their features); this is a {predictor.kind}"}
        embeddings_file = store_artifact(settings, npy_bytes(result.embeddings), "predictions",
                                         f"{name}-embeddings.npy") if result.names and result.embeddings is not None \
            else None
        tag = embeddings_file.sha256[:12] if embeddings_file else "none"
        csv_file = store_artifact(settings, predictor.table(result.names, result.sha256, result.records, tag),
                                  "predictions", f"{name}-predictions.csv")
        counts = predictor.counts(result.records)
        summary = {"model": f"{name}:{version.version}", "kind": predictor.kind, "source": inputs.description,
                   "n_images": len(result.names), "n_failed": len(result.failures), "failures": result.failures,
                   "ignored": result.ignored, "class_counts": counts, "drift": report,
                   "predictions_uri": csv_file.uri,
                   "embeddings_uri": embeddings_file.uri if embeddings_file else None,
                   "flow_run_id": current_flow_run_id(), **predictor.summary_fields()}
        summary_file = store_artifact(settings, json.dumps(summary, indent=2).encode(), "predictions",
                                      f"{name}-summary.json")
        batch = register_batch(settings, version, inputs.description, result, csv_file, summary_file,
                               embeddings_file, counts, report)
    verdict = {None: "not tested", True: "DRIFT ALERT", False: "no drift"}[report.get("alert")]
    print(f"predict: {name}:{version.version} ({predictor.kind}) on {len(result.names)} images of "
          f"{inputs.description} ({len(result.failures)} unreadable): {counts}; drift: {verdict}")
    # the first images' records, for the command line to show (the CSV artifact holds them all)
    return {**summary, "batch_id": batch.id, "summary_uri": summary_file.uri, "heatmaps": heatmaps,
            "first_images": [{"image": n, **r} for n, r in list(zip(result.names, result.records))[:SHOWN]]}
