"""A simulated labeling campaign through a real Label Studio server: does ordering the
queue by the model's uncertainty (+ diversity) buy accuracy per label over random order?

    .venv/bin/python -m benchmarks.labeling_campaign --quick     # about 10 min on 2 CPU cores
    .venv/bin/python -m benchmarks.labeling_campaign             # the whole ELPV training pool

Protocol:

* ELPV 4-class; the label-efficiency benchmark's 75/25 stratified, hash-assigned split. The
  training images (or a stratified subset with ``--quick``) are the unlabeled pool, imported
  as tasks into one Label Studio project per arm and seed (started by components/stack/label_studio.sh);
  the test images are never shown to the labelers.
* Backbone: the label-efficiency benchmark's quick-mode domain SimCLR ResNet (the auto
  recipe for ELPV at 128 px, pretrained on the training images only, cached), frozen; the "production model" of each round is a linear probe on
  its features, refit on every label pulled so far.
* Arms: ``random`` (labelers take unlabeled tasks in random order), ``uncertainty`` (the
  dlvm queue without diversity) and ``uncertainty+diversity`` (dlvm's default queue).
* Each round, per arm: the platform's own code posts the model's pre-annotations and ranks
  the queue (components.labeling.feedback / components.labeling.label_studio, as the feedback flow does); the
  simulated labeler reads the queue through the API and labels the top ``--per-round`` tasks
  with ELPV's ground truth (annotations created through the API); the labels are pulled back
  incrementally (``changed_tasks`` + ``merge_snapshot``) and the probe is refit. Round 0 is
  the same random seed set in every arm.
* Test accuracy after each round; mean over seeds with a 95 % t-interval across seeds.

Writes ``results.json``, ``report.md`` and ``curve.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmarks.label_efficiency import domain_data, load_elpv, plan_for, planned_recipe, pretrained_encoder
from components.data.elpv import (
    CLASS_NAMES_4,
    elpv_labels,
    elpv_root,
    stratified_subset,
)
from components.evaluation.split import test_split
from components.labeling import label_studio as ls
from components.labeling.feedback import plan_preannotations
from components.labeling.snapshots import merge_snapshot
from components.stack.services import label_studio
from components.training.device import cpu_threads
from components.training.adapt import (
    AdaptConfig,
    build_encoder,
    extract_features,
    fit_probe,
    predict_proba_from_features,
)

ROOT = Path(__file__).resolve().parents[1]

ARMS = ("random", "uncertainty", "uncertainty+diversity")


def probe_model(features: np.ndarray, labels: np.ndarray):
    return fit_probe(features, labels, len(CLASS_NAMES_4), AdaptConfig(method="probe", probe_folds=3))


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval across seeds (0-width with one seed)."""
    from statistics import mean, stdev
    m = mean(values)
    if len(values) < 2:
        return m, m, m
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(values), 2.0)
    half = t * stdev(values) / len(values) ** 0.5
    return m, m - half, m + half


