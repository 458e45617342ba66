"""How long a big Label Studio export takes to become a label snapshot, and how much memory.

    python -m benchmarks.label_export_scale                       # 400,000 tasks over 3,000 images
    python -m benchmarks.label_export_scale --tasks 2000 --images 100 --json out.json

The probe of issue 16 item 5: a 95 MB export of 400k tasks, most of them for images the
dataset version does not hold. The export is generated (a manifest of ``--images`` images,
one labeled task for each of them, the rest pointing at unknown images), written to disk,
then read and validated by the same function ``dlvm labels`` runs
(components/labeling/snapshots.py: build_label_snapshot) and serialized as the snapshot
artifact. Reported: export size, seconds per phase, issue counts, peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from components.labeling.snapshots import build_label_snapshot, to_json_bytes

CLASSES = ("functional", "possibly_defective", "likely_defective", "defective")


def make_manifest(n_images: int) -> dict:
    images = [{"path": f"cells/cell{i:06d}.png", "sha256": f"{i:064x}", "size": 1000} for i in range(n_images)]
    return {"images": images, "n_images": n_images, "content_hash": "0" * 64}


def write_export(path: Path, n_tasks: int, n_images: int) -> None:
    """The export, task by task (the benchmark's own memory stays out of the peak it reports)."""
    with path.open("w") as f:
        f.write("[")
        for t, task in enumerate(export_tasks(n_tasks, n_images)):
            f.write(("," if t else "") + json.dumps(task))
        f.write("]")


def export_tasks(n_tasks: int, n_images: int):
    for t in range(n_tasks):
        known = t < n_images
        image = f"/data/local-files/?d=elpv/cells/cell{t:06d}.png" if known else f"/data/upload/1/other{t:07d}.png"
        yield {"id": t + 1, "data": {"image": image}, "annotations": [{
            "id": t + 1, "completed_by": 1, "was_cancelled": False, "created_at": "2026-11-29T00:00:00Z",
            "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                        "value": {"choices": [CLASSES[t % len(CLASSES)]]}}]}]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=400_000)
    ap.add_argument("--images", type=int, default=3_000)
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args(argv)
    if not 0 < args.images <= args.tasks:
        raise SystemExit("--images must be between 1 and --tasks")
    manifest = make_manifest(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.json"
        write_export(path, args.tasks, args.images)
        size_mb = path.stat().st_size / 1e6
        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        snapshot = build_label_snapshot(path, manifest, allowed_classes=list(CLASSES))
        t1 = time.perf_counter()
        artifact = to_json_bytes(snapshot)
        t2 = time.perf_counter()
    result = {"tasks": args.tasks, "images": args.images, "export_mb": round(size_mb, 1),
              "labeled": len(snapshot.items), "issues": snapshot.issue_counts(),
              "build_s": round(t1 - t0, 2), "serialize_s": round(t2 - t1, 2),
              "snapshot_artifact_mb": round(len(artifact) / 1e6, 1),
              "peak_rss_mb": round(peak_rss_mb(), 0), "peak_rss_before_mb": round(rss_before, 0),
              "cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()]}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
