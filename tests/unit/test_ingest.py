"""Ingest: validation reasons, quarantine, manifest hashing, staging, DVC versioning."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_folder import ELPV, EXPECTED_BAD, GOOD, make_raw_folder

from components.data.dvc import DvcError, DvcWorkspace, parse_dvc_file
from components.data.ingest import (
    build_manifest,
    iter_files,
    manifest_json_bytes,
    quarantine,
    scan_folder,
    stage_into_workspace,
)
from components.data.validate import ImageLimits, validate_image


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_raw_folder(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def scan(raw):
    return scan_folder(raw, ImageLimits(), progress=False)


def test_walk_is_sorted_and_skips_hidden(raw):
    files = iter_files(raw)
    assert files == sorted(files)
    assert not any(part.startswith(".") for f in files for part in f.split("/"))
    assert "deep/sixteen.png" in files and "bad/notes.txt" in files


def test_every_bad_file_has_the_right_reason(scan):
    got = {b.path: b.reason for b in scan.bad}
    assert got == EXPECTED_BAD
    by_path = {b.path: b for b in scan.bad}
    assert by_path["z/copy_of_cell0001.png"].duplicate_of == "a/cell0001.png"
    assert "a/cell0001.png" in by_path["z/copy_of_cell0001.png"].detail
    assert by_path["z/copy_of_rgb.jpg"].duplicate_of == "deep/rgb.jpg"
    assert all(b.detail for b in scan.bad)


def test_good_images_include_16_bit_and_rgb(scan):
    good = {r.path: r for r in scan.good}
    assert sorted(good) == sorted(GOOD + ["deep/sixteen.png", "deep/rgb.jpg"])
    assert good["deep/sixteen.png"].mode.startswith("I;16") and good["deep/sixteen.png"].bit_depth == 16
    assert good["deep/rgb.jpg"].mode == "RGB"
    assert good["a/cell0001.png"].mode == "L" and good["a/cell0001.png"].bit_depth == 8
    assert (good["a/cell0001.png"].width, good["a/cell0001.png"].height) == (300, 300)
    for r in scan.good:
        data = (scan.root / r.path).read_bytes()
        assert r.sha256 == hashlib.sha256(data).hexdigest() and r.size == len(data)


def test_bomb_is_refused_by_our_limit_below_pillows(tmp_path):
    # 9000x8000 = 72 M pixels: under Pillow's own guard, over our 64 M limit.
    p = tmp_path / "big.png"
    Image.new("L", (9000, 8000)).save(p)
    check = validate_image(p, ImageLimits())
    assert (check.ok, check.reason, check.width, check.height) == (False, "decompression_bomb", 9000, 8000)
    assert validate_image(p, ImageLimits(max_pixels=80_000_000)).ok
    wide = tmp_path / "wide.png"
    Image.new("L", (17000, 20)).save(wide)
    assert validate_image(wide, ImageLimits()).reason == "too_large"


def test_quarantine_copies_bad_files_with_reasons(scan, raw, tmp_path):
    listed = quarantine(scan, raw, tmp_path / "q")
    assert {b.path for b in listed} == set(EXPECTED_BAD)
    for rel in EXPECTED_BAD:
        assert (tmp_path / "q" / rel).read_bytes() == (raw / rel).read_bytes()
    reasons = json.loads((tmp_path / "q/REASONS.json").read_text())
    assert {r["path"]: r["reason"] for r in reasons} == EXPECTED_BAD
    assert not (tmp_path / "q/a/cell0001.png").exists()  # good files stay out


def test_manifest_hash_is_stable_and_content_addressed(scan, raw, tmp_path):
    m = build_manifest(scan, "demo")
    assert m["n_images"] == len(GOOD) + 2 and [i["path"] for i in m["images"]] == sorted(i["path"] for i in m["images"])
    assert m["n_bytes"] == sum(i["size"] for i in m["images"])
    expected = hashlib.sha256("".join(f"{i['path']}\t{i['sha256']}\n" for i in m["images"]).encode()).hexdigest()
    assert m["content_hash"] == expected
    # Re-scan of the unchanged folder: identical manifest and bytes.
    again = build_manifest(scan_folder(raw, progress=False), "demo")
    assert again == m and manifest_json_bytes(again) == manifest_json_bytes(m)
    assert build_manifest(scan, "other-name")["content_hash"] == m["content_hash"]

    # Changing one pixel or renaming one file changes the hash.
    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)
    img = np.asarray(Image.open(copy / "cell0005.png")).copy()
    img[0, 0] ^= 1
    Image.fromarray(img).save(copy / "cell0005.png")
    assert build_manifest(scan_folder(copy, progress=False))["content_hash"] != m["content_hash"]
    (copy / "cell0005.png").rename(copy / "cell0005b.png")
    assert build_manifest(scan_folder(copy, progress=False))["content_hash"] != m["content_hash"]


def test_stage_into_workspace_copies_updates_and_removes(scan, raw, tmp_path):
    ws = tmp_path / "ws"
    (ws / "old").mkdir(parents=True)
    (ws / "old/stale.png").write_bytes(b"stale")
    (ws / "a").mkdir()
    (ws / "a/cell0001.png").write_bytes(b"changed")
    stats = stage_into_workspace(scan, raw, ws)
    assert stats == {"copied": len(scan.good), "unchanged": 0, "removed": 1}
    assert sorted(iter_files(ws)) == sorted(r.path for r in scan.good)
    assert not (ws / "old").exists()
    for r in scan.good:
        assert (ws / r.path).read_bytes() == (raw / r.path).read_bytes()
    assert stage_into_workspace(scan, raw, ws) == {"copied": 0, "unchanged": len(scan.good), "removed": 0}
    with pytest.raises(ValueError):
        stage_into_workspace(scan, None, raw)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in iter_files(root)}


def test_dvc_add_push_and_checkout_restore_versions(scan, raw, tmp_path):
    remote = tmp_path / "remote"
    ws = DvcWorkspace(tmp_path / "repo", str(remote))
    ws.init()
    ws.init()  # idempotent
    data_dir = ws.repo_dir / "datasets/demo"

    stage_into_workspace(scan, raw, data_dir)
    v1_files = _tree_bytes(data_dir)
    v1 = ws.add_and_push("datasets/demo")
    assert v1.md5.endswith(".dir") and v1.nfiles == len(scan.good)
    assert v1.size == sum(r.size for r in scan.good)
    assert parse_dvc_file(v1.dvc_file_text) == v1
    assert remote.is_dir() and any(remote.rglob("*"))

    # Version 2: one image changed, one removed, one added.
    v2_raw = tmp_path / "raw2"
    shutil.copytree(raw, v2_raw)
    (v2_raw / "cell0005.png").unlink()
    shutil.copyfile(ELPV / "cell0009.png", v2_raw / "a/cell0001.png")
    shutil.copyfile(ELPV / "cell0010.png", v2_raw / "new.png")
    scan2 = scan_folder(v2_raw, progress=False)
    stage_into_workspace(scan2, None, data_dir)
    v2 = ws.add_and_push("datasets/demo")
    assert v2.md5 != v1.md5
    v2_files = _tree_bytes(data_dir)

    # Same repo: back to v1 byte for byte, v2's extra file gone; then forward again.
    ws.checkout(v1.dvc_file_text, "datasets/demo")
    assert _tree_bytes(data_dir) == v1_files
    ws.checkout(v2.dvc_file_text, "datasets/demo")
    assert _tree_bytes(data_dir) == v2_files

    # A fresh repo sharing only the remote restores v1 from the remote alone.
    fresh = DvcWorkspace(tmp_path / "fresh", str(remote))
    fresh.init()
    restored = fresh.checkout(v1.dvc_file_text, "data/v1")
    assert _tree_bytes(restored) == v1_files

    # A version the remote does not have fails loudly, naming the command.
    missing = v1.dvc_file_text.replace(v1.md5, "0" * 32 + ".dir")
    other = DvcWorkspace(tmp_path / "other", str(tmp_path / "empty-remote"))
    other.init()
    with pytest.raises(DvcError, match="dvc pull") as failed:
        other.checkout(missing, "x")
    assert "ERROR" in str(failed.value)  # DVC's own reason, not only an exit code


def test_workspace_is_held_by_one_user_at_a_time(tmp_path):
    """Two flows sharing a workspace take turns (flock per open file, so a second
    DvcWorkspace object waits like another process would); a waiter gives up clearly."""
    ws = DvcWorkspace(tmp_path / "repo", str(tmp_path / "remote"))
    other = DvcWorkspace(tmp_path / "repo", str(tmp_path / "remote"), timeout_s=0.5)
    with ws.exclusive():
        ws.init()  # re-entrant for its holder
        with pytest.raises(DvcError, match=r"another process held .*\.repo\.lock for over 0 s"):
            other.init()
    with other.exclusive():  # released
        assert (other.repo_dir / ".dvc").is_dir()


# A generated key may start with "-" (token_urlsafe does, one time in 64): CI once failed on
# `dvc remote modify ... secret_access_key -ZD4...`, read as an option.
@pytest.mark.parametrize("access_key, secret_key", [("AKIAEXAMPLE", "s3cr3t"), ("-dlvm-key", "-ZD4nRddB3PlQ2g")])
def test_dvc_s3_remote_config_keeps_secrets_local(tmp_path, access_key, secret_key):
    ws = DvcWorkspace(tmp_path / "repo", "s3://bucket/dvc", s3_endpoint="http://127.0.0.1:9",
                      access_key=access_key, secret_key=secret_key)
    ws.init()
    shared = (ws.repo_dir / ".dvc/config").read_text()
    local = (ws.repo_dir / ".dvc/config.local").read_text()
    assert "s3://bucket/dvc" in shared and "endpointurl = http://127.0.0.1:9" in shared
    assert secret_key not in shared and access_key not in shared
    assert f"secret_access_key = {secret_key}" in local and f"access_key_id = {access_key}" in local


def test_a_failed_dvc_command_never_shows_the_secret_key(tmp_path):
    ws = DvcWorkspace(tmp_path / "repo", "s3://bucket/dvc", access_key="AKIAEXAMPLE", secret_key="s3cr3t-value")
    ws.init()
    with pytest.raises(DvcError) as failed:
        ws.run("remote", "modify", "--local", "--", "no-such-remote", "secret_access_key", ws.secret_key)
    assert "no-such-remote" in str(failed.value) and "***" in str(failed.value)
    assert "s3cr3t-value" not in str(failed.value)


def test_rgb_jpeg_bytes_are_decodable(raw):
    # The accepted JPEG really decodes to RGB pixels (not just a header).
    with Image.open(io.BytesIO((raw / "deep/rgb.jpg").read_bytes())) as img:
        img.load()
        assert img.mode == "RGB" and img.size == (300, 300)


def test_patterns_match_names_folders_and_paths():
    from components.data.ingest import matches_pattern, select_files

    assert matches_pattern("train/masks/a_mask.png", "masks")            # a folder name anywhere
    assert matches_pattern("train/masks/a_mask.png", "*_MASK.png")       # a file name, any case
    assert matches_pattern("train/masks/a.png", "train/masks")           # a leading folder path
    assert matches_pattern("train/masks/a.png", "train/masks/")
    assert matches_pattern("x/train/a.png", "*/train/*.png")
    assert not matches_pattern("train/a.png", "masks")
    assert not matches_pattern("other/train/a.png", "train/*")           # paths start at the top
    files = ["README.md", "docs/fig.png", "train/a.png", "train/masks/a.png", "test/b.png"]
    assert select_files(files) == (files, [])
    taken, left = select_files(files, include=["*.png"], exclude=["masks", "docs"])
    assert taken == ["train/a.png", "test/b.png"]
    assert left == ["README.md", "docs/fig.png", "train/masks/a.png"]


def test_scan_with_patterns_counts_per_folder(tmp_path):
    from components.data.ingest import folder_counts

    for seed, rel in enumerate(("good/a.png", "good/b.png", "masks/a.png", "good/masks/c.png", "top.png")):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20), dtype=np.uint8), "L").save(p)
    (tmp_path / "good" / "notes.txt").write_text("not an image")
    scan = scan_folder(tmp_path, progress=False, exclude=["masks"])
    assert sorted(r.path for r in scan.good) == ["good/a.png", "good/b.png", "top.png"]
    assert scan.excluded == ["good/masks/c.png", "masks/a.png"]
    assert [b.path for b in scan.bad] == ["good/notes.txt"]  # excluded files are never read
    assert folder_counts(scan) == [
        {"folder": ".", "taken": 1, "quarantined": 0, "excluded": 0},
        {"folder": "good", "taken": 2, "quarantined": 1, "excluded": 0},
        {"folder": "good/masks", "taken": 0, "quarantined": 0, "excluded": 1},
        {"folder": "masks", "taken": 0, "quarantined": 0, "excluded": 1},
    ]
    only = scan_folder(tmp_path, progress=False, include=["good/*.png"])
    assert sorted(r.path for r in only.good) == ["good/a.png", "good/b.png", "good/masks/c.png"]


@pytest.mark.parametrize("flow_module", ["flows.ingest", "flows.labels"])
def test_the_data_flows_start_without_torch(flow_module):
    """`dlvm ingest` and `dlvm labels` touch no model: importing torch would add about a second
    to every such command (a fresh interpreter, as the command line runs them)."""
    import subprocess
    import sys

    code = f"import sys, {flow_module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False", f"{flow_module} imports torch"
