"""Smoke test of benchmarks/ingest_scale.py: both layouts go through DVC to a real S3 server,
and the shards hold exactly the per-file images (index hashes match the bytes)."""
from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.ingest_scale import main, make_images, pack_shards  # noqa: E402

pytestmark = pytest.mark.s3


def test_shards_hold_exactly_the_images(tmp_path):
    make_images(tmp_path / "images", 250, 32)
    n = pack_shards(tmp_path / "images", tmp_path / "shards", 100)
    assert n == 3
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert len(index) == 250
    seen = 0
    for shard in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                assert index[member.name]["shard"] == shard.name
                assert hashlib.sha256(data).hexdigest() == index[member.name]["sha256"]
                assert data == (tmp_path / "images" / member.name).read_bytes()
                seen += 1
    assert seen == 250
    assert len({hashlib.sha256(p.read_bytes()).digest() for p in (tmp_path / "images").rglob("*.png")}) == 250


def test_benchmark_runs_both_layouts_through_s3(tmp_path):
    out = main(["--images", "300", "--shard-size", "100", "--work", str(tmp_path), "--out", str(tmp_path / "out")])
    steps = {(r["layout"], r["step"]) for r in out["rows"]}
    assert ("per file", "dvc push") in steps and ("3 shards", "dvc push") in steps
    assert "| per file | dvc add |" in (tmp_path / "out" / "report.md").read_text()
