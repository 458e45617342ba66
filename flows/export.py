"""Flow `export`: a registered classifier (NAME means NAME@production) to ONNX (and
optionally TorchScript) with its preprocessing in the graph, each file checked against the
torch model on the label snapshot's test split (onnxruntime vs torch: max |difference| of
probabilities, top-1 agreement), stored with its sha256 and registered against the model
version with the check's result, passed or not."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.inference import export
from components.inference.inputs import model_input_size
from components.orchestration.lineage import current_flow_run_id, recorded_run
from components.registry import usage
from components.settings import get_settings
from flows.predict import load_classifier, production_ref, training_data
from flows.tasks import load_labeled_set, resolve_model_version, store_artifact

FORMATS = ("onnx", "torchscript")
ONCE = dict(cache_policy=NO_CACHE)


class ParityFailed(ValueError):
    """An exported file predicts differently from the torch model (it is recorded, not hidden)."""


@task(name="export-model", **ONCE)
def export_file(classifier, kind: str, model_ref: str, opset: int) -> bytes:
    if kind == "onnx":
        return export.export_onnx(classifier, model_ref, opset)
    return export.export_torchscript(classifier)


@task(name="parity-check", **ONCE)
def parity_check(classifier, kind: str, data: bytes, images, labels) -> dict:
    return export.check_export(classifier, kind, data, images, labels)


@task(name="register-export", **ONCE)
def register_export(settings, version, kind: str, stored, details: dict, checks: dict):
    from components.registry.db import session_scope
    with session_scope(settings) as session:
        return usage.add_model_artifact(session, model_version_id=version.id, kind=kind, artifact_uri=stored.uri,
                                        sha256=stored.sha256, size=stored.size, details=details, checks=checks,
                                        flow_run_id=current_flow_run_id())


@flow(name="export", log_prints=True)
def export_flow(model: str, formats: list[str] = ("onnx",), opset: int = export.OPSET) -> dict:
    """Export `model` (NAME = NAME@production, NAME:V, NAME@ALIAS) in each of `formats`."""
    settings = get_settings()
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"export formats must be among {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}")
    ref = production_ref(model)
    with recorded_run(settings, "export", {"model": ref, "formats": list(formats), "opset": opset}):
        version = resolve_model_version(settings, ref)
        name = ref.split("@")[0].split(":")[0]
        model_ref = f"{name}:{version.version}"
        classifier = load_classifier(settings, version)
        if version.label_snapshot_id is None:
            raise ValueError(f"{model_ref} has no label snapshot: there is no test split to check the export on")
        dataset, dataset_version, snapshot = training_data(settings, version)
        data = load_labeled_set(settings, dataset, dataset_version, snapshot, model_input_size(classifier))
        images, labels = data.images[data.test_idx], data.labels[data.test_idx]
        exports = []
        for kind in formats:
            file = export_file(classifier, kind, model_ref, opset)
            checks = parity_check(classifier, kind, file, images, labels)
            suffix = "onnx" if kind == "onnx" else "torchscript.pt"
            stored = store_artifact(settings, file, "exports", f"{name}-v{version.version}.{suffix}")
            details = {"model": model_ref, "format": kind, "opset": opset if kind == "onnx" else None,
                       "inputs": {export.INPUT_NAME: "uint8 [N, H, W]"},
                       "outputs": {"probabilities": "float32 [N, C]", "embedding": "float32 [N, D]"},
                       "classes": list(classifier.classes), "preprocessing": export.preprocessing(classifier),
                       "test_split": f"{dataset} v{dataset_version.version}, labels v{snapshot.version}"}
            row = register_export(settings, version, kind, stored, details, checks)
            parity = checks["parity"]
            print(f"export: {model_ref} -> {kind} {stored.uri} (sha256 {stored.sha256[:16]}…); parity on "
                  f"{parity['n_images']} test images: max |Δp| {parity['max_abs_diff']:.2e}, top-1 agreement "
                  f"{parity['top1_agreement']:.2%}: {'PASSED' if parity['passed'] else 'FAILED'}")
            exports.append({"id": row.id, "kind": kind, "uri": stored.uri, "sha256": stored.sha256,
                            "size": stored.size, "details": details, "checks": checks})
        failed = [e["kind"] for e in exports if not e["checks"]["parity"]["passed"]]
        if failed:
            raise ParityFailed(f"{model_ref}: the {', '.join(failed)} export predicts differently from torch "
                               f"(recorded; see `dlvm models card {model_ref}`)")
    return {"model": model_ref, "exports": exports}
