"""Tasks shared by several flows: thin wrappers that give component calls Prefect's
retries, names and logs. I/O that can fail transiently (artifact store, DVC remote)
is retried; computation is not."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.data import access
from components.settings import Settings
from components.storage import StoredArtifact, open_store

# Inputs are large arrays and configs: never hash them for Prefect's cache.
IO_RETRIES = dict(retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)


@task(name="store-artifact", **IO_RETRIES)
def store_artifact(settings: Settings, data: bytes, kind: str, name: str) -> StoredArtifact:
    return open_store(settings).put_bytes(data, kind=kind, name=name)


@task(name="load-artifact", **IO_RETRIES)
def load_artifact(settings: Settings, uri: str, sha256: str) -> bytes:
    return open_store(settings).get_bytes(uri, sha256)


@task(name="load-labeled-set", **IO_RETRIES)
def load_labeled_set(settings: Settings, dataset: str, version, snapshot, size: int) -> access.LabeledSet:
    return access.labeled_set(settings, dataset, version, snapshot, size)


@task(name="load-dataset-images", **IO_RETRIES)
def load_dataset_images(settings: Settings, dataset: str, version, size: int):
    return access.dataset_images(settings, dataset, version, size)
