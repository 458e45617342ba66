"""The prepared GPU checks (benchmarks/device_bundle.py + benchmarks/device_check.sh), run here on
the CPU: the bundle gives the benchmark exactly the images, labels and split the elpv-dataset
package gives it; it refuses what would not travel; the script runs both steps and leaves
only what the device tool can bring back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_label_efficiency_benchmark import load_benchmark

from benchmarks.device_bundle import (
    DEFAULT_GENERIC_IMAGES,
    DEFAULT_SIZE,
    build_bundle,
    load_elpv_bundle,
)

ROOT = Path(__file__).resolve().parents[2]

SIZE, ELPV_N, GENERIC_N = 32, 300, 40


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, generic_corpus) -> Path:
    out = tmp_path_factory.mktemp("device") / "bundle"
    manifest = build_bundle(out, SIZE, GENERIC_N, generic_corpus, elpv_images=ELPV_N)
    assert (manifest["elpv_images"], manifest["generic_images"], manifest["size"]) == (ELPV_N, GENERIC_N, SIZE)
    return out


def test_bundle_gives_the_benchmark_what_the_package_gives(bundle, generic_corpus, tmp_path):
    bench = load_benchmark()
    images, y4, y2, shas = bench.load_elpv(SIZE, tmp_path / "a", bundle / f"elpv-{SIZE}")
    full_images, full_y4, full_y2, full_shas = bench.load_elpv(SIZE, tmp_path / "b")
    # same pixels, labels and original-file hashes (hence the same hash-assigned 75/25 split)
    assert np.array_equal(images, full_images[:ELPV_N])
    assert np.array_equal(y4, full_y4[:ELPV_N]) and np.array_equal(y2, full_y2[:ELPV_N])
    assert shas == full_shas[:ELPV_N] and len(set(y4.tolist())) == 4

    generic = bench.load_generic(bundle / "generic", SIZE, 10_000, tmp_path / "c")
    assert np.array_equal(generic, bench.load_generic(generic_corpus, SIZE, GENERIC_N, tmp_path / "d"))


def test_bundle_refuses_what_would_not_travel_and_keeps_what_is_there(bundle, generic_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"over the 0.1 MiB .* lower --generic-images"):
        build_bundle(tmp_path / "big", SIZE, GENERIC_N, generic_corpus, max_mib=0.1, elpv_images=ELPV_N)
    assert not (tmp_path / "big").exists() and not (tmp_path / "big.partial").exists()

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a device bundle"):
        build_bundle(precious, SIZE, GENERIC_N, generic_corpus, elpv_images=10)
    assert (precious / "notes.txt").read_text() == "mine"

    with pytest.raises(ValueError, match=r"at 32 px but the recipe needs 128 px; rebuild it with .*--size 128"):
        load_elpv_bundle(bundle / f"elpv-{SIZE}", 128)
    with pytest.raises(FileNotFoundError, match="not an ELPV bundle folder"):
        load_elpv_bundle(bundle / "generic", SIZE)


def run_check(step: str, out: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "DEVICE": "cpu", **env}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), step], env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def returned_files(out: Path) -> list[Path]:
    """What the device tool brings back: at most 8 files, none more than 2 folders down."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert 0 < len(files) <= 8, files
    assert all(len(p.relative_to(out).parts) <= 3 for p in files), files
    return files


def test_device_check_runs_both_steps(bundle, tmp_path):
    out = tmp_path / "le"
    done = run_check("label-efficiency", out, MODE="smoke", BUNDLE=str(bundle), CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    names = {p.relative_to(out).as_posix() for p in returned_files(out)}
    assert {"environment.txt", "label-efficiency.log", "label-efficiency-elpv-smoke/report.md",
            "label-efficiency-elpv-smoke/results.json"} <= names
    results = json.loads((out / "label-efficiency-elpv-smoke" / "results.json").read_text())
    assert results["mode"] == "smoke" and "--elpv-bundle" in results["command"]
    assert f"ELPV from {bundle}/elpv-{SIZE}" in (out / "label-efficiency-elpv-smoke" / "report.md").read_text()
    assert "torch" in (out / "environment.txt").read_text()

    out = tmp_path / "tp"
    done = run_check("throughput", out, THROUGHPUT_ARGS="--models ti --img-sizes 32 --batch-size 8 --warmup 1 "
                                                       "--steps 1 --threads 1 --no-compile")
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    returned_files(out)
    (row,) = json.loads((out / "throughput.json").read_text())["rows"]
    assert (row["model"], row["img_px"], row["compiled"]) == ("ViT-Ti", 32, False)


def test_device_check_without_a_bundle_says_how_to_make_one(tmp_path):
    done = run_check("label-efficiency", tmp_path / "out", BUNDLE=str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "build it with benchmarks/device_bundle.py" in done.stderr
    done = run_check("pretrain", tmp_path / "out")
    assert done.returncode == 2 and "unknown step 'pretrain'" in done.stderr


def test_device_plan_pretrains_on_every_generic_image_the_bundle_carries():
    # device_check.sh passes the bundle's own size (--size), so any DEFAULT_SIZE fits; the
    # standard ELPV plan asks for at least as many generic images as the bundle holds.
    assert DEFAULT_SIZE >= 32
    assert load_benchmark().plan_for("elpv", "standard").generic_limit >= DEFAULT_GENERIC_IMAGES
