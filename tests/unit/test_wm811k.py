"""components/data/wm811k.py on a tiny synthetic file in the WM-811K format: maps written as
lossless PNGs, one Label Studio export per split that snapshots against the ingested pool."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from synthetic import WAFER_CLASSES, write_wafer_npz

from components.data.ingest import build_manifest, scan_folder
from components.data.wm811k import find_wm811k, load_wm811k, map_rel_path, write_wm811k
from components.labeling.snapshots import build_label_snapshot

PER_SPLIT = {"train_1": 4, "train_10": 8, "train_20": 4, "train_29": 4, "val": 4, "test": 4}


@pytest.fixture(scope="module")
def wafer(tmp_path_factory):
    root = tmp_path_factory.mktemp("wm")
    arrays = write_wafer_npz(root / "wm.npz", PER_SPLIT)
    maps = load_wm811k(root / "wm.npz")
    summary = write_wm811k(maps, root / "out", progress=False)
    return root, arrays, maps, summary


def test_reader_gives_each_map_with_its_class_and_split(wafer):
    root, arrays, maps, _ = wafer
    assert len(maps) == sum(PER_SPLIT.values()) and maps.classes == list(WAFER_CLASSES)
    for i, expected in enumerate(arrays["maps"]):
        assert np.array_equal(maps.map(i), expected)
    assert [len(maps.indices(s)) for s in PER_SPLIT] == list(PER_SPLIT.values())
    assert maps.split_of(int(maps.indices("val")[0])) == "val"
    with pytest.raises(ValueError, match="unknown split 'train_5'"):
        maps.indices("train_5")


def test_pngs_keep_every_value_at_the_maps_own_size(wafer):
    root, arrays, maps, summary = wafer
    out = root / "out"
    assert summary["pool"] == 24 and summary["test"] == 4
    assert len(list((out / "pool").glob("*.png"))) == 24 and len(list((out / "test").glob("*.png"))) == 4
    for i, expected in enumerate(arrays["maps"]):
        with Image.open(out / map_rel_path(maps, i)) as img:
            assert img.mode == "L"
            assert np.array_equal(np.asarray(img), expected)
    assert set(np.unique(arrays["pixels"])) == {0, 128, 255}


def test_one_export_per_split_pointing_at_its_maps(wafer):
    root, arrays, maps, summary = wafer
    assert list(summary["splits"]) == list(PER_SPLIT)
    for name, count in PER_SPLIT.items():
        tasks = json.loads((root / "out" / "labels" / f"{name}.json").read_text())
        assert len(tasks) == count
        folder = "test" if name == "test" else "pool"
        for task, i in zip(tasks, maps.indices(name)):
            assert task["data"]["image"] == f"/data/local-files/?d=wm811k/{folder}/wm{i:06d}.png"
            assert task["annotations"][0]["result"][0]["value"]["choices"] == [WAFER_CLASSES[arrays["label"][i]]]
    # The synthetic test split's last map repeats map 0 (a train_1 map), as WM-811K's maps do.
    assert summary["exact_duplicates"] == {"total": 1, "within_pool": 0, "test_maps_equal_to_a_pool_map": 1,
                                           "groups_with_disagreeing_labels": 0}


def test_split_exports_snapshot_against_the_ingested_pool(wafer):
    root, arrays, maps, summary = wafer
    manifest = build_manifest(scan_folder(root / "out" / "pool", progress=False), "wm")
    assert manifest["n_images"] == 24
    snap = build_label_snapshot(root / "out" / "labels" / "train_10.json", manifest)
    assert len(snap.items) == 8 and not snap.issues
    by_path = snap.labels_by_path()
    for i in maps.indices("train_10"):
        assert by_path[f"wm{i:06d}.png"] == WAFER_CLASSES[arrays["label"][i]]
    # The test split is not in the pool: every label of it names an unknown image.
    test = build_label_snapshot(root / "out" / "labels" / "test.json", manifest)
    assert not test.items and {i["kind"] for i in test.issues} == {"unknown_image"}


def test_writing_again_changes_nothing_and_a_subset_removes_the_rest(wafer, tmp_path):
    root, arrays, maps, summary = wafer
    again = write_wm811k(maps, root / "out", progress=False)
    assert again["files"] == {"written": 0, "unchanged": 28, "removed": 0}
    small = write_wm811k(maps, tmp_path / "small", limit_per_split=2, progress=False)
    assert small["maps"] == 12 and all(s["maps"] == 2 for s in small["splits"].values())
    smaller = write_wm811k(maps, tmp_path / "small", limit_per_split=1, progress=False)
    assert smaller["files"]["removed"] == 6 and len(list((tmp_path / "small").rglob("*.png"))) == 6


def test_bad_inputs_are_clear_errors(wafer, tmp_path, monkeypatch):
    root, _, maps, _ = wafer
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        write_wm811k(maps, tmp_path / "busy", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_wm811k(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="not a numpy .npz"):
        load_wm811k(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", pixels=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="arrays .* are missing"):
        load_wm811k(tmp_path / "other.npz")
    arrays = dict(np.load(root / "wm.npz"))
    arrays["offsets"] = arrays["offsets"] + 1
    np.savez(tmp_path / "shifted.npz", **arrays)
    with pytest.raises(ValueError, match="offsets do not match"):
        load_wm811k(tmp_path / "shifted.npz")
    monkeypatch.setenv("DLVM_WM811K_NPZ", str(root / "wm.npz"))
    assert find_wm811k() == root / "wm.npz" and find_wm811k(tmp_path / "x.npz") == tmp_path / "x.npz"
