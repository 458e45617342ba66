"""Read a registered dataset version or label snapshot back as arrays ready for training.

The glue between the registry (which version), the artifact store (its manifest), DVC
(its files) and the decode cache (its pixels): every step that trains or evaluates
starts here, so they all see the same images in the same order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from components.data.dvc import DvcWorkspace
from components.data.images import ImageCache
from components.evaluation.split import test_split
from components.settings import Settings
from components.storage import open_store


def dataset_rel_dir(dataset: str) -> str:
    """Where a dataset's files live inside the DVC workspace."""
    return f"data/{dataset}"


def dvc_workspace(settings: Settings) -> DvcWorkspace:
    return DvcWorkspace(
        settings.dvc_repo, settings.dvc_remote,
        s3_endpoint=settings.s3_endpoint or None,
        access_key=settings.s3_access_key.get_secret_value() or None,
        secret_key=settings.s3_secret_key.get_secret_value() or None,
    )


def load_json_artifact(settings: Settings, uri: str, sha256: str) -> dict:
    return json.loads(open_store(settings).get_bytes(uri, sha256))


def dataset_images(settings: Settings, dataset: str, version, size: int,
                   progress: bool = True) -> tuple[dict, np.ndarray]:
    """The manifest of a dataset version and all its images as uint8 [N, size, size]."""
    manifest = load_json_artifact(settings, version.manifest_uri, version.manifest_sha256)
    cache = ImageCache(settings.cache)
    image_dir = settings.dvc_repo / dataset_rel_dir(dataset)
    if cache.has(manifest, size):
        return manifest, cache.load(manifest, image_dir, size, progress=progress)
    # Only touch the DVC workspace when pixels must be decoded: it restores exactly this
    # version's files (from the remote if the workspace holds another version), and is held
    # until they are decoded so no other flow checks another version out meanwhile.
    workspace = dvc_workspace(settings)
    with workspace.exclusive():
        workspace.init()
        workspace.checkout(version.dvc_file, dataset_rel_dir(dataset))
        images = cache.load(manifest, image_dir, size, progress=progress)
    return manifest, images


@dataclass
class LabeledSet:
    """The labeled images of a snapshot, in snapshot order, with the snapshot's fixed test split."""
    images: np.ndarray          # uint8 [N, size, size]
    labels: np.ndarray          # int64 [N], indices into classes
    classes: list[str]
    image_sha256: list[str]
    paths: list[str]
    train_idx: np.ndarray       # the training pool (label fractions are drawn from it)
    test_idx: np.ndarray        # the test split: never trained on, never used to choose anything


def labeled_set(settings: Settings, dataset: str, version, snapshot, size: int,
                progress: bool = True) -> LabeledSet:
    manifest, images = dataset_images(settings, dataset, version, size, progress=progress)
    snap = load_json_artifact(settings, snapshot.artifact_uri, snapshot.sha256)
    if snap.get("format") == "dlvm-box-snapshot/1":  # components.labeling.boxes.BOX_SNAPSHOT_FORMAT
        raise ValueError(f"label snapshot v{snapshot.version} of {dataset} holds defect boxes, not image classes: "
                         "name a classification snapshot")
    index = {item["path"]: i for i, item in enumerate(manifest["images"])}
    classes = list(snap["classes"])
    class_index = {c: i for i, c in enumerate(classes)}
    rows = [index[item["path"]] for item in snap["items"]]
    labels = np.array([class_index[item["label"]] for item in snap["items"]], dtype=np.int64)
    shas = [item["sha256"] for item in snap["items"]]
    # The one place the test split is computed: every flow that trains, evaluates or gates
    # on a snapshot gets it from here (hash-assigned, so it depends only on the labels).
    train_idx, test_idx = test_split(shas, labels)
    return LabeledSet(images=images[rows], labels=labels, classes=classes, image_sha256=shas,
                      paths=[item["path"] for item in snap["items"]], train_idx=train_idx, test_idx=test_idx)
