"""DVC at scale: versioning N small images one file per image, against the same images
packed into tar shards, on a real S3 server (``rclone serve s3`` on loopback).

    .venv/bin/python -m benchmarks.ingest_scale --images 100000     # the docs/BENCHMARKS.md run
    .venv/bin/python -m benchmarks.ingest_scale --images 2000       # a quick look

Images: distinct 32x32 grayscale PNG crops of ELPV cells (real texture, ~1 KB each), in
folders of 1,000. Per-file: ``dvc add`` of the folder tree, then ``dvc push``. Sharded: the
same bytes packed into uncompressed tar shards of ``--shard-size`` images by
``components.data.shards.pack_shards`` (plus its JSON index: every member's shard, size and
sha256) and versioned with DVC the same way, then uploaded to the artifact store and
streamed back (``upload_shards``, ``stream_samples``). Every dvc command runs under
``/usr/bin/time``: wall seconds and peak RSS. See docs/SCALING.md for what the numbers mean
at 10 M images.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from components.data.dvc import REMOTE_NAME, DvcWorkspace
from components.data.elpv import elpv_labels, elpv_root
from components.data.shards import pack_shards, stream_samples, upload_shards
from components.stack.services import start_s3_server, stop
from components.storage import S3ArtifactStore

ROOT = Path(__file__).resolve().parents[1]

ACCESS, SECRET = "bench-access", "bench-secret-0123456789"


def make_images(dest: Path, n: int, size: int, seed: int = 0) -> int:
    """``n`` distinct PNG crops under ``dest/NNN/i.png``; returns total bytes."""
    rng = random.Random(seed)
    cells = [np.asarray(Image.open(elpv_root() / r.path).convert("L")) for r in elpv_labels()[:200]]
    total = 0
    for i in tqdm(range(n), desc="write PNGs", mininterval=2):
        cell = cells[i % len(cells)]
        y, x = rng.randrange(cell.shape[0] - size), rng.randrange(cell.shape[1] - size)
        crop = cell[y:y + size, x:x + size].copy()
        crop[0, 0] = i % 256  # distinct content even for a repeated crop position
        crop[0, 1] = (i // 256) % 256
        path = dest / f"{i // 1000:03d}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def timed_dvc(workspace: DvcWorkspace, *args: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of ``dvc ARGS`` in the workspace."""
    cmd = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "dvc", *args]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_IGNORE_ISATTY": "1", "AWS_MAX_ATTEMPTS": "2"}
    proc = subprocess.run(cmd, cwd=workspace.repo_dir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    seconds, kb = proc.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kb) / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ingest-scale")
    args = ap.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dlvm-ingest-scale-", dir=args.work) as tmp:
        tmp = Path(tmp)
        s3 = start_s3_server(tmp / "s3", ACCESS, SECRET)
        try:
            s3.client().make_bucket("bench")
            perfile = DvcWorkspace(tmp / "perfile", "s3://bench/perfile", s3.endpoint, ACCESS, SECRET)
            perfile.init()
            t = time.perf_counter()
            n_bytes = make_images(perfile.repo_dir / "data" / "images", args.images, args.size)
            print(f"{args.images} PNGs, {n_bytes / 1e6:.1f} MB in {time.perf_counter() - t:.0f} s", flush=True)
            for step, cmd in (("dvc add", ("add", "-q", "data/images")),
                              ("dvc push", ("push", "-q", "-r", REMOTE_NAME, "data/images.dvc")),
                              ("dvc status (no change)", ("status", "-q", "data/images.dvc"))):
                seconds, mb = timed_dvc(perfile, *cmd)
                rows.append({"layout": "per file", "step": step, "seconds": seconds, "peak_rss_mb": mb})
                print(rows[-1], flush=True)

            sharded = DvcWorkspace(tmp / "sharded", "s3://bench/sharded", s3.endpoint, ACCESS, SECRET)
            sharded.init()
            t = time.perf_counter()
            n_shards = len(pack_shards(perfile.repo_dir / "data" / "images", sharded.repo_dir / "data" / "shards",
                                       args.shard_size)["shards"])
            rows.append({"layout": f"{n_shards} shards", "step": "pack (tar + index)",
                         "seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": None})
            for step, cmd in (("dvc add", ("add", "-q", "data/shards")),
                              ("dvc push", ("push", "-q", "-r", REMOTE_NAME, "data/shards.dvc")),
                              ("dvc status (no change)", ("status", "-q", "data/shards.dvc"))):
                seconds, mb = timed_dvc(sharded, *cmd)
                rows.append({"layout": f"{n_shards} shards", "step": step, "seconds": seconds, "peak_rss_mb": mb})
                print(rows[-1], flush=True)

            # The same shards through the artifact store: upload, then stream every verified member back.
            store = S3ArtifactStore("bench", "store", s3.endpoint, ACCESS, SECRET)
            t = time.perf_counter()
            index = upload_shards(store, sharded.repo_dir / "data" / "shards")
            rows.append({"layout": f"{n_shards} shards", "step": "upload_shards (artifact store)",
                         "seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": None})
            t = time.perf_counter()
            streamed = sum(1 for _ in stream_samples(store, index.uri, index.sha256))
            assert streamed == args.images, (streamed, args.images)
            rows.append({"layout": f"{n_shards} shards", "step": "stream_samples (all, verified)",
                         "seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": None})
            print(rows[-2:], flush=True)
        finally:
            stop(s3.process)
    lines = [f"# DVC ingest at scale: {args.images:,} PNGs ({n_bytes / 1e6:.0f} MB), per file vs shards of "
             f"{args.shard_size}", "", "| layout | step | seconds | peak RSS (MB) |", "|---|---|---|---|"]
    for r in rows:
        rss = "" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        lines.append(f"| {r['layout']} | {r['step']} | {r['seconds']:.1f} | {rss} |")
    report = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report)
    (args.out / "results.json").write_text(json.dumps({"images": args.images, "bytes": n_bytes, "rows": rows}, indent=1))
    print(report)
    return {"rows": rows}


if __name__ == "__main__":
    main()
