"""Read a registered dataset version or label snapshot back as arrays ready for training.

The glue between the registry (which version), the artifact store (its manifest), DVC
(its files) and the decode cache (its pixels): every step that trains or evaluates
starts here, so they all see the same images in the same order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.data.dvc import DvcWorkspace
from components.data.images import ImageCache, Preprocess
from components.data.profile import DataProfile, profile_manifest
from components.data.shards import PackedFolder, shard_layout
from components.evaluation.split import test_split
from components.names import check_dataset
from components.settings import Settings
from components.storage import open_store

# Written last into a folder of extracted shard members: the extraction finished.
EXTRACTED_MARK = ".extracted"


def dataset_rel_dir(dataset: str) -> str:
    """Where a dataset's files live inside the DVC workspace (the name is checked: it becomes a path)."""
    return f"data/{check_dataset(dataset)}"


def dvc_workspace(settings: Settings) -> DvcWorkspace:
    return DvcWorkspace(
        settings.dvc_repo, settings.dvc_remote,
        s3_endpoint=settings.s3_endpoint or None,
        access_key=settings.s3_access_key.get_secret_value() or None,
        secret_key=settings.s3_secret_key.get_secret_value() or None,
    )


def load_json_artifact(settings: Settings, uri: str, sha256: str) -> dict:
    return json.loads(open_store(settings).get_bytes(uri, sha256))


def dataset_profile(settings: Settings, dataset: str, version) -> DataProfile:
    """What the auto recipe is chosen from: sizes and count from the version's manifest, and
    categorical pixels or not from a sample of its files where the DVC workspace holds them."""
    manifest = load_json_artifact(settings, version.manifest_uri, version.manifest_sha256)
    root = settings.dvc_repo / dataset_rel_dir(dataset)
    return profile_manifest(manifest, root if root.is_dir() else None)


def dataset_images(settings: Settings, dataset: str, version, size: "int | Preprocess",
                   progress: bool = True) -> tuple[dict, np.ndarray]:
    """The manifest of a dataset version and all its images as uint8 [N, size, size], decoded
    as ``size`` says (a :class:`Preprocess`; a bare int means bicubic, stretched)."""
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
        images = cache.load(manifest, image_dir, size, progress=progress, read=_image_reader(manifest, image_dir))
    return manifest, images


def _image_reader(manifest: dict, image_dir: Path):
    """How to read an image's bytes from a checked-out version: from its shards when the
    version is sharded, else None (one file per image, at its path)."""
    layout = shard_layout(manifest)
    if layout is None:
        return None
    return PackedFolder(image_dir, layout["index_sha256"]).read


def dataset_files(settings: Settings, dataset: str, version, manifest: dict | None = None,
                  progress: bool = True) -> Path:
    """A folder holding every image of a dataset version as a file at its manifest path (what
    Label Studio shows and what gets uploaded for presigned URLs).

    One file per image: the DVC workspace, checked out to this version. Sharded: the shards
    are checked out and extracted once (every member verified) into the cache, under a
    folder named by the version's content hash; later calls find it complete."""
    if manifest is None:
        manifest = load_json_artifact(settings, version.manifest_uri, version.manifest_sha256)
    layout = shard_layout(manifest)
    image_dir = settings.dvc_repo / dataset_rel_dir(dataset)
    if layout is not None:
        files_dir = settings.cache / "files" / f"{dataset}-{manifest['content_hash'][:16]}"
        if (files_dir / EXTRACTED_MARK).is_file():
            return files_dir
    workspace = dvc_workspace(settings)
    with workspace.exclusive():  # nobody checks another version out while its files are read
        workspace.init()
        workspace.checkout(version.dvc_file, dataset_rel_dir(dataset))
        if layout is None:
            return image_dir
        PackedFolder(image_dir, layout["index_sha256"]).extract(files_dir, progress=progress)
    (files_dir / EXTRACTED_MARK).write_text(layout["index_sha256"] + "\n")
    return files_dir


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


def labeled_set(settings: Settings, dataset: str, version, snapshot, size: "int | Preprocess",
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


@dataclass
class BoxSet:
    """The images of a box snapshot, in snapshot order, with their boxes scaled to the decoded
    ``size x size`` images and the snapshot's fixed test split (stratified by defect / none)."""
    images: np.ndarray          # uint8 [N, size, size]
    boxes: list[np.ndarray]     # per image float32 [n_i, 4]: x1, y1, x2, y2 in pixels of the decoded image
    labels: list[np.ndarray]    # per image int64 [n_i], indices into classes
    classes: list[str]
    image_sha256: list[str]
    paths: list[str]
    train_idx: np.ndarray
    test_idx: np.ndarray


def box_set(settings: Settings, dataset: str, version, snapshot, size: int, progress: bool = True) -> BoxSet:
    """A box snapshot's images decoded at ``size`` (stretched, as :class:`Preprocess` does by
    default, so boxes scale by ``size / width`` and ``size / height``), their boxes and split."""
    snap = load_json_artifact(settings, snapshot.artifact_uri, snapshot.sha256)
    if snap.get("format") != "dlvm-box-snapshot/1":  # components.labeling.boxes.BOX_SNAPSHOT_FORMAT
        raise ValueError(f"label snapshot v{snapshot.version} of {dataset} holds image classes, not boxes: "
                         "name a box snapshot")
    manifest, images = dataset_images(settings, dataset, version, size, progress=progress)
    index = {item["path"]: i for i, item in enumerate(manifest["images"])}
    records = {item["path"]: item for item in manifest["images"]}
    classes = list(snap["classes"])
    class_index = {c: i for i, c in enumerate(classes)}
    boxes, labels = [], []
    for item in snap["items"]:
        record = records[item["path"]]
        width, height = item.get("width") or record.get("width"), item.get("height") or record.get("height")
        if not width or not height:
            raise ValueError(f"{item['path']}: image size unknown, cannot scale its boxes")
        scale = np.array([size / width, size / height, size / width, size / height], np.float32)
        corners = [[b["x1"], b["y1"], b["x2"], b["y2"]] for b in item["boxes"]]
        boxes.append(np.asarray(corners, np.float32).reshape(-1, 4) * scale)
        labels.append(np.array([class_index[b["label"]] for b in item["boxes"]], dtype=np.int64))
    shas = [item["sha256"] for item in snap["items"]]
    has_boxes = np.array([len(lab) > 0 for lab in labels], dtype=np.int64)
    train_idx, test_idx = test_split(shas, has_boxes)
    rows = [index[item["path"]] for item in snap["items"]]
    return BoxSet(images=images[rows], boxes=boxes, labels=labels, classes=classes, image_sha256=shas,
                  paths=[item["path"] for item in snap["items"]], train_idx=train_idx, test_idx=test_idx)
