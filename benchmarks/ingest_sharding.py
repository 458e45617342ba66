"""`dlvm ingest` of the WM-811K unlabeled pool (49,798 wafer maps), sharded against one file
per image: the whole command as a user runs it, then the first read for training.

    .venv/bin/python -m benchmarks.ingest_sharding                          # the docs/SCALING.md run
    .venv/bin/python -m benchmarks.ingest_sharding --limit-per-split 200    # a quick look (1,000 maps)

Steps: ``dlvm data wm811k`` writes the maps (once, outside the timing); then, for each layout,
in a fresh DLVM_HOME (embedded defaults: SQLite registry, local-directory DVC remote and
artifact store), against one Prefect server on loopback started beforehand (so neither run
pays Prefect's start):

* ``dlvm ingest POOL --dataset wm811k-pool`` under ``/usr/bin/time`` (wall s, peak RSS):
  per file with DLVM_SHARD_THRESHOLD above the pool's size, sharded with the default
  threshold (20,000) and DLVM_SHARD_SIZE (1,000);
* the files DVC tracks and the size of the DVC cache and remote;
* the first read for training: ``components.data.access.dataset_images`` at 32 px (DVC
  checkout of the version into an emptied workspace, every image decoded and hash-checked
  from its file or its shard), then the same call served from the decode cache.

Results go to ``--json`` (default benchmarks/results/ingest-sharding.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.data import access
from components.data.wm811k import find_wm811k, load_wm811k, write_wm811k
from components.stack.services import prefect_server

ROOT = Path(__file__).resolve().parents[1]
DLVM = str(Path(sys.executable).with_name("dlvm"))
DATASET = "wm811k-pool"


def _timed(cmd: list[str], env: dict) -> dict:
    """Run ``cmd`` under /usr/bin/time; wall seconds, peak RSS and the tail of its output."""
    wrapped = ["/usr/bin/time", "-f", "%e %M", *cmd] if Path("/usr/bin/time").exists() else cmd
    start = time.perf_counter()
    proc = subprocess.run(wrapped, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    peak_mb = None
    if wrapped is not cmd:
        last = proc.stderr.strip().splitlines()[-1].split()
        wall, peak_mb = float(last[0]), int(last[1]) / 1024
    log_tasks = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines()
                 if "Finished in state" in line or "Beginning flow run" in line]
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb) if peak_mb else None,
            "prefect_log": log_tasks, "stdout_tail": proc.stdout.strip().splitlines()[-1:]}


def _du_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1) if path.exists() else 0.0


def run_layout(label: str, pool: Path, threshold: int, work: Path, prefect_api: str) -> dict:
    home = work / label
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLVM_", "PREFECT_"))}
    env.update(DLVM_HOME=str(home), DLVM_SHARD_THRESHOLD=str(threshold), OMP_WAIT_POLICY="PASSIVE",
               OMP_NUM_THREADS="1", PREFECT_API_URL=prefect_api)
    row = {"layout": label, "threshold": threshold, "ingest": _timed(
        [DLVM, "ingest", str(pool), "--dataset", DATASET, "--summary", str(work / f"{label}.json")], env)}
    summary = json.loads((work / f"{label}.json").read_text())
    row.update(images=summary["n_images"], quarantined=len(summary["quarantined"]), stored_as=summary["layout"])

    from components.registry.db import session_scope
    from components.registry.queries import latest_dataset_version
    from components.settings import Settings

    settings = Settings(home=home)
    dvc_dir = settings.dvc_repo / access.dataset_rel_dir(DATASET)
    row["dvc_tracked_files"] = sum(1 for p in dvc_dir.rglob("*") if p.is_file())
    row["dvc_cache_mb"] = _du_mb(settings.dvc_repo / ".dvc" / "cache")
    row["dvc_remote_mb"] = _du_mb(Path(settings.dvc_remote))
    with session_scope(settings) as session:
        version = latest_dataset_version(session, DATASET)
    shutil.rmtree(dvc_dir)  # a training machine starts from the version, not from the ingest's staging
    start = time.perf_counter()
    _, images = access.dataset_images(settings, DATASET, version, 32, progress=False)
    row["first_read_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    access.dataset_images(settings, DATASET, version, 32, progress=False)
    row["cached_read_s"] = round(time.perf_counter() - start, 2)
    row["pixels_shape"] = list(images.shape)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--npz", type=Path, default=None, help="wm811k.npz (default: the data shelf)")
    ap.add_argument("--limit-per-split", type=int, default=None, help="a stratified subset per split (quick look)")
    ap.add_argument("--layouts", default="files,shards", help="which layouts to run, comma-separated")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ingest-sharding.json")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="dlvm-ingest-sharding-"))
    try:
        out = work / "wm811k"
        start = time.perf_counter()
        written = write_wm811k(load_wm811k(find_wm811k(args.npz)), out, limit_per_split=args.limit_per_split)
        write_s = time.perf_counter() - start
        pool = out / "pool"
        rows = []
        with prefect_server(work / "prefect-home") as prefect_api:
            for label in [x.strip() for x in args.layouts.split(",") if x.strip()]:
                if label not in ("files", "shards"):
                    raise SystemExit(f"unknown layout {label!r}: files or shards")
                threshold = written["pool"] + 1 if label == "files" else 20_000
                if label == "shards" and written["pool"] <= threshold:
                    threshold = max(1, written["pool"] // 2)  # a quick look still shards
                rows.append(run_layout(label, pool, threshold, work, prefect_api))
                print(json.dumps(rows[-1]), flush=True)
        result = {
            "benchmark": "ingest-sharding",
            "command": "python -m benchmarks.ingest_sharding" + ("" if argv is None else " " + " ".join(argv)),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "load_avg_1_5_15": [round(x, 1) for x in os.getloadavg()]},
            "threads": "OMP_NUM_THREADS=1, OMP_WAIT_POLICY=PASSIVE",
            "pool_maps": written["pool"], "write_pngs_s": round(write_s, 1), "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        return result
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
