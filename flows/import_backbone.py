"""Flow `import-backbone`: published generic ViT weights (timm / MAE / Hugging Face, from a
file) converted into our grayscale ViT, stored like a pretrained checkpoint and registered
as a backbone model version; optionally made the model's generic `baseline`."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components.models.checkpoint import save_checkpoint
from components.models.weights_file import ImportedWeights, import_vit_weights
from components.names import check_model
from components.orchestration.lineage import (
    code_revision,
    current_flow_run_id,
    recorded_run,
)
from components.registry import writes
from components.registry.db import session_scope
from components.registry.promotion import BASELINE, designate_baseline
from components.settings import get_settings
from flows.tasks import store_artifact


@task(name="convert-weights", cache_policy=NO_CACHE)
def convert_weights(path: str, config: dict) -> ImportedWeights:
    return import_vit_weights(path, **config)


@task(name="register-imported-backbone", cache_policy=NO_CACHE)
def register_imported(settings, model_name: str, run_id: int, weights: ImportedWeights, stored,
                      alias: str | None, actor: str, reason: str):
    """The version and (when asked) its baseline alias event, in one transaction."""
    with session_scope(settings) as session:
        writes.get_or_create_model(session, model_name, kind="backbone",
                                    description=f"imported from {weights.source['file']}")
        # No dataset version: these weights were trained outside dlvm, on data it never saw;
        # the source file and its sha256 are the lineage.
        version = writes.add_model_version(
            session, model_name=model_name, dataset_version_id=None, label_snapshot_id=None, parent_id=None,
            run_id=run_id, flow_run_id=current_flow_run_id(), code_revision=code_revision(),
            params=weights.params(), metrics={}, artifact_uri=stored.uri, sha256=stored.sha256)
        event = None
        if alias == BASELINE:
            event = designate_baseline(session, version.id, actor=actor, reason=reason,
                                       evidence={"source": weights.source})
        return version, (event.id if event else None)


@flow(name="import-backbone", log_prints=True)
def import_backbone_flow(path: str, name: str, img_size: int = 64, patch_size: int | None = None,
                         arch: str | None = None, embed_dim: int | None = None, depth: int | None = None,
                         num_heads: int | None = None, global_pool: str = "token", alias: str | None = None,
                         actor: str = "import", reason: str = "generic baseline") -> dict:
    """Register the ViT weights in `path` as the next version of backbone `name`. Sizes left
    out are read off the file (width, depth, patch size), except the head count (`arch` or
    `num_heads`). `alias='baseline'` also makes it the model's generic baseline."""
    if alias not in (None, BASELINE):
        raise ValueError(f"import can only set the {BASELINE!r} alias; {alias!r} moves through `dlvm promote`")
    check_model(name)
    settings = get_settings()
    config = {"img_size": img_size, "patch_size": patch_size, "arch": arch, "embed_dim": embed_dim,
              "depth": depth, "num_heads": num_heads, "global_pool": global_pool}
    with recorded_run(settings, "import-backbone", {"path": path, "name": name, "alias": alias, **config}) as run_id:
        weights = convert_weights(path, config)
        checkpoint = save_checkpoint({"kind": "backbone", "vit_config": weights.vit_config.to_dict(),
                                      "state_dict": weights.state_dict})
        stored = store_artifact(settings, checkpoint, "checkpoints", f"{name}.pt")
        version, event_id = register_imported(settings, name, run_id, weights, stored, alias, actor, reason)
    print(f"import-backbone: {name} v{version.version} from {weights.source['file']} "
          f"(sha256 {weights.source['sha256'][:12]}): {len(weights.report.loaded)} tensors loaded, "
          f"{len(weights.report.dropped)} dropped" + (f"; {BASELINE} alias (event {event_id})" if event_id else ""))
    return {"model": name, "version": version.version, "model_version_id": version.id,
            "vit_config": weights.vit_config.to_dict(), "source": weights.source,
            "load_report": weights.params()["load_report"], "baseline_event_id": event_id}
