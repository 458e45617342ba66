"""Flow `generate`: sample new images from a registered sequential backbone (token sequences
drawn with a temperature and top-k, decoded by its tokenizer) and store them as one grid PNG
in the artifact store, registered as a `samples` model artifact of the backbone's version
(what evaluation reports and the dashboard show) and shown as a Prefect image artifact; the
run is recorded with its parameters. With `against=DATASET` the samples are also measured
against that dataset's images (Fréchet distance on the backbone's features, with the
tokenizer's reconstructions as the floor and shuffled tokens as the baseline:
components/evaluation/sample_quality.py)."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_image_artifact
from prefect.cache_policies import NO_CACHE

from components.evaluation.sample_quality import sample_quality
from components.inference.generate import (
    GenerateConfig,
    generator_input,
    grid_png,
    load_generator,
    sample,
)
from components.names import check_dataset, check_model_ref
from components.orchestration.lineage import current_flow_run_id, recorded_run
from components.registry import usage
from components.registry.db import session_scope
from components.settings import get_settings
from components.storage import open_store
from components.training.device import cpu_threads
from flows.tasks import (
    load_dataset_images,
    load_model_checkpoint,
    resolve_dataset_version,
    resolve_model_version,
    store_artifact,
)


@task(name="sample-images", cache_policy=NO_CACHE)
def sample_images(checkpoint: dict, cfg: GenerateConfig, real) -> tuple[bytes, dict | None]:
    """(the grid PNG, the sample quality against ``real`` images or None)."""
    model = load_generator(checkpoint, cfg.top_k)
    images = sample(model, cfg)
    return grid_png(images), (sample_quality(model, images, real, cfg.seed) if real is not None else None)


@task(name="register-samples", cache_policy=NO_CACHE)
def register_samples(settings, version, stored, details: dict) -> int:
    """The grid as a `samples` artifact of the backbone's version; returns its id."""
    with session_scope(settings) as session:
        return usage.add_model_artifact(session, model_version_id=version.id, kind="samples", artifact_uri=stored.uri,
                                        sha256=stored.sha256, size=stored.size, details=details,
                                        flow_run_id=current_flow_run_id()).id


@task(name="publish-samples", cache_policy=NO_CACHE)
def publish_samples(settings, stored, description: str) -> None:
    create_image_artifact(open_store(settings).presigned_url(stored.uri), description=description)


@flow(name="generate", log_prints=True)
def generate_flow(model: str, n: int = 16, temperature: float = 1.0, top_k: int | None = None,
                  seed: int = 0, against: str | None = None, against_version: int | None = None) -> dict:
    """Sample `n` images from the sequential backbone `model` (a ref: name, name:version, name@alias);
    with `against` (a dataset) measure them against its images."""
    check_model_ref(model)
    if against is not None:
        check_dataset(against)
    cfg = GenerateConfig(n=n, temperature=temperature, top_k=top_k, seed=seed)
    settings = get_settings()
    runtime = cpu_threads(None)
    params = {"model": model, **cfg.to_dict(), "against": against, "runtime": runtime}
    with recorded_run(settings, "generate", params) as run_id:
        version = resolve_model_version(settings, model)
        checkpoint = load_model_checkpoint(settings, version)
        real, data_version = None, None
        if against is not None:
            data_version = resolve_dataset_version(settings, against, against_version)
            _, real = load_dataset_images(settings, against, data_version, generator_input(checkpoint))
        png, quality = sample_images(checkpoint, cfg, real)
        name = model.split(":")[0].split("@")[0]
        stored = store_artifact(settings, png, "samples", f"{name}-v{version.version}-samples.png")
        artifact_id = register_samples(settings, version, stored, {
            **cfg.to_dict(), "against": {"dataset": against, "version": data_version.version} if against else None,
            "quality": quality, "run_id": run_id})
        fd = quality["frechet_distance"] if quality else None
        publish_samples(settings, stored, f"{n} samples of {name} v{version.version} (temperature {temperature:g}, "
                                          f"top-k {top_k or 'off'})" + (f"; Fréchet distance to {against}: {fd}"
                                                                         if fd else ""))
    print(f"generate: {n} samples of {name} v{version.version} -> {stored.uri}")
    if quality:
        print(f"generate: Fréchet distance to {quality['n_real']} {against} images on the backbone's features "
              f"(lower is better): samples {fd['samples']:.3f}, tokenizer reconstructions (floor) "
              f"{fd['reconstructions']:.3f}, shuffled tokens (baseline) {fd['shuffled_tokens']:.3f}")
    return {"model": name, "version": version.version, "uri": stored.uri, "sha256": stored.sha256, "n": n,
            "run_id": run_id, "quality": quality, "artifact_id": artifact_id}
