"""A dataset version kept as tar shards in the DVC workspace (ingest past DLVM_SHARD_THRESHOLD)
reads back exactly like one file per image: the same pixels for training, the same files for
labeling, every shard and member verified."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from components.data import access
from components.data.images import ImageCache, ImageHashMismatch, load_image_array
from components.data.ingest import build_manifest, scan_folder, stage_into_workspace
from components.data.shards import (
    INDEX_NAME,
    PackedFolder,
    ShardCorrupted,
    shard_layout,
    stage_shards,
)
from components.storage import open_store


def _wafer_folder(root, n: int = 7):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.choice(np.array([0, 128, 255], np.uint8), size=(16 + i, 18)), "L").save(sub / f"m{i}.png")
    return root


@pytest.fixture
def sharded(tmp_path):
    src = _wafer_folder(tmp_path / "src")
    scan = scan_folder(src, progress=False)
    workspace = tmp_path / "repo" / "data" / "wafers"
    layout = stage_shards(src, [(r.path, r.sha256) for r in scan.good], workspace, shard_size=3, progress=False)
    manifest = {**build_manifest(scan, "wafers"), "layout": layout}
    return src, scan, workspace, layout, manifest


def test_staged_shards_hold_every_image_and_nothing_else(sharded, tmp_path):
    src, scan, workspace, layout, manifest = sharded
    assert layout["n_shards"] == 3 and shard_layout(manifest) == layout
    assert sorted(p.name for p in workspace.iterdir()) == [INDEX_NAME, "shard-00000.tar", "shard-00001.tar",
                                                          "shard-00002.tar"]
    assert hashlib.sha256((workspace / INDEX_NAME).read_bytes()).hexdigest() == layout["index_sha256"]
    packed = PackedFolder(workspace, layout["index_sha256"])
    assert packed.names() == [r["path"] for r in manifest["images"]]
    for rec in manifest["images"]:
        assert packed.read(rec["path"]) == (src / rec["path"]).read_bytes()
    # A per-file version staged there before is replaced, not mixed in.
    stage_into_workspace(scan, src, workspace)
    again = stage_shards(src, [(r.path, r.sha256) for r in scan.good], workspace, shard_size=3, progress=False)
    assert again == layout and len(list(workspace.rglob("*"))) == 4
    assert shard_layout(build_manifest(scan, "wafers")) is None


def test_a_file_changed_after_validation_is_refused(sharded):
    src, scan, workspace, layout, manifest = sharded
    Image.new("L", (20, 20), 7).save(src / "a" / "m1.png")
    with pytest.raises(ValueError, match="m1.png changed since it was validated"):
        stage_shards(src, [(r.path, r.sha256) for r in scan.good], workspace, shard_size=3, progress=False)


def test_the_decode_cache_reads_shards_to_the_same_pixels(sharded, tmp_path):
    src, scan, workspace, layout, manifest = sharded
    from_files = ImageCache(tmp_path / "c1").load(manifest, src, 16, progress=False)
    from_shards = ImageCache(tmp_path / "c2").load(manifest, workspace, 16, progress=False,
                                                   read=PackedFolder(workspace, layout["index_sha256"]).read)
    assert from_shards.shape == (7, 16, 16) and np.array_equal(from_files, from_shards)
    assert np.array_equal(from_shards[0], load_image_array(src / manifest["images"][0]["path"], 16))


def test_damaged_shards_or_index_are_refused(sharded):
    src, scan, workspace, layout, manifest = sharded
    with pytest.raises(ShardCorrupted, match="the dataset version says"):
        PackedFolder(workspace, "0" * 64)
    shard = workspace / "shard-00001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first member's bytes
    shard.write_bytes(bytes(data))
    packed = PackedFolder(workspace, layout["index_sha256"])
    names = packed.names()
    assert packed.read(names[0])  # shard 0 is intact
    with pytest.raises(ShardCorrupted, match="shard-00001.tar hashes to"):
        packed.read(names[3])


def test_a_member_that_disagrees_with_the_manifest_fails_decoding(sharded, tmp_path):
    src, scan, workspace, layout, manifest = sharded
    wrong = json.loads(json.dumps(manifest))
    wrong["images"][4]["sha256"] = "f" * 64
    with pytest.raises(ImageHashMismatch):
        ImageCache(tmp_path / "c").load(wrong, workspace, 16, progress=False,
                                        read=PackedFolder(workspace, layout["index_sha256"]).read)


def test_extract_refuses_member_names_that_leave_the_folder(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    (folder / "shard-00000.tar").write_bytes(buf.getvalue())
    index = {"format": "dlvm-shards/1", "shard_size": 1,
             "shards": [{"name": "shard-00000.tar", "members": 1, "size": len(buf.getvalue()),
                         "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}],
             "members": {"../escape.png": {"shard": 0, "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}}}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ShardCorrupted, match="outside"):
        PackedFolder(folder).extract(tmp_path / "out", progress=False)
    assert not (tmp_path / "escape.png").exists()


def test_dataset_access_reads_a_sharded_version_through_dvc(dlvm_home, tmp_path):
    """What pretraining (dataset_images) and labeling (dataset_files) call, on a version
    versioned with DVC as shards, restored from the remote after the workspace was emptied."""
    settings = dlvm_home
    src = _wafer_folder(tmp_path / "src", n=5)
    scan = scan_folder(src, progress=False)
    workspace = access.dvc_workspace(settings)
    workspace.init()
    target = settings.dvc_repo / access.dataset_rel_dir("wafers")
    layout = stage_shards(src, [(r.path, r.sha256) for r in scan.good], target, shard_size=2, progress=False)
    dvc = workspace.add_and_push(access.dataset_rel_dir("wafers"))
    assert dvc.nfiles == 4  # 3 shards + the index, not 5 images
    manifest = {**build_manifest(scan, "wafers"), "layout": layout}
    stored = open_store(settings).put_bytes(json.dumps(manifest).encode(), "manifests", "wafers.json")
    version = SimpleNamespace(manifest_uri=stored.uri, manifest_sha256=stored.sha256, dvc_file=dvc.dvc_file_text)
    for p in target.iterdir():
        p.unlink()

    got_manifest, images = access.dataset_images(settings, "wafers", version, 16, progress=False)
    assert got_manifest["layout"] == layout and images.shape == (5, 16, 16)
    expected = np.stack([load_image_array(src / r["path"], 16) for r in manifest["images"]])
    assert np.array_equal(images, expected)

    files = access.dataset_files(settings, "wafers", version, progress=False)
    assert files != target and (files / access.EXTRACTED_MARK).is_file()
    for rec in manifest["images"]:
        assert (files / rec["path"]).read_bytes() == (src / rec["path"]).read_bytes()
    assert access.dataset_files(settings, "wafers", version, progress=False) == files  # extracted once
