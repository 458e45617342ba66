"""Smoke test of benchmarks/ingest_scale.py: both layouts go through DVC to a real S3 server,
and the benchmark's images packed by components/data/shards.py (what the benchmark calls)
hold exactly the per-file images (index hashes match the bytes)."""
from __future__ import annotations

import hashlib
import tarfile

import pytest

from benchmarks.ingest_scale import main, make_images
from components.data.shards import pack_shards

pytestmark = pytest.mark.s3


def test_shards_hold_exactly_the_images(tmp_path):
    make_images(tmp_path / "images", 250, 32)
    index = pack_shards(tmp_path / "images", tmp_path / "shards", 100)
    assert [s["members"] for s in index["shards"]] == [100, 100, 50]
    assert len(index["members"]) == 250
    seen = 0
    for number, shard in enumerate(sorted((tmp_path / "shards").glob("*.tar"))):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                assert index["members"][member.name]["shard"] == number
                assert hashlib.sha256(data).hexdigest() == index["members"][member.name]["sha256"]
                assert data == (tmp_path / "images" / member.name).read_bytes()
                seen += 1
    assert seen == 250
    assert len({hashlib.sha256(p.read_bytes()).digest() for p in (tmp_path / "images").rglob("*.png")}) == 250


def test_benchmark_runs_both_layouts_through_s3(tmp_path):
    out = main(["--images", "300", "--shard-size", "100", "--work", str(tmp_path), "--out", str(tmp_path / "out")])
    steps = {(r["layout"], r["step"]) for r in out["rows"]}
    assert ("per file", "dvc push") in steps and ("3 shards", "dvc push") in steps
    assert ("3 shards", "stream_samples (all, verified)") in steps  # it asserts every image came back
    assert "| per file | dvc add |" in (tmp_path / "out" / "report.md").read_text()
