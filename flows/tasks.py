"""Tasks shared by several flows: thin wrappers that give component calls Prefect's
retries, names and logs. I/O that can fail transiently (artifact store, DVC remote)
is retried when the failure is transient (components/failures.py); computation and
registry reads are not."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.data import access
from components.failures import is_transient
from components.orchestration.lineage import code_revision, current_flow_run_id
from components.registry import queries, refs, writes
from components.registry.db import session_scope
from components.registry.promotion import designate_baseline
from components.settings import Settings, io_retry_delays
from components.storage import StoredArtifact, open_store


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect's retry condition: retry only failures that can succeed on retry (a dead
    connection, a 5xx), never deterministic ones (a 403, a missing bucket, a name too long)."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


# One retry per delay of DLVM_IO_RETRY_DELAYS (default 1, 5, 15 s), read once, here.
# Inputs are large arrays and configs: never hash them for Prefect's cache.
RETRY_DELAYS = io_retry_delays()
IO_RETRIES = dict(retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient,
                  cache_policy=NO_CACHE)
ONCE = dict(cache_policy=NO_CACHE)


# --- artifacts and data -----------------------------------------------------------------


@task(name="store-artifact", **IO_RETRIES)
def store_artifact(settings: Settings, data: bytes, kind: str, name: str) -> StoredArtifact:
    return open_store(settings).put_bytes(data, kind=kind, name=name)


@task(name="load-artifact", **IO_RETRIES)
def load_artifact(settings: Settings, uri: str, sha256: str) -> bytes:
    return open_store(settings).get_bytes(uri, sha256)


@task(name="load-labeled-set", **IO_RETRIES)
def load_labeled_set(settings: Settings, dataset: str, version, snapshot, size: int) -> access.LabeledSet:
    """The snapshot's images and labels with its fixed test split (computed in access.labeled_set)."""
    return access.labeled_set(settings, dataset, version, snapshot, size)


@task(name="load-box-set", **IO_RETRIES)
def load_box_set(settings: Settings, dataset: str, version, snapshot, size: int) -> access.BoxSet:
    """A box snapshot's images, boxes and fixed test split (computed in access.box_set)."""
    return access.box_set(settings, dataset, version, snapshot, size)


@task(name="load-dataset-images", **IO_RETRIES)
def load_dataset_images(settings: Settings, dataset: str, version, size):
    return access.dataset_images(settings, dataset, version, size)


@task(name="profile-dataset", **IO_RETRIES)
def profile_dataset(settings: Settings, dataset: str, version):
    """Image sizes, count and pixel kind of a dataset version: what the auto recipe is chosen from."""
    return access.dataset_profile(settings, dataset, version)


# --- registry reads ---------------------------------------------------------------------


@task(name="resolve-dataset-version", **ONCE)
def resolve_dataset_version(settings: Settings, dataset: str, version: int | None):
    with session_scope(settings) as session:
        return refs.resolve_dataset_version(session, dataset, version)


@task(name="resolve-label-snapshot", **ONCE)
def resolve_label_snapshot(settings: Settings, dataset: str, dataset_version: int | None,
                           snapshot_version: int | None):
    with session_scope(settings) as session:
        return refs.resolve_label_snapshot(session, dataset, dataset_version, snapshot_version)


@task(name="resolve-model-version", **ONCE)
def resolve_model_version(settings: Settings, ref: str):
    with session_scope(settings) as session:
        return refs.resolve_model_version(session, ref)


@task(name="load-model-checkpoint", **IO_RETRIES)
def load_model_checkpoint(settings: Settings, model_version) -> dict:
    """A registered version's checkpoint, verified against its recorded sha256."""
    from components.models.checkpoint import load_checkpoint  # torch: not for the data-only flows

    return load_checkpoint(open_store(settings).get_bytes(model_version.artifact_uri, model_version.sha256))


# --- registry writes --------------------------------------------------------------------


@task(name="register-model-version", **ONCE)
def register_model_version(settings: Settings, model_name: str, kind: str, stored: StoredArtifact, *,
                           run_id: int | None, dataset_version=None, snapshot=None, parent=None,
                           params: dict | None = None, metrics: dict | None = None, description: str = ""):
    """The stored artifact as the model's next version, with its lineage (this flow run, the code)."""
    with session_scope(settings) as session:
        writes.get_or_create_model(session, model_name, kind=kind, description=description)
        return writes.add_model_version(
            session, model_name=model_name, dataset_version_id=dataset_version.id if dataset_version else None,
            label_snapshot_id=snapshot.id if snapshot else None, parent_id=parent.id if parent else None,
            run_id=run_id, flow_run_id=current_flow_run_id(), code_revision=code_revision(),
            params=params, metrics=metrics, artifact_uri=stored.uri, sha256=stored.sha256)


@task(name="register-label-snapshot", **ONCE)
def register_label_snapshot(settings: Settings, dataset_version_id: int, snapshot, stored: StoredArtifact,
                            source: str):
    """(row, created): the snapshot's row, or the existing one with the same content."""
    with session_scope(settings) as session:
        existing = queries.find_label_snapshot(session, dataset_version_id, snapshot.content_hash)
        if existing is not None:
            return existing, False
        return writes.add_label_snapshot(
            session, dataset_version_id=dataset_version_id, content_hash=snapshot.content_hash,
            classes=snapshot.classes, n_labeled=len(snapshot.items), n_issues=len(snapshot.issues),
            source=source, artifact_uri=stored.uri, sha256=stored.sha256,
            flow_run_id=current_flow_run_id()), True


@task(name="designate-baseline", **ONCE)
def set_baseline(settings: Settings, model_version_id: int, actor: str, reason: str, evidence: dict) -> int:
    with session_scope(settings) as session:
        return designate_baseline(session, model_version_id, actor=actor, reason=reason, evidence=evidence).id


# --- backbones --------------------------------------------------------------------------


def load_backbone(settings: Settings, ref: str, scratch_arch, scratch_input=None):
    """(model version or None, backbone config (ViT or ResNet), state dict or None, input
    preprocessing as a plain dict or None) for a backbone reference; 'scratch' is a randomly
    initialised backbone of the ``scratch_arch`` architecture decoding images as
    ``scratch_input`` (the recipe's, which the flow knows: this module stays free of training
    code, so that the ingest and labels stages of dvc.yaml do not depend on it). A registered
    backbone brings the preprocessing it was pretrained with, where it recorded one."""
    from components.models.backbones import checkpoint_config

    if ref == refs.SCRATCH:
        return None, scratch_arch, None, scratch_input
    model_version = resolve_model_version(settings, ref)
    checkpoint = load_model_checkpoint(settings, model_version)
    return model_version, checkpoint_config(checkpoint), checkpoint["state_dict"], checkpoint.get("preprocess")