def run_arm(cfg: ls.LabelStudioConfig, arm: str, seed: int, pool: list[int], seed_set: list[int], rounds: int,
            per_round: int, features: np.ndarray, y: np.ndarray, test_idx: np.ndarray, image_dir: Path,
            files_root: Path, paths: list[str], shas: list[str]) -> list[dict]:
    sdk = ls.client(cfg)
    project = ls.ensure_project(cfg, f"campaign-{arm}-seed{seed}", 1, list(CLASS_NAMES_4))
    # Label Studio may serve the pool's files to this project (local files under its document root).
    ls.connect_local_files(cfg, project.id, str((image_dir / "images").resolve()))
    records = [{"path": paths[i], "sha256": shas[i]} for i in pool]
    synced = ls.sync_tasks(cfg, project.id, records, lambda rec: (
        ls.local_files_url(str((image_dir / rec["path"]).resolve().relative_to(files_root))), None))
    task_of = synced.task_ids  # sha -> task id
    row_of_sha = {shas[i]: i for i in pool}
    manifest = {"content_hash": "campaign", "images": records}
    rng = np.random.default_rng(1000 + seed)
    snapshot, cursor, curve = None, None, []

    def label(task_ids: list[int]) -> None:
        for tid in task_ids:
            sha = task_sha[tid]
            sdk.annotations.create(id=tid, result=[{"from_name": ls.FROM_NAME, "to_name": ls.TO_NAME, "type": "choices",
                                                     "value": {"choices": [CLASS_NAMES_4[y[row_of_sha[sha]]]]}}])

    task_sha = {tid: sha for sha, tid in task_of.items()}
    label([task_of[shas[i]] for i in seed_set])
    for rnd in range(rounds + 1):
        # Pull what the labelers did since the last round (the feedback flow's incremental pull).
        changed = ls.changed_tasks(cfg, project.id, cursor)
        cursor = max([t["updated_at"] for t in changed] + ([cursor] if cursor else []))
        snapshot = merge_snapshot(snapshot, changed, manifest, list(CLASS_NAMES_4), image_key="dlvm_path")
        rows = np.array([row_of_sha[it["sha256"]] for it in snapshot.items])
        labels = np.array([CLASS_NAMES_4.index(it["label"]) for it in snapshot.items])
        head = probe_model(features[rows], labels)
        accuracy = float((predict_proba_from_features(head, features[test_idx]).argmax(1) == y[test_idx]).mean())
        curve.append({"arm": arm, "seed": seed, "round": rnd, "labels": int(len(rows)), "accuracy": accuracy})
        if rnd == rounds:
            break
        labeled = set(rows.tolist())
        if arm == "random":
            unlabeled = [task_of[shas[i]] for i in pool if i not in labeled]
            picked = [int(t) for t in rng.permutation(unlabeled)[:per_round]]
        else:
            probs = predict_proba_from_features(head, features)
            tasks = list(ls.iter_tasks(cfg, project.id))
            plan = plan_preannotations(tasks, {s: i for s, i in row_of_sha.items()}, probs, features,
                                       list(CLASS_NAMES_4), f"probe-round{rnd}", per_round,
                                       diversity=arm == "uncertainty+diversity")
            ls.post_predictions(cfg, project.id, plan.predictions, f"probe-round{rnd}")
            ls.set_queue(cfg, project.id, plan.queue, {t["id"]: t for t in tasks})
            picked = [t["id"] for t in ls.queue_order(cfg, project.id)][:per_round]  # what the labeler sees
        label(picked)
    return curve


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 600-image pool, 2 seeds, 5 rounds of 20")
    ap.add_argument("--pool", type=int, default=None, help="stratified subset of the training images (default all)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--per-round", type=int, default=40)
    ap.add_argument("--seed-labels", type=int, default=20)
    ap.add_argument("--cache", type=Path, default=ROOT / ".dlvm" / "bench-cache")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--backbone", choices=("domain-simclr", "scratch"), default="domain-simclr",
                    help="scratch: a random-init encoder (smoke runs; no pretraining)")
    ap.add_argument("--label-studio-url", default=None, help="use this server instead of starting one")
    ap.add_argument("--label-studio-token", default=None)
    ap.add_argument("--files-root", type=Path, default=None,
                    help="that server's LOCAL_FILES_DOCUMENT_ROOT (--work-dir must lie below it)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where the pool's images are copied (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.quick:
        args.pool, args.seeds, args.rounds, args.per_round = args.pool or 600, 2, 5, 20
    out = args.out or ROOT / "benchmarks" / "results" / f"labeling-campaign{'-quick' if args.quick else ''}"
    started = time.time()

    plan = plan_for("elpv", "quick")
    _, _, profile, _ = domain_data("elpv", plan, args.cache, args)
    recipe, _ = planned_recipe("elpv", plan, profile, cpu_threads()["threads"], "cpu")
    images, y, _, shas = load_elpv(recipe.preprocess, args.cache)
    train_idx, test_idx = test_split(shas, y)
    if args.label_studio_url and not (args.label_studio_token and args.files_root):
        ap.error("--label-studio-url needs --label-studio-token and --files-root")
    if args.backbone == "scratch":
        encoder_state, info = None, {"steps": 0, "batch_size": 0, "method": "random init"}
    else:
        encoder_state, info = pretrained_encoder("elpv-domain-simclr", images[np.sort(train_idx)], recipe.pretrain, args.cache)
    features = extract_features(build_encoder(recipe.backbone, encoder_state), images)
    pool = sorted(int(i) for i in train_idx)
    if args.pool:
        pool = sorted(pool[j] for j in stratified_subset([CLASS_NAMES_4[y[i]] for i in pool], args.pool, seed=0))
    paths = [r.path for r in elpv_labels()]

    curves: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dlvm-campaign-", dir=args.work_dir) as tmp, ExitStack() as stack:
        image_dir = Path(tmp) / "elpv"
        for i in pool:  # what Label Studio shows: the real images, served as local files
            (image_dir / paths[i]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(elpv_root() / paths[i], image_dir / paths[i])
        if args.label_studio_url:
            cfg, files_root = ls.LabelStudioConfig(args.label_studio_url, args.label_studio_token), args.files_root
        else:
            server = stack.enter_context(label_studio(Path(tmp) / "label-studio", document_root=Path(tmp)))
            cfg, files_root = ls.LabelStudioConfig(server.url, server.token), server.document_root
        jobs = [(arm, seed) for seed in range(args.seeds) for arm in ARMS]
        for arm, seed in tqdm(jobs, desc="campaigns"):
            seed_set = sorted(pool[j] for j in stratified_subset([CLASS_NAMES_4[y[i]] for i in pool],
                                                                args.seed_labels, seed=100 + seed))
            curves += run_arm(cfg, arm, seed, pool, seed_set, args.rounds, args.per_round, features, y,
                              test_idx, image_dir, files_root.resolve(), paths, shas)

    table = []
    for arm in ARMS:
        for rnd in range(args.rounds + 1):
            pts = [c for c in curves if c["arm"] == arm and c["round"] == rnd]
            m, lo, hi = t_interval([c["accuracy"] for c in pts])
            table.append({"arm": arm, "round": rnd, "labels": pts[0]["labels"], "accuracy": m, "ci_low": lo, "ci_high": hi})
    minutes = (time.time() - started) / 60
    lines = [f"# Simulated labeling campaign on ELPV (4-class)", "",
             f"Pool {len(pool)} training images, test {len(test_idx)} images, {args.seeds} seeds, round 0 = "
             f"{args.seed_labels} random labels, then {args.rounds} rounds of {args.per_round} labels. Backbone: "
             f"{args.backbone} ({info['steps']} steps x {info['batch_size']}), frozen; model: linear probe. "
             f"{minutes:.1f} min.", "",
             "| labels | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for rnd in range(args.rounds + 1):
        cells = []
        for arm in ARMS:
            r = next(t for t in table if t["arm"] == arm and t["round"] == rnd)
            cells.append(f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        labels = next(t for t in table if t["round"] == rnd)["labels"]
        lines.append(f"| {labels} | " + " | ".join(cells) + " |")
    final = {arm: next(t for t in table if t["arm"] == arm and t["round"] == args.rounds)["accuracy"] for arm in ARMS}
    area = {arm: float(np.mean([t["accuracy"] for t in table if t["arm"] == arm and t["round"] > 0])) for arm in ARMS}
    lines += ["", "Mean accuracy over rounds 1..end (area under the curve): "
              + ", ".join(f"{a} {v:.3f}" for a, v in area.items()) + ".",
              f"Final: " + ", ".join(f"{a} {v:.3f}" for a, v in final.items()) + "."]
    report = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                  "pool": len(pool), "test": int(len(test_idx)), "backbone": info,
                                                  "minutes": round(minutes, 1), "curves": curves, "table": table},
                                                 indent=1))
    _plot(table, out / "curve.png")
    print(report)
    return {"table": table, "final": final, "area": area}


def _plot(table: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        rows = [t for t in table if t["arm"] == arm]
        x = [r["labels"] for r in rows]
        ax.plot(x, [r["accuracy"] for r in rows], marker="o", label=arm)
        ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.15)
    ax.set_xlabel("labels")
    ax.set_ylabel("test accuracy (4-class)")
    ax.set_title("ELPV labeling campaign: queue order")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
