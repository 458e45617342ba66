"""How long the feedback loop's Label Studio operations take on a whole dataset.

    .venv/bin/python -m benchmarks.label_studio_sync            # ELPV: 2,624 tasks
    .venv/bin/python -m benchmarks.label_studio_sync --copies 4 # 10,496 tasks (the images repeated under 4 folders)

Starts Label Studio (components/stack/label_studio.sh, SQLite), then times, through the same
functions the feedback flow calls: importing every image as a task (batches of 500), a
re-sync that imports nothing, annotating ``--annotate`` tasks through the API, a full pull
and an incremental pull of the last 10 changes (pages of 500), posting a prediction on every
unlabeled task, and ranking a 100-task queue. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from components.data.elpv import CLASS_NAMES_4, class_name, elpv_labels, elpv_root
from components.labeling import label_studio as ls
from components.stack.services import label_studio

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> list[tuple[str, float, str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=1, help="repeat the 2,624 ELPV images under N folders")
    ap.add_argument("--annotate", type=int, default=200)
    args = ap.parse_args(argv)
    rows = elpv_labels()
    timings: list[tuple[str, float, str]] = []

    def timed(what: str, fn, detail=lambda result, seconds: ""):
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        timings.append((what, seconds, detail(result, seconds)))
        print(f"{what}: {timings[-1][1]:.1f} s {timings[-1][2]}", flush=True)
        return result

    with tempfile.TemporaryDirectory(prefix="dlvm-ls-bench-") as tmp:
        files = Path(tmp) / "files"
        records = []
        for copy in range(args.copies):
            for r in rows:
                dest = files / f"copy{copy}" / r.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(elpv_root() / r.path, dest)
                # Copies are distinct tasks: the hash key includes the copy.
                sha = hashlib.sha256(dest.read_bytes() + str(copy).encode()).hexdigest()
                records.append({"path": f"copy{copy}/{r.path}", "sha256": sha, "label": class_name(r.probability)})
        with label_studio(Path(tmp) / "label-studio", document_root=Path(tmp)) as server:
            cfg = ls.LabelStudioConfig(server.url, server.token)
            project = ls.ensure_project(cfg, "bench", 1, list(CLASS_NAMES_4))
            ls.connect_local_files(cfg, project.id, str(files.resolve()))
            url = lambda rec: (ls.local_files_url(f"files/{rec['path']}"), None)  # noqa: E731
            synced = timed(f"import {len(records)} tasks", lambda: ls.sync_tasks(cfg, project.id, records, url),
                           lambda r, sec: f"({r.imported} imported, {r.imported / sec:.0f} tasks/s)")
            timed("re-sync (nothing new)", lambda: ls.sync_tasks(cfg, project.id, records, url),
                  lambda r, sec: f"({r.imported} imported, {r.already_present} present)")
            sdk = ls.client(cfg)

            def annotate(recs):
                for rec in recs:
                    sdk.annotations.create(id=synced.task_ids[rec["sha256"]], result=[{
                        "from_name": ls.FROM_NAME, "to_name": ls.TO_NAME, "type": "choices",
                        "value": {"choices": [rec["label"]]}}])
                return len(recs)
            timed(f"annotate {args.annotate} tasks through the API", lambda: annotate(records[:args.annotate]),
                  lambda n, sec: f"({1000 * sec / max(n, 1):.0f} ms each)")
            full = timed("full pull (annotated tasks)", lambda: ls.changed_tasks(cfg, project.id, None),
                         lambda t, sec: f"({len(t)} tasks)")
            cursor = max(t["updated_at"] for t in full)
            annotate(records[args.annotate:args.annotate + 10])
            timed("incremental pull after 10 new labels", lambda: ls.changed_tasks(cfg, project.id, cursor),
                  lambda t, sec: f"({len(t)} tasks)")
            tasks = timed("list all tasks with predictions", lambda: list(ls.iter_tasks(cfg, project.id)),
                          lambda t, sec: f"({len(t)} tasks)")
            unlabeled = [t for t in tasks if not t["annotations"]]
            preds = [{"task": t["id"], "label": CLASS_NAMES_4[0], "score": 0.5} for t in unlabeled]
            timed(f"post {len(preds)} predictions", lambda: ls.post_predictions(cfg, project.id, preds, "bench:1"))
            timed("rank a 100-task queue", lambda: ls.set_queue(cfg, project.id, [t["id"] for t in unlabeled[:100]],
                                                                  {t["id"]: t for t in tasks}), lambda n, sec: f"({n} tasks updated)")
            timed("read the queue tab", lambda: ls.queue_order(cfg, project.id), lambda t, sec: f"({len(t)} tasks)")
    print("\n| operation | seconds | |\n|---|---|---|")
    for what, seconds, detail in timings:
        print(f"| {what} | {seconds:.1f} | {detail} |")
    return timings


if __name__ == "__main__":
    main()
