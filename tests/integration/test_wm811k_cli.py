"""WM-811K through the product on a tiny synthetic wafer set, as a user types it: `dlvm data
wm811k`, `dlvm ingest` of the pool past a lowered DLVM_SHARD_THRESHOLD (shards, automatically),
one label snapshot per split, pretraining on the sharded version; and class-per-folder labels
with `dlvm labels --from-folders` after an ingest that leaves masks out."""
from __future__ import annotations

import json

import numpy as np
import pytest
from clirun import dlvm, dlvm_env
from PIL import Image
from sqlmodel import select
from synthetic import write_wafer_npz

from components.data import access
from components.data.images import load_image_array
from components.data.shards import INDEX_NAME
from components.registry.db import session_scope
from components.registry.tables import DatasetVersion, LabelSnapshot
from components.settings import Settings

PER_SPLIT = {"train_1": 3, "train_10": 6, "train_20": 4, "train_29": 4, "val": 5, "test": 4}


@pytest.fixture(scope="module")
def wafer_product(tmp_path_factory, prefect_api):
    root = tmp_path_factory.mktemp("wm-cli")
    write_wafer_npz(root / "wm.npz", PER_SPLIT)
    env = dlvm_env(root / "state", PREFECT_API_URL=prefect_api, DLVM_SHARD_THRESHOLD="10", DLVM_SHARD_SIZE="5")
    written = dlvm(env, "data", "wm811k", "--npz", str(root / "wm.npz"), "--out", str(root / "out"))
    ingest = dlvm(env, "ingest", str(root / "out" / "pool"), "--dataset", "wafers",
                  "--summary", str(root / "ingest.json"))
    return root, env, written, ingest, json.loads((root / "ingest.json").read_text())


def test_data_command_writes_pool_test_and_one_export_per_split(wafer_product):
    root, env, written, _, _ = wafer_product
    assert len(list((root / "out" / "pool").glob("*.png"))) == 22
    assert len(list((root / "out" / "test").glob("*.png"))) == 4
    assert sorted(p.stem for p in (root / "out" / "labels").glob("*.json")) == sorted(PER_SPLIT)
    assert "pool/: 22 maps" in written.stdout and "1 test maps equal a pool map" in written.stdout
    missing = dlvm(env, "data", "wm811k", "--npz", str(root / "nope.npz"), "--out", str(root / "x"), check=False)
    assert missing.returncode == 1 and "nope.npz does not exist" in missing.stdout


def test_a_pool_past_the_threshold_is_versioned_as_shards(wafer_product):
    root, env, _, ingest, summary = wafer_product
    assert summary["n_images"] == 22 and summary["layout"] == "5 shards of up to 5 images"
    assert "5 shards of up to 5 images" in ingest.stdout
    settings = Settings(home=root / "state")
    workspace = settings.dvc_repo / "data" / "wafers"
    assert sorted(p.name for p in workspace.iterdir()) == [INDEX_NAME] + [f"shard-0000{i}.tar" for i in range(5)]
    with session_scope(settings) as session:
        version = session.exec(select(DatasetVersion)).one()
    manifest = access.load_json_artifact(settings, version.manifest_uri, version.manifest_sha256)
    assert manifest["layout"]["kind"] == "shards" and len(manifest["images"]) == 22
    # What training reads: the same pixels as the PNG files, read out of the shards.
    _, images = access.dataset_images(settings, "wafers", version, 16, progress=False)
    expected = np.stack([load_image_array(root / "out" / "pool" / r["path"], 16) for r in manifest["images"]])
    assert np.array_equal(images, expected)
    again = dlvm(env, "ingest", str(root / "out" / "pool"), "--dataset", "wafers")
    assert "unchanged, no new version" in again.stdout


def test_labels_come_in_as_one_snapshot_per_split(wafer_product):
    root, env, *_ = wafer_product
    for split in ("train_1", "train_10"):
        out = dlvm(env, "labels", str(root / "out" / "labels" / f"{split}.json"), "--dataset", "wafers",
                   "--summary", str(root / f"{split}.json"))
        summary = json.loads((root / f"{split}.json").read_text())
        assert summary["created"] and summary["n_labeled"] == PER_SPLIT[split] and not summary["issues"], out.stdout
    with session_scope(Settings(home=root / "state")) as session:
        assert sorted(s.n_labeled for s in session.exec(select(LabelSnapshot)).all()) == [3, 6]


def test_pretraining_reads_the_sharded_version(wafer_product):
    root, env, *_ = wafer_product
    out = dlvm(env, "pretrain", "--dataset", "wafers", "--steps", "2", "--summary", str(root / "pretrain.json"))
    assert "registered" in out.stdout
    assert json.loads((root / "pretrain.json").read_text())["version"] == 1


def test_class_folders_with_masks_left_out(tmp_path, prefect_api):
    tree = tmp_path / "defects"
    rng = np.random.default_rng(0)
    labels = {}
    for cls in ("crack", "ok"):
        for k in range(3):
            for folder, suffix in ((cls, ""), (f"{cls}/masks", "_mask")):
                path = tree / folder / f"{cls}{k}{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L").save(path)
            labels[f"{cls}/{cls}{k}.png"] = cls
    env = dlvm_env(tmp_path / "state", PREFECT_API_URL=prefect_api)
    ingest = dlvm(env, "ingest", str(tree), "--dataset", "defects", "--exclude", "masks",
                  "--summary", str(tmp_path / "ingest.json"))
    folders = {f["folder"]: f for f in json.loads((tmp_path / "ingest.json").read_text())["folders"]}
    assert folders["crack"]["taken"] == 3 and folders["crack/masks"] == {
        "folder": "crack/masks", "taken": 0, "quarantined": 0, "excluded": 3}
    assert "6 left out by the patterns" in ingest.stdout and "crack/masks" in ingest.stdout

    dlvm(env, "labels", "--from-folders", str(tree), "--dataset", "defects", "--summary", str(tmp_path / "f.json"))
    from_folders = json.loads((tmp_path / "f.json").read_text())
    # The masks are labeled too by their folder, but are not in the version: unknown images.
    assert from_folders["n_labeled"] == 6 and {i["kind"] for i in from_folders["issues"]} == {"unknown_image"}

    from components.data.elpv import write_label_studio_export
    export = write_label_studio_export(tmp_path / "ls.json", [f"/data/local-files/?d=defects/{p}" for p in labels],
                                       list(labels.values()))
    out = dlvm(env, "labels", str(export), "--dataset", "defects", "--summary", str(tmp_path / "ls-summary.json"))
    assert json.loads((tmp_path / "ls-summary.json").read_text())["content_hash"] == from_folders["content_hash"]
    assert "(unchanged)" in out.stdout  # the same snapshot: no new row

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in labels.items()))
    out = dlvm(env, "labels", "--from-csv", str(csv_path), "--dataset", "defects")
    assert "(unchanged)" in out.stdout
    both = dlvm(env, "labels", str(export), "--from-csv", str(csv_path), "--dataset", "defects", check=False)
    assert both.returncode == 2 and "exactly one of" in both.stdout
