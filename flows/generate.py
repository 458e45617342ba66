"""Flow `generate`: sample new images from a registered sequential backbone (token sequences
drawn with a temperature and top-k, decoded by its tokenizer) and store them as one grid PNG
in the artifact store, shown as a Prefect image artifact; the run is recorded with its
parameters and the grid's URI."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_image_artifact
from prefect.cache_policies import NO_CACHE

from components.inference.generate import GenerateConfig, generate_images, grid_png
from components.names import check_model_ref
from components.orchestration.lineage import recorded_run
from components.settings import get_settings
from components.storage import open_store
from components.training.device import cpu_threads
from flows.tasks import load_model_checkpoint, resolve_model_version, store_artifact


@task(name="sample-images", cache_policy=NO_CACHE)
def sample_images(checkpoint: dict, cfg: GenerateConfig) -> bytes:
    return grid_png(generate_images(checkpoint, cfg))


@task(name="publish-samples", cache_policy=NO_CACHE)
def publish_samples(settings, stored, description: str) -> None:
    create_image_artifact(open_store(settings).presigned_url(stored.uri), description=description)


@flow(name="generate", log_prints=True)
def generate_flow(model: str, n: int = 16, temperature: float = 1.0, top_k: int | None = None,
                  seed: int = 0) -> dict:
    """Sample `n` images from the sequential backbone `model` (a ref: name, name:version, name@alias)."""
    check_model_ref(model)
    cfg = GenerateConfig(n=n, temperature=temperature, top_k=top_k, seed=seed)
    settings = get_settings()
    runtime = cpu_threads(None)
    params = {"model": model, **cfg.to_dict(), "runtime": runtime}
    with recorded_run(settings, "generate", params) as run_id:
        version = resolve_model_version(settings, model)
        png = sample_images(load_model_checkpoint(settings, version), cfg)
        name = model.split(":")[0].split("@")[0]
        stored = store_artifact(settings, png, "samples", f"{name}-v{version.version}-samples.png")
        publish_samples(settings, stored, f"{n} samples of {name} v{version.version} "
                                          f"(temperature {temperature:g}, top-k {top_k or 'off'})")
    print(f"generate: {n} samples of {name} v{version.version} -> {stored.uri}")
    return {"model": name, "version": version.version, "uri": stored.uri, "sha256": stored.sha256, "n": n,
            "run_id": run_id}
