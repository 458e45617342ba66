"""The `dlvm` command line: every step of the loop, the whole pipeline, the demo, and
read-only views of the registry. Steps run as Prefect flows."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from components import names
from components.settings import Settings, get_settings, mask_url_password

app = typer.Typer(help="dlvm: domain-specific large vision models, from raw images to a promoted model.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Read the model registry.", no_args_is_help=True)
db_app = typer.Typer(help="Registry database.", no_args_is_help=True)
registry_app = typer.Typer(help="Registry integrity.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(registry_app, name="registry")
backbone_app = typer.Typer(help="Backbones from outside dlvm: published weights, the generic baseline.",
                           no_args_is_help=True)
app.add_typer(backbone_app, name="backbone")
feedback_app = typer.Typer(help="The labeling team's loop with Label Studio: tasks, pre-annotations, queue, "
                                "label pulls and retraining.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
stack_app = typer.Typer(help="The service stack on loopback without Docker: Prefect server, S3 server, Label Studio.",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")
data_app = typer.Typer(help="Public datasets written out as a user's raw folders and label exports.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
tokenizer_app = typer.Typer(help="Visual tokenizers: images as sequences of discrete tokens (sequential "
                                 "pretraining).", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
# Wide enough for URIs and tables when output goes to a file or a CI log.
console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=True)

# Errors a user can cause and fix: shown as one line, without a traceback.
USER_ERRORS = (ValueError, LookupError, FileNotFoundError, NotADirectoryError, PermissionError)


def _checked(check, many: bool = False):
    """A typer callback applying one of components.names' rules (the API's) to a name
    option, so a bad name ends the command before anything is touched."""
    def callback(value):
        if value is None:
            return value
        try:
            return [check(v) for v in value] if many else check(value)
        except names.InvalidName as exc:
            raise typer.BadParameter(str(exc)) from None
    return callback


DATASET_NAME = _checked(names.check_dataset)
MODEL_NAME = _checked(names.check_model)
MODEL_REF = _checked(names.check_model_ref)
def _backbone_ref(ref: str) -> str:
    return names.check_model_ref(ref, allow=("scratch",))


BACKBONE_REF = _checked(_backbone_ref)
ALIAS_NAME = _checked(names.check_alias)
CLASS_LIST = _checked(lambda text: ",".join(names.parse_classes(text)))


def prepare(settings: Settings | None = None) -> Settings:
    """Point Prefect at our state directory (before it is imported) and migrate the registry."""
    settings = settings or get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The embedded API server starts in ~10 s, but a busy 2-core machine can take longer
    # than Prefect's default 20 s wait.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from components.registry.db import ensure_schema
    ensure_schema(settings)
    from components.orchestration import lineage
    # A SIGTERM/Ctrl-C marks the step's run failed, then the command ends within seconds even
    # when Prefect cannot report (its embedded server stops on the same signal).
    lineage.EXIT_AFTER_TERMINATION_S = settings.exit_after_termination_s
    crashed = lineage.reconcile_stale_runs(settings)
    if crashed:
        console.print(f"[yellow]runs {', '.join(map(str, crashed))} were left running by a killed process: "
                      "marked failed (crashed)[/yellow]")
    return settings


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="show tracebacks (also DLVM_DEBUG=1)")):
    """dlvm: domain-specific large vision models, from raw images to a promoted model."""
    if debug:
        os.environ["DLVM_DEBUG"] = "1"


def debugging() -> bool:
    return os.environ.get("DLVM_DEBUG", "") not in ("", "0")


class _NoTraceback(logging.Filter):
    """Keeps a log record's message (Prefect's 'Encountered exception ...: ValueError(...)')
    and drops its traceback, on the terminal only: the Prefect API still gets it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def quiet_tracebacks() -> None:
    """Without --debug, the terminal shows what failed in one line, not Prefect's tracebacks."""
    if debugging():
        return
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                                       if name.startswith("prefect")]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                    isinstance(f, _NoTraceback) for f in handler.filters):
                handler.addFilter(_NoTraceback())


def fail(exc: BaseException) -> None:
    """End the command with the error in one line (the traceback with --debug)."""
    if debugging():
        raise exc
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, USER_ERRORS):
        message = f"{type(exc).__name__}: {message}"
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def run_step(fn, *args, **kwargs):
    """Call a flow; an error ends the command with its message in one line instead of a
    traceback (services that are down or refusing, bad input: the message names them)."""
    quiet_tracebacks()
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        fail(exc)


SUMMARY = typer.Option(None, "--summary", help="also write the step's summary as JSON to this file")
RECIPE = typer.Option("auto", "--recipe", help="training recipe: auto (chosen from the data and the device) or a "
                                              "named preset: demo, tiny, tiny-cnn, descriptor, tiny-descriptor "
                                              "(see `dlvm recipes`)")
BUDGET = typer.Option(None, "--budget-minutes", help="time budget of the auto recipe (default 20 on a CPU, 60 on a GPU)")
METHODS = typer.Option(None, "--methods", help="adaptation methods the evaluation sweeps (probe, finetune, lora, "
                                                "prototype, svm; default: the recipe's, see `dlvm recipes`)")
ANOMALY_STAGES = typer.Option("2,3", "--stages", help="anomaly: the ResNet stages whose patch features the memory "
                              "bank holds (comma-separated; 1 for small defects at a high --img-size)")
ANOMALY_DIHEDRAL = typer.Option(False, "--dihedral", help="anomaly: fit the bank on the 8 flips / quarter turns of each "
                                "good image (parts with no 'up')")
ANOMALY_IMAGE_CORESET = typer.Option(1.0, "--image-coreset", help="anomaly: thin each good image's patches to this "
                                     "fraction before the bank's coreset (speeds up large fits)")
GOOD_CLASS = typer.Option(None, "--good-class", help="the normal class: the svm on a descriptor backbone (the "
                          "descriptor recipes) adds position-aware novelty against its training images")
METRIC = typer.Option("macro_f1", "--metric", help="what the gate decides on: macro_f1, balanced_accuracy or accuracy "
                      "(accuracy is always reported)")


def write_summary(path: Path | None, summary: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, default=str))


def parse_list(text: str, kind=float) -> list:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a comma-separated list of {kind.__name__}, got {text!r}")


@app.command()
def ingest(path: Path = typer.Argument(..., help="folder of raw images"),
           dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME, help="dataset name"),
           include: Optional[list[str]] = typer.Option(
               None, "--include", help="glob of files to take (repeatable; default: every file). Without '/' it "
                                       "matches a file or folder name ('*.png'), with '/' the path from the folder "
                                       "('train/*'); case-insensitive"),
           exclude: Optional[list[str]] = typer.Option(
               None, "--exclude", help="glob of files to leave out (repeatable), e.g. 'masks' or '*_mask.png'"),
           summary_path: Optional[Path] = SUMMARY):
    """Validate a folder of images, version it with DVC and register the dataset version.

    A folder of more images than DLVM_SHARD_THRESHOLD (20,000) is versioned as tar shards."""
    prepare()
    from flows.ingest import ingest_flow
    summary = run_step(ingest_flow, str(path), dataset, include or [], exclude or [])
    write_summary(summary_path, summary)
    for bad in summary["quarantined"]:
        console.print(f"  quarantined {bad['path']}: {bad['reason']} ({bad['detail']})")
    _print_folder_counts(summary["folders"])
    state = "new version" if summary["created"] else "unchanged, no new version"
    console.print(f"{dataset} v{summary['version']}: {summary['n_images']} images, "
                  f"{len(summary['quarantined'])} quarantined, {summary['excluded']} left out by the patterns "
                  f"({state}; {summary['layout']})")
    if summary["quarantine_dir"]:
        console.print(f"quarantine: {summary['quarantine_dir']}")
    if summary.get("hidden"):
        console.print(f"skipped {len(summary['hidden'])} hidden files and folders (names starting with '.'): "
                      + ", ".join(summary["hidden"][:5]) + (" ..." if len(summary["hidden"]) > 5 else ""))


def _print_folder_counts(folders: list[dict], limit: int = 40) -> None:
    """What ingest took from each sub-folder: the busiest first when there are many."""
    if len(folders) <= 1 and not any(f["excluded"] for f in folders):
        return
    table = Table("folder", "taken", "quarantined", "left out", title="per folder")
    shown = sorted(folders, key=lambda f: -(f["taken"] + f["quarantined"] + f["excluded"]))[:limit]
    for f in sorted(shown, key=lambda f: f["folder"]):
        table.add_row(f["folder"], str(f["taken"]), str(f["quarantined"]), str(f["excluded"]))
    console.print(table)
    if len(folders) > limit:
        console.print(f"  ... and {len(folders) - limit} more folders (all of them in --summary)")


@data_app.command("wm811k")
def data_wm811k(out: Path = typer.Option(..., "--out", help="folder to write (empty, or an earlier output)"),
                npz: Optional[Path] = typer.Option(None, "--npz", help="wm811k.npz (default: $DLVM_WM811K_NPZ, "
                                                   "else shared/data/wafer-wm811k/ beside this directory)"),
                limit_per_split: Optional[int] = typer.Option(None, "--limit-per-split",
                                                              help="at most this many maps per split, class mix kept"),
                url_prefix: Optional[str] = typer.Option(None, help="prefix of the image references in the exports "
                                                         "(default: Label Studio local files, /data/local-files/?d=wm811k/)")):
    """WM-811K wafer maps as PNG files (pool/ for pretraining, test/), one Label Studio
    export per published split (labels/), and a summary (wm811k.json)."""
    from components.data import wm811k
    try:
        maps = wm811k.load_wm811k(wm811k.find_wm811k(npz))
        summary = wm811k.write_wm811k(maps, out, url_prefix=url_prefix or wm811k.DEFAULT_URL_PREFIX,
                                      limit_per_split=limit_per_split)
    except USER_ERRORS as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1)
    table = Table("split", "maps", "export", title=f"WM-811K in {out}")
    for name, split in summary["splits"].items():
        table.add_row(name, str(split["maps"]), split["export"])
    console.print(table)
    dups = summary["exact_duplicates"]
    console.print(f"pool/: {summary['pool']} maps ({', '.join(summary['pool_splits'])}), test/: {summary['test']} "
                  f"maps; {dups['total']} maps repeat an earlier one value for value (ingest quarantines them; "
                  f"{dups['test_maps_equal_to_a_pool_map']} test maps equal a pool map)")
    console.print(f"next: dlvm ingest {out / 'pool'} --dataset wm811k-pool; "
                  f"dlvm labels {out / 'labels' / 'train_1.json'} --dataset wm811k-pool")


@app.command()
def labels(export: Optional[Path] = typer.Argument(None, help="Label Studio JSON export"),
           dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
           dataset_version: Optional[int] = typer.Option(None, help="default: latest"),
           classes: Optional[str] = typer.Option(None, callback=CLASS_LIST,
                                                 help="comma-separated class names the project allows; "
                                                 "labels outside them are reported as unknown_class"),
           from_folders: Optional[Path] = typer.Option(
               None, "--from-folders", help="instead of an export: a folder with one sub-folder per class"),
           from_prefix: Optional[Path] = typer.Option(
               None, "--from-prefix", help="instead of an export: a folder whose file names start with their "
                                           "class, e.g. crack_0001.png"),
           prefix_separator: str = typer.Option("_", "--prefix-separator",
                                                help="what ends the class in a --from-prefix file name"),
           from_csv: Optional[Path] = typer.Option(
               None, "--from-csv", help="instead of an export: a CSV of path,label rows"),
           allow_empty_classes: bool = typer.Option(False, help="keep a snapshot in which a declared class "
                                                    "has no labels"),
           min_labels: int = typer.Option(1, min=1, help="refuse a snapshot with fewer usable labels"),
           summary_path: Optional[Path] = SUMMARY,
           boxes: bool = typer.Option(False, "--boxes", help="defect boxes (Label Studio RectangleLabels); "
                                      "an EXPORT ending in .csv (image,x1,y1,x2,y2,label) is always boxes")):
    """Build a validated label snapshot from a Label Studio JSON export, class folders,
    class-prefixed file names or a path,label CSV (the same checks for each), or a box
    snapshot from a RectangleLabels export or a box CSV."""
    given = [(kind, p) for kind, p in (("label-studio", export), ("folders", from_folders),
                                       ("prefix", from_prefix), ("csv", from_csv)) if p is not None]
    if len(given) != 1:
        console.print("[red]error:[/red] give exactly one of EXPORT, --from-folders, --from-prefix, --from-csv")
        raise typer.Exit(2)
    source, label_path = given[0]
    prepare()
    from flows.labels import labels_flow
    summary = run_step(labels_flow, str(label_path), dataset, dataset_version,
                       parse_list(classes, str) if classes else None, source, prefix_separator,
                       boxes=boxes, allow_empty_classes=allow_empty_classes, min_labels=min_labels)
    write_summary(summary_path, summary)
    counts: dict[str, int] = {}
    for issue in summary["issues"]:
        counts[issue["kind"]] = counts.get(issue["kind"], 0) + 1
    for issue in summary["issues"][:10]:
        console.print(f"  {issue['kind']}: {issue['image']} ({issue['detail']})")
    if len(summary["issues"]) > 10:
        console.print(f"  ... {len(summary['issues']) - 10} more; by kind: "
                      + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
    console.print(f"snapshot v{summary['snapshot_version']} of {dataset} v{summary['dataset_version']}: "
                  f"{summary['n_labeled']} labels {summary['class_counts']}, {len(summary['issues'])} issues"
                  + ("" if summary["created"] else " (unchanged)"))


@app.command()
def pretrain(dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
             recipe: str = RECIPE,
             steps: Optional[int] = typer.Option(None, help="override the recipe's steps"),
             seed: int = 0,
             init_from: Optional[str] = typer.Option(None, callback=MODEL_REF,
                                                     help="continue from a registered backbone"),
             method: Optional[str] = typer.Option(None, help="simclr or vicreg (any backbone), mae or dino (ViT), "
                                                  "sequential (next-token over --tokenizer's tokens), "
                                                  "codebook (a descriptor backbone: --recipe descriptor) "
                                                  "(default: the recipe's)"),
             tokenizer: Optional[str] = typer.Option(None, callback=MODEL_REF,
                                                     help="sequential: a registered tokenizer (dlvm tokenizer train)"),
             sentence_length: Optional[int] = typer.Option(
                 None, "--sentence-length", min=1, max=64,
                 help="sequential: images per token sequence (a visual sentence; default 1)"),
             model_name: Optional[str] = typer.Option(None, "--name", callback=MODEL_NAME,
                                                      help="model name (default DATASET-METHOD)"),
             processes: int = typer.Option(1, help="data-parallel processes under torchrun (one per GPU)"),
             budget_minutes: Optional[float] = BUDGET,
             summary_path: Optional[Path] = SUMMARY):
    """Self-supervised pretraining (SimCLR, VICReg, MAE, DINO or sequential next-token prediction) of a
    backbone on a dataset's images.

    A run that crashed resumes from its last checkpoint when rerun with the same options."""
    prepare()
    from flows.pretrain import pretrain_flow
    out = run_step(pretrain_flow, dataset, recipe=recipe, steps=steps, seed=seed, init_from=init_from,
                   method=method, processes=processes, budget_minutes=budget_minutes, tokenizer=tokenizer,
                   sentence_length=sentence_length, model_name=model_name)
    write_summary(summary_path, out)
    console.print(f"registered {out['model']} v{out['version']}")


@tokenizer_app.command("train")
def tokenizer_train(dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
                    recipe: str = RECIPE,
                    steps: Optional[int] = typer.Option(None, help="override the recipe's steps"),
                    seed: int = 0,
                    img_size: Optional[int] = typer.Option(None, help="input size in px (default 32: 8x8 tokens)"),
                    model_name: Optional[str] = typer.Option(None, "--name", callback=MODEL_NAME,
                                                             help="model name (default DATASET-tokenizer)"),
                    summary_path: Optional[Path] = SUMMARY):
    """Train a visual tokenizer (FSQ autoencoder) on a dataset's images; registered with the PSNR
    and codebook usage measured on held-out images. A crashed run resumes when rerun."""
    prepare()
    from flows.tokenizer import tokenizer_train_flow
    out = run_step(tokenizer_train_flow, dataset, recipe=recipe, steps=steps, seed=seed, img_size=img_size,
                   model_name=model_name)
    write_summary(summary_path, out)
    m = out["metrics"]
    console.print(f"registered {out['model']} v{out['version']} (PSNR {m['psnr']:.2f} dB, "
                  f"codebook usage {m['codebook_usage']:.1%})")


@app.command()
def generate(model: str = typer.Argument(..., callback=MODEL_REF,
                                         help="a sequential backbone: NAME, NAME:V or NAME@ALIAS"),
             n: int = typer.Option(16, "--n", help="how many images"),
             temperature: float = typer.Option(1.0, help="softmax temperature of each token draw"),
             top_k: Optional[int] = typer.Option(None, "--top-k", help="draw only from the k most likely tokens"),
             seed: int = 0,
             out: Optional[Path] = typer.Option(None, "--out", help="also write the grid PNG here"),
             against: Optional[str] = typer.Option(None, "--against", callback=DATASET_NAME,
                                                   help="measure the samples against this dataset's images "
                                                        "(Fréchet distance, with a shuffled-token baseline)"),
             summary_path: Optional[Path] = SUMMARY):
    """Sample new images from a sequential backbone (`dlvm pretrain --method sequential`); the grid
    PNG is stored as an artifact."""
    settings = prepare()
    from flows.generate import generate_flow
    out_summary = run_step(generate_flow, model, n=n, temperature=temperature, top_k=top_k, seed=seed,
                           against=against)
    if out is not None:
        from components.storage import open_store
        out.write_bytes(open_store(settings).get_bytes(out_summary["uri"], out_summary["sha256"]))
    write_summary(summary_path, out_summary)
    console.print(f"{out_summary['n']} samples of {out_summary['model']} v{out_summary['version']}: "
                  f"{out_summary['uri']}" + (f" (also {out})" if out else ""))


@app.command()
def adapt(dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
          backbone: Optional[str] = typer.Option(None, callback=BACKBONE_REF,
                                                 help="backbone ref (name, name:version, name@alias) or 'scratch'"),
          method: str = typer.Option("probe", help="probe, finetune, lora, prototype, svm (a linear SVM on frozen "
                                              "features: an RBF-SVM on a descriptor backbone), or meta-learning: "
                                              "reptile or maml (first-order), then a probe on the meta-learned backbone"),
          fraction: float = typer.Option(1.0, help="fraction of the training labels"),
          seed: int = 0, recipe: str = RECIPE, budget_minutes: Optional[float] = BUDGET,
          summary_path: Optional[Path] = SUMMARY,
          task: str = typer.Option("classification", help="classification, anomaly (good images only) or "
                                   "detection (boxes)"),
          good_class: Optional[str] = typer.Option(None, help="anomaly: the snapshot class that is normal "
                                                   "(default: every image of the dataset version is good); "
                                                   "classification, svm on a descriptor backbone: the class whose "
                                                   "training images make the position-aware novelty bank"),
          false_alarm_rate: float = typer.Option(0.01, help="anomaly: false-alarm rate the threshold is set for"),
          img_size: Optional[int] = typer.Option(None, help="anomaly, detection: input size (a ViT's: a "
                                                 "multiple of its patch; detection default 256)"),
          snapshot: Optional[int] = typer.Option(None, "--snapshot", "--labels", help="the label snapshot version: "
                                                 "anomaly: the one --good-class refers to; detection: the box "
                                                 "snapshot (default: latest)"),
          steps: int = typer.Option(2000, help="detection: training steps"),
          batch_size: int = typer.Option(16, help="detection: images per step"),
          crop: Optional[int] = typer.Option(None, help="detection: train on random crops of this size "
                                             "(default: whole images)"),
          tile: Optional[int] = typer.Option(None, help="detection: detect in overlapping windows of this size "
                                             "(default: whole images)"),
          score_threshold: float = typer.Option(0.3, help="detection: score a box needs to count in "
                                                "precision / recall / F-score"),
          regions_snapshot: Optional[int] = typer.Option(None, help="anomaly: box snapshot version whose boxes are "
                                                         "the defect regions (pixel AUROC)"),
          stages: str = ANOMALY_STAGES, dihedral: bool = ANOMALY_DIHEDRAL,
          image_coreset: float = ANOMALY_IMAGE_CORESET):
    """Adapt a backbone with labels (linear probe, fine-tuning, LoRA, class prototypes, Reptile or MAML) and
    register the classifier.

    With --task anomaly: fit an anomaly model (PatchCore memory bank) on good images only.
    With --task detection: train a box detector (CenterNet head on a ResNet or ViT) on a box snapshot."""
    prepare()
    if task == "detection":
        return _adapt_detection(dataset, backbone, snapshot, img_size or 256, steps, batch_size, crop, tile,
                                score_threshold, seed, summary_path)
    if task == "anomaly":
        return _adapt_anomaly(dataset, backbone, good_class, false_alarm_rate, img_size, snapshot, regions_snapshot,
                              seed, summary_path, _bank_options(stages, dihedral, image_coreset))
    if task != "classification":
        raise typer.BadParameter(f"task must be classification, anomaly or detection, not {task!r}")
    from flows.adapt import adapt_flow
    out = run_step(adapt_flow, dataset, backbone=backbone, method=method, fraction=fraction, seed=seed,
                   recipe=recipe, budget_minutes=budget_minutes, good_class=good_class)
    write_summary(summary_path, out)
    acc = out["metrics"]["accuracy"]
    console.print(f"registered {out['model']} v{out['version']}: accuracy {acc['value']:.3f} "
                  f"[{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]")


def _bank_options(stages: str, dihedral: bool, image_coreset: float) -> dict:
    """The memory-bank options of `adapt` / `evaluate --task anomaly`, as the anomaly flows take them."""
    return {"cnn_stages": tuple(parse_list(stages, int)), "fit_dihedral": dihedral,
            "image_coreset_fraction": image_coreset}


def _adapt_anomaly(dataset, backbone, good_class, false_alarm_rate, img_size, snapshot_version, regions_snapshot,
                   seed, summary_path, bank: dict) -> None:
    from flows.anomaly import anomaly_flow
    out = run_step(anomaly_flow, dataset, backbone=backbone, good_class=good_class,
                   false_alarm_rate=false_alarm_rate, img_size=img_size, regions_snapshot=regions_snapshot, seed=seed,
                   snapshot_version=snapshot_version, **bank)
    write_summary(summary_path, out)
    m = out["metrics"]
    line = f"registered {out['model']} v{out['version']} (anomaly, threshold {m['threshold']:.4g})"
    if "image_auroc" in m:
        a = m["image_auroc"]
        line += f": image AUROC {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"
    if "pixel_auroc" in m:
        p = m["pixel_auroc"]
        line += f", pixel AUROC {p['value']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]"
    console.print(f"{line}\nheat maps {out['heatmaps_uri']}\nreport {out['report_uri']}")


def _adapt_detection(dataset, backbone, snapshot_version, img_size, steps, batch_size, crop, tile, score_threshold,
                     seed, summary_path) -> None:
    from flows.detection import detection_flow
    out = run_step(detection_flow, dataset, backbone=backbone, snapshot_version=snapshot_version, img_size=img_size,
                   steps=steps, batch_size=batch_size, crop=crop, tile=tile, score_threshold=score_threshold,
                   seed=seed)
    write_summary(summary_path, out)
    m = out["metrics"]
    a, f = m["map50"], m["fscore33"]
    console.print(f"registered {out['model']} v{out['version']} (detector): mAP@0.5 {a['value']:.3f} "
                  f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}], F-score (IoU > 0.33) {f['value']:.3f} "
                  f"[{f['ci_low']:.3f}, {f['ci_high']:.3f}] on {m['n_test_images']} test images\n"
                  f"boxes {out['boxes_uri']}\nreport {out['report_uri']}")


@app.command()
def evaluate(dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
             backbone: list[str] = typer.Option(None, callback=_checked(_backbone_ref, many=True),
                                                help="backbone refs to compare (repeatable)"),
             fractions: Optional[str] = typer.Option(None, help="label fractions, comma-separated (default "
                                                     "0.05,0.1,0.25,0.5,1.0; detection 0.1,0.25,1.0; anomaly 1.0)"),
             seeds: Optional[str] = typer.Option(None, help="seeds, comma-separated (default 0,1,2; detection and "
                                                 "anomaly 0)"),
             methods: str = typer.Option("probe", help="comma-separated: probe, finetune, lora, prototype, svm"),
             recipe: str = RECIPE, scratch: bool = typer.Option(True, help="include the from-scratch baseline"),
             budget_minutes: Optional[float] = BUDGET,
             episodes: Optional[str] = typer.Option(None, help="also the episodic few-shot evaluation, e.g. "
                                                    "'4way1shot,4way5shot': prototypes, probe, fine-tune, Reptile, "
                                                    "MAML on episodes from the test split"),
             episode_count: int = typer.Option(300, help="episodes per setting (with --episodes)"),
             metric: str = METRIC,
             baseline_fractions: str = typer.Option("1.0", help="label fractions the sanity baselines run at "
                                                    "(comma-separated, or 'all')"),
             task: str = typer.Option("classification", help="classification, detection (a box snapshot) or "
                                      "anomaly (good images only)"),
             snapshot: Optional[int] = typer.Option(None, "--snapshot", "--labels",
                                                    help="detection: the box snapshot; anomaly: the snapshot "
                                                    "--good-class refers to (default: latest)"),
             img_size: Optional[int] = typer.Option(None, help="detection, anomaly: input size (detection default "
                                                    "256; anomaly: the backbones' own)"),
             good_class: Optional[str] = typer.Option(None, help="anomaly: the snapshot class that is normal"),
             false_alarm_rate: float = typer.Option(0.01, help="anomaly: false-alarm rate each threshold is set for"),
             regions_snapshot: Optional[int] = typer.Option(None, help="anomaly: box snapshot whose boxes are the "
                                                            "defect regions (pixel AUROC)"),
             stages: str = ANOMALY_STAGES, dihedral: bool = ANOMALY_DIHEDRAL,
             image_coreset: float = ANOMALY_IMAGE_CORESET,
             steps: int = typer.Option(2000, help="detection: training steps of each detector"),
             batch_size: int = typer.Option(16, help="detection: images per step"),
             crop: Optional[int] = typer.Option(None, help="detection: train on random crops of this size"),
             tile: Optional[int] = typer.Option(None, help="detection: detect in overlapping windows of this size"),
             score_threshold: float = typer.Option(0.3, help="detection: score a box needs to count in the "
                                                   "F-score"),
             summary_path: Optional[Path] = SUMMARY):
    """Label-efficiency sweep: label fractions x backbones x methods x seeds, with CIs, and the
    sanity baselines (majority class; logistic regression and RBF-SVM on pixels and HOG).

    With --task detection: the same detector recipe from each backbone and from scratch on
    fractions of a box snapshot's training images, mAP@0.5 on its test split.
    With --task anomaly: the same memory-bank recipe on each backbone's features (and random
    ones), fitted on fractions of the --good-class training images, image AUROC on the test split."""
    prepare()
    if task == "anomaly":
        return _evaluate_anomaly(dataset, backbone, scratch, fractions, seeds, snapshot, img_size, good_class,
                                 false_alarm_rate, regions_snapshot, summary_path,
                                 _bank_options(stages, dihedral, image_coreset))
    if task == "detection":
        from flows.detection import evaluate_detection_flow
        out = run_step(evaluate_detection_flow, dataset, backbones=backbone or None, include_scratch=scratch,
                       fractions=parse_list(fractions or "0.1,0.25,1.0"), seeds=parse_list(seeds or "0", int),
                       snapshot_version=snapshot, img_size=img_size or 256, steps=steps, batch_size=batch_size, crop=crop,
                       tile=tile, score_threshold=score_threshold)
        return _print_best_cell(out, summary_path, "detection", "mAP@0.5", "training images")
    if task != "classification":
        raise typer.BadParameter(f"task must be classification, detection or anomaly, not {task!r}")
    from flows.evaluate import evaluate_flow
    out = run_step(evaluate_flow, dataset, backbones=backbone or None, include_scratch=scratch,
                   fractions=parse_list(fractions or "0.05,0.1,0.25,0.5,1.0"), seeds=parse_list(seeds or "0,1,2", int),
                   methods=[m.strip() for m in methods.split(",") if m.strip()], recipe=recipe,
                   budget_minutes=budget_minutes,
                   episodes=[e.strip() for e in episodes.split(",") if e.strip()] if episodes else None,
                   episode_count=episode_count, metric=metric,
                   baseline_fractions=None if baseline_fractions.strip() == "all" else parse_list(baseline_fractions))
    write_summary(summary_path, out)
    console.print(f"evaluation {out['evaluation_id']}: report {out['report_uri']}\nplot {out['plot_uri']}")


def _evaluate_anomaly(dataset, backbone, scratch, fractions, seeds, snapshot, img_size, good_class, false_alarm_rate,
                      regions_snapshot, summary_path, bank: dict) -> None:
    if good_class is None:
        raise typer.BadParameter("--task anomaly needs --good-class: the class of the label snapshot that is normal")
    from flows.anomaly import evaluate_anomaly_flow
    out = run_step(evaluate_anomaly_flow, dataset, good_class=good_class, backbones=backbone or None,
                   include_scratch=scratch, fractions=parse_list(fractions or "1.0"), seeds=parse_list(seeds or "0", int),
                   snapshot_version=snapshot, img_size=img_size, false_alarm_rate=false_alarm_rate,
                   regions_snapshot=regions_snapshot, **bank)
    _print_best_cell(out, summary_path, "anomaly", "image AUROC", "good images")


def _print_best_cell(out: dict, summary_path, task: str, metric_name: str, of_what: str) -> None:
    """The summary file, and the best cell of a detection or anomaly sweep by its decision metric."""
    write_summary(summary_path, out)
    best = max(out["table"], key=lambda row: row["metrics"][out["metric"]]["value"])
    m = best["metrics"][out["metric"]]
    console.print(f"evaluation {out['evaluation_id']} ({task}): best {metric_name} {m['value']:.3f} "
                  f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}] from {best['backbone']} with {best['fraction']:.0%} of the "
                  f"{of_what}\nreport {out['report_uri']}\nplot {out['plot_uri']}")


@app.command()
def promote(candidate: Optional[str] = typer.Argument(None, callback=MODEL_REF,
                                                      help="classifier or detector ref, e.g. elpv-classifier:3"),
            alias: str = typer.Option("production", callback=ALIAS_NAME), margin: float = 0.0,
            evaluation: Optional[int] = typer.Option(None, help="evaluation id (default: latest for the snapshot)"),
            rollback: Optional[str] = typer.Option(None, callback=MODEL_NAME,
                                                   help="roll MODEL's alias back to its previous version"),
            actor: str = typer.Option(os.environ.get("USER", "cli"), help="who decides"),
            reason: str = "", metric: str = METRIC, summary_path: Optional[Path] = SUMMARY):
    """Gate a candidate for an alias, or roll back. Paired bootstrap tests on --metric: significantly
    better than the majority class, not significantly worse than the strongest sanity baseline
    and from-scratch model, better by --margin than the strongest generic backbone and the holder.
    A detector is gated on mAP@0.5 over its box snapshot's test split: significantly better than
    finding no boxes, and by --margin than the holder."""
    settings = prepare()
    if rollback:
        from components.registry.db import session_scope
        from components.registry.promotion import rollback as do_rollback
        with session_scope(settings) as session:
            event = run_step(do_rollback, session, rollback, alias, actor=actor, reason=reason or "manual rollback")
            console.print(f"{rollback}@{alias}: rolled back (event {event.id})")
        return
    if not candidate:
        raise typer.BadParameter("give a CANDIDATE or --rollback MODEL")
    from flows.promote import promote_flow
    out = run_step(promote_flow, candidate, alias=alias, evaluation_id=evaluation, margin=margin, actor=actor,
                   reason=reason, metric=metric)
    write_summary(summary_path, out)
    _print_gate(out["gate"])
    console.print(f"{out['model']} v{out['version']} -> {alias}: {out['decision']}")


def _print_gate(gate: dict) -> None:
    """One line per comparison, then the goal."""
    from components.evaluation.gate import describe
    for name, comparison in gate["comparisons"].items():
        console.print(describe(name, comparison, gate["confidence"]), markup=False, highlight=False)
    goal = gate.get("goal") or {}
    if goal:
        console.print(f"goal (not required): significantly better than {goal['against']}: "
                      f"{'met' if goal['met'] else 'not met'}", markup=False, highlight=False)


@app.command()
def pipeline(source: Path = typer.Argument(..., help="folder of raw images"),
             dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
             labels_export: Path = typer.Option(..., "--labels", help="Label Studio JSON export"),
             recipe: str = RECIPE, steps: Optional[int] = None,
             generic: Optional[Path] = typer.Option(None, help="folder of generic images for a generic baseline"),
             fractions: str = "0.05,0.1,0.25,0.5,1.0", seeds: str = "0,1,2", margin: float = 0.0,
             classes: Optional[str] = typer.Option(None, callback=CLASS_LIST,
                                                   help="comma-separated class names the project allows"),
             budget_minutes: Optional[float] = BUDGET, methods: Optional[str] = METHODS, metric: str = METRIC,
             method: Optional[str] = typer.Option(None, help="the candidate's adaptation method, on the domain "
                                                  "backbone (default: the one the sweep measured best on --metric; "
                                                  "from scratch instead if that measured clearly better)"),
             good_class: Optional[str] = GOOD_CLASS):
    """The whole loop: ingest, labels, pretrain, evaluate, adapt, promote."""
    prepare()
    out = _run_pipeline(source, dataset, labels_export, recipe, steps, generic, parse_list(fractions),
                        parse_list(seeds, int), margin, parse_list(classes, str) if classes else None,
                        budget_minutes, parse_list(methods, str) if methods else None, metric=metric, method=method,
                        good_class=good_class)
    _print_outcome(out)


def _run_pipeline(source, dataset, labels_export, recipe, steps, generic, fractions, seeds, margin,
                  classes=None, budget_minutes=None, methods=None, metric="macro_f1", method=None,
                  good_class=None) -> dict:
    from flows.pipeline import pipeline_flow
    return run_step(pipeline_flow, str(source), dataset, str(labels_export), classes=classes, recipe=recipe,
                    pretrain_steps=steps,
                    generic_source=str(generic) if generic else None, fractions=fractions, seeds=seeds,
                    margin=margin, budget_minutes=budget_minutes,
                    methods=[m.strip() for m in methods] if methods else None,
                    metric=metric, candidate_method=method, good_class=good_class)


def _print_outcome(out: dict) -> None:
    console.print()
    console.print(out["evaluation"]["markdown"])
    promo = out["promotion"]
    console.print(f"\n[bold]candidate[/bold]: {out['candidate_backbone']} / {out['candidate_method']}")
    _print_gate(promo["gate"])
    console.print(f"[bold]promotion[/bold]: {promo['model']} v{promo['version']} -> {promo['alias']}: "
                  f"{promo['decision']}")


# The demo's promise is 20 minutes on 2 CPU cores end to end: ingest, the sanity baselines
# (~2-3 min, svm-hog the slowest), the probes and the evaluation take ~6 of them, so the auto
# recipe's training (pretraining + every fine-tune run) gets the rest.
DEMO_BUDGET_MINUTES = 12.0


# ELPV's strongest recipe on 2 CPU cores (docs/BENCHMARKS.md): the demo shows what dlvm does
# best on this data; `--recipe auto` runs the networks the auto recipe would choose.
DEMO_RECIPE = "descriptor"


@app.command()
def demo(limit: Optional[int] = typer.Option(None, help="use a stratified subset of N ELPV images"),
         recipe: str = typer.Option(DEMO_RECIPE, "--recipe", help="training recipe (default: descriptor, ELPV's "
                                    "strongest on a CPU; auto, demo, tiny, tiny-cnn, tiny-descriptor: see "
                                    "`dlvm recipes`)"),
         steps: Optional[int] = typer.Option(None, help="override pretraining steps"),
         generic: Optional[Path] = typer.Option(None, help="generic image folder for a generic baseline, "
                                                "e.g. ../shared/data/generic-imagenette"),
         seeds: str = "0,1,2", fractions: str = "0.05,0.1,0.25,0.5,1.0",
         margin: float = typer.Option(0.0, help="promotion margin over the holder and generic backbones"),
         budget_minutes: Optional[float] = typer.Option(
             DEMO_BUDGET_MINUTES, "--budget-minutes",
             help="training budget of the auto recipe; the default leaves room for ingest, the sanity "
                  "baselines and the evaluation within 20 minutes on 2 CPU cores"),
         methods: Optional[str] = METHODS, metric: str = METRIC,
         novelty: bool = typer.Option(True, "--novelty/--no-novelty", help="descriptor recipes: the svm adds "
                                      "position-aware novelty against the functional training cells (--good-class)")):
    """Run the whole loop on ELPV solar-cell images (from the elpv-dataset package)."""
    settings = prepare()
    from components.data.elpv import CLASS_NAMES_4, export_elpv
    from components.training.recipes import is_descriptor_recipe
    images_dir, export_json = export_elpv(settings.home / "demo" / "elpv", limit=limit)
    console.print(f"[bold]dlvm demo[/bold]: ELPV images in {images_dir}, Label Studio export {export_json}")
    good_class = CLASS_NAMES_4[0] if novelty and is_descriptor_recipe(recipe) else None
    out = _run_pipeline(images_dir, "elpv", export_json, recipe, steps, generic, parse_list(fractions),
                        parse_list(seeds, int), margin, list(CLASS_NAMES_4), budget_minutes,
                        parse_list(methods, str) if methods else None, metric=metric, good_class=good_class)
    _print_outcome(out)
    console.print("\n[bold]where to look[/bold]")
    console.print(f"  registry:   dlvm models list; dlvm models show elpv-classifier   ({settings.database_url})")
    console.print(f"  artifacts:  {settings.artifacts}")
    console.print(f"  report:     {out['evaluation']['report_uri']}")
    console.print(f"  plot:       {out['evaluation']['plot_uri']}")
    console.print(f"  DVC:        workspace {settings.dvc_repo}, remote {settings.dvc_remote}")
    console.print(f"  Prefect:    dlvm runs   (or PREFECT_HOME={settings.prefect_home} prefect server start)")
    console.print("  dashboard:  dlvm ui   (then http://127.0.0.1:8000/; DLVM_API_TOKEN=... enables rollback)")


@app.command()
def recipes(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """The training recipes (--recipe): auto, chosen from the data, and the named presets."""
    from components.training.recipes import describe_recipes
    rows = describe_recipes()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("recipe", "pretraining (default first)", "adaptation epochs", "pipeline sweeps", "what it is")
    for row in rows:
        pre = "; ".join(f"{m}: one pass, {c['img_size']} px, {c['embed_dim']} kernel features" if m == "codebook" else
                        f"{m}: {c['steps']} steps, {c['img_size']} px, {c.get('family', 'vit')} width "
                        f"{c['embed_dim']} x {c['depth']}" for m, c in row["pretrain"].items()) or "from the data"
        epochs = ", ".join(f"{m} {a['epochs']}" for m, a in row["adapt"].items() if m in ("finetune", "lora"))
        if not epochs and row["pretrain"]:
            epochs = "none (svm: one fit)"
        table.add_row(row["name"], pre, epochs or "from the data and budget", ", ".join(row["methods"]), row["summary"])
    console.print(table)


@models_app.command("list")
def models_list():
    """Registered models with their versions and aliases."""
    settings = prepare()
    from components.registry import views
    from components.registry.db import session_scope
    with session_scope(settings) as session:
        rows = views.list_models(session)
    table = Table("model", "kind", "versions", "latest", "aliases")
    for row in rows:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(row["aliases"].items()))
        table.add_row(row["name"], row["kind"], str(row["n_versions"]), f"v{row['latest_version']}", aliases or "-")
    console.print(table if rows else "no models registered yet: run `dlvm demo`")


@models_app.command("show")
def models_show(name: str = typer.Argument(..., callback=MODEL_NAME), as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """One model: its versions with lineage and metrics, aliases and promotion events."""
    settings = prepare()
    from components.registry import views
    from components.registry.db import session_scope
    with session_scope(settings) as session:
        detail = run_step(views.model_detail, session, name)
    from components.storage import (
        ArtifactCorrupted,
        ArtifactError,
        ArtifactMissing,
        open_store,
    )
    store = open_store(settings)
    for v in detail["versions"]:  # a version whose checkpoint is gone or damaged is flagged
        try:
            store.verify(v["artifact_uri"], v["sha256"])
            v["artifact_status"] = "ok"
        except ArtifactMissing:
            v["artifact_status"] = "missing"
        except ArtifactCorrupted:
            v["artifact_status"] = "corrupted"
        except (ArtifactError, ValueError) as exc:
            v["artifact_status"] = f"unreadable: {exc}"
    if as_json:
        print(json.dumps(detail, indent=2, default=str))
        return
    console.print(f"[bold]{detail['name']}[/bold] ({detail['kind']})  aliases: "
                  + (", ".join(f"{a}=v{v}" for a, v in detail["aliases"].items()) or "-"))
    table = Table("version", "dataset", "labels", "parent", "metrics", "artifact", "flow run")
    for v in detail["versions"]:
        metrics = v.get("metrics") or {}
        shown = ", ".join(f"{k}={m['value']:.3f}" if isinstance(m, dict) and "value" in m else f"{k}={m}"
                          for k, m in metrics.items() if k in ("accuracy", "macro_f1", "final_loss", "n_train"))
        dataset = f"{v['dataset']['name']} v{v['dataset']['version']}" if v.get("dataset") else "-"
        snapshot = f"snapshot v{v['label_snapshot']['version']}" if v.get("label_snapshot") else "-"
        table.add_row(f"v{v['version']}", dataset, snapshot,
                      v.get("parent") or "-", shown or "-",
                      ("" if v["artifact_status"] == "ok" else f"[red]ARTIFACT {v['artifact_status'].upper()}[/red]\n")
                      + f"{v['artifact_uri']}\nsha256 {v['sha256'][:16]}…",
                      str(v.get("flow_run_id") or "-"))
    console.print(table)
    for event in detail["promotions"]:
        console.print(f"  {event['created_at']}  {event['decision']:<9} {event['alias']}: "
                      f"{event.get('summary') or event.get('reason') or ''}")
    with session_scope(settings) as session:
        _print_usage(session, name)


# --- using a model: predict, export, model card (issue 17) -------------------------------


@app.command()
def predict(source: str = typer.Argument(..., help="a folder of images, dataset:NAME[:VERSION] or s3://bucket/prefix"),
            model: str = typer.Option(..., "--model", "-m", help="classifier, anomaly model or detector: NAME "
                                      "(= NAME@production), NAME:V or NAME@ALIAS"),
            batch_size: int = typer.Option(256, min=1, help="images decoded and predicted at once"),
            device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N (default: DLVM_DEVICE, auto; "
                                                 "anomaly models and detectors run on the CPU)"),
            drift_alpha: float = typer.Option(0.01, help="classifier: false-alarm rate of the drift alert per batch"),
            min_score: Optional[float] = typer.Option(None, help="detector: the score a box needs to be reported "
                                                      "(default: the one its evaluation used)"),
            heatmap_dir: Optional[Path] = typer.Option(None, help="anomaly: write a heat-map overlay PNG per image "
                                                       "into this folder"),
            summary_path: Optional[Path] = SUMMARY):
    """Predict every image of SOURCE with a registered model, by its kind: a classifier's class
    (and a drift check against its training data), an anomaly model's score and decision at its
    threshold, a detector's boxes. Stores the predictions (CSV) and a summary, registers the batch."""
    prepare()
    from flows.predict import predict_flow
    out = run_step(predict_flow, source, model, batch_size=batch_size, device=device, drift_alpha=drift_alpha,
                   min_score=min_score, heatmap_dir=str(heatmap_dir.resolve()) if heatmap_dir else None)
    write_summary(summary_path, out)
    for bad in out["failures"]:
        console.print(f"  unreadable {bad['name']}: {bad['reason']} ({bad['detail']})")
    _print_first_images(out)
    drift = out["drift"]
    counted = {"classifier": "", "anomaly": "", "detector": "boxes: "}[out["kind"]]
    console.print(f"{out['model']} ({out['kind']}): {out['n_images']} images predicted, {out['n_failed']} unreadable "
                  f"(batch {out['batch_id']}): {counted}" + ", ".join(f"{c} {n}" for c, n in out["class_counts"].items()))
    if out["kind"] == "anomaly":
        rate = out["false_alarm_rate"]
        console.print(f"threshold {out['threshold']:.4g} (score above it = anomalous), set on held-out good images"
                      + ("" if rate is None else f" for a {rate:.1%} false-alarm rate"))
        if out["heatmaps"]:
            console.print(f"heat maps: {len(out['heatmaps'])} PNGs in {heatmap_dir}")
    elif out["kind"] == "detector":
        console.print(f"boxes scoring at least {out['min_score']:g} are reported")
    elif drift.get("tested"):
        fired = [t["name"] for t in drift["tests"] if t["fired"]]
        console.print(("[red]drift alert[/red]: " + ", ".join(fired)) if drift["alert"] else
                      f"no drift against the training data ({len(drift['tests'])} tests, "
                      f"false-alarm rate {drift['alpha']:.0%})")
    else:
        console.print(f"drift not tested: {drift.get('reason')}")
    console.print(f"predictions: {out['predictions_uri']}\nsummary:     {out['summary_uri']}")


def _print_first_images(out: dict) -> None:
    """An anomaly model's and a detector's verdict on the first images (the CSV has them all)."""
    if out["kind"] == "classifier":
        return
    for r in out["first_images"]:
        if out["kind"] == "anomaly":
            console.print(f"  {r['image']}: score {r['score']:.4g} "
                          + ("[red]anomalous[/red]" if r["anomalous"] else "normal"))
        else:
            boxes = ", ".join(f"{b['class']} {b['score']:.2f} ({b['x1']:.0f},{b['y1']:.0f},{b['x2']:.0f},{b['y2']:.0f})"
                              for b in r["boxes"][:5])
            more = f" +{len(r['boxes']) - 5} more" if len(r["boxes"]) > 5 else ""
            console.print(f"  {r['image']}: {len(r['boxes'])} boxes{': ' + boxes if boxes else ''}{more}")
    if out["n_images"] > len(out["first_images"]):
        console.print(f"  ... {out['n_images'] - len(out['first_images'])} more in the predictions CSV")


@app.command("export")
def export_model(model: str = typer.Argument(..., help="classifier: NAME (= NAME@production), NAME:V or NAME@ALIAS"),
                 torchscript: bool = typer.Option(False, "--torchscript", help="also export TorchScript"),
                 opset: int = typer.Option(17, help="ONNX opset"),
                 output: Optional[Path] = typer.Option(None, "--output", "-o", help="also copy the ONNX file here"),
                 summary_path: Optional[Path] = SUMMARY):
    """Export a classifier to ONNX (preprocessing in the graph), check it against torch on the
    test split (onnxruntime), store it with its sha256 and register it with the check's result."""
    settings = prepare()
    from flows.export import export_flow
    out = run_step(export_flow, model, formats=["onnx", "torchscript"] if torchscript else ["onnx"], opset=opset)
    write_summary(summary_path, out)
    for e in out["exports"]:
        p = e["checks"]["parity"]
        console.print(f"{out['model']} -> {e['kind']}: {e['uri']}\n  sha256 {e['sha256']}\n  parity on {p['n_images']} "
                      f"test images: max |diff| {p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.2%}: "
                      + ("passed" if p["passed"] else "[red]FAILED[/red]"))
    if output is not None:
        from components.storage import open_store
        onnx = next(e for e in out["exports"] if e["kind"] == "onnx")
        output.parent.mkdir(parents=True, exist_ok=True)
        open_store(settings).get_file(onnx["uri"], onnx["sha256"], output)
        console.print(f"copied to {output}")


@models_app.command("card")
def models_card(ref: str = typer.Argument(..., help="NAME (production version, else latest) or NAME:VERSION"),
                output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the markdown here")):
    """The model card (markdown) of a classifier version, from the registry only."""
    settings = prepare()
    from components.inference.card import model_card
    from components.registry.db import read_session
    from components.storage import open_store
    store = open_store(settings)
    with read_session(settings) as session:
        text = run_step(model_card, session, ref, store.get_bytes)
    if output is None:
        print(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        console.print(f"wrote {output}")


def _print_usage(session, name: str) -> None:
    """`models show`: the latest prediction batches with their drift verdicts, and exports."""
    from components.registry import usage
    batches = usage.prediction_batches(session, name, limit=5)
    for alert in usage.drift_alerts(session):
        if alert["model"] == name:
            console.print(f"[red]drift alert[/red]: {alert['message']}")
    if batches:
        table = Table("batch", "version", "when", "images", "unreadable", "drift", "source")
        for b in batches:
            verdict = {None: "not tested", True: "[red]ALERT[/red]", False: "none"}[b["drift_alert"]]
            table.add_row(str(b["id"]), f"v{b['version']}", b["created_at"][:19], str(b["n_images"]),
                          str(b["n_failed"]), verdict, b["source"])
        console.print(table)
    for a in usage.model_artifacts(session, name):
        if a["kind"] in ("onnx", "torchscript"):
            parity = a["checks"].get("parity", {})
            console.print(f"  export v{a['version']} {a['kind']}: {a['artifact_uri']} "
                          f"(parity {'passed' if parity.get('passed') else 'FAILED'})")
    grid = usage.newest_samples(session, name)
    if grid:
        fd = (grid["details"].get("quality") or {}).get("frechet_distance")
        console.print(f"  samples v{grid['version']} ({grid['details'].get('n')} images): {grid['artifact_uri']}"
                      + (f" (Fréchet distance {fd['samples']:.3f}; floor {fd['reconstructions']:.3f}, "
                         f"shuffled-token baseline {fd['shuffled_tokens']:.3f})" if fd else ""))


@backbone_app.command("import")
def backbone_import(path: Path = typer.Argument(..., help="timm / Hugging Face ViT weights: .safetensors, .pth, .pt, .bin"),
                    name: str = typer.Option(..., "--name", callback=MODEL_NAME,
                                             help="backbone model name, e.g. imagenet-vit-s"),
                    img_size: int = typer.Option(64, help="input size the backbone will see (position table resized)"),
                    patch_size: Optional[int] = typer.Option(None, help="default: the file's patch size"),
                    arch: Optional[str] = typer.Option(None, help="tiny, small or base (ViT-Ti/S/B width, depth, heads)"),
                    embed_dim: Optional[int] = typer.Option(None, help="default: --arch's, else the file's"),
                    depth: Optional[int] = typer.Option(None, help="default: --arch's, else the file's"),
                    heads: Optional[int] = typer.Option(None, help="default: --arch's (weights do not record it)"),
                    global_pool: str = typer.Option("token", help="token (cls) or avg"),
                    alias: Optional[str] = typer.Option(None, help="'baseline': also make it the generic baseline"),
                    reason: str = typer.Option("generic baseline", help="why, recorded with the alias event"),
                    actor: str = typer.Option(os.environ.get("USER", "cli"), help="who decides"),
                    summary_path: Optional[Path] = SUMMARY):
    """Register published generic ViT weights from a file as a backbone model version."""
    if not path.exists():  # say so before paying for Prefect and torch
        console.print(f"[red]error:[/red] weights file {path} does not exist")
        raise typer.Exit(1)
    prepare()
    from flows.import_backbone import import_backbone_flow
    out = run_step(import_backbone_flow, str(path), name, img_size=img_size, patch_size=patch_size, arch=arch,
                   embed_dim=embed_dim, depth=depth, num_heads=heads, global_pool=global_pool, alias=alias,
                   actor=actor, reason=reason)
    write_summary(summary_path, out)
    cfg = out["vit_config"]
    console.print(f"registered {out['model']} v{out['version']} from {out['source']['file']} "
                  f"(sha256 {out['source']['sha256'][:16]}…): ViT {cfg['embed_dim']}x{cfg['depth']}, "
                  f"{cfg['img_size']}px, patch {cfg['patch_size']}"
                  + (f"; alias baseline (event {out['baseline_event_id']})" if out["baseline_event_id"] else ""))
    for note in out["load_report"]["adapted"]:
        console.print(f"  {note}")


@backbone_app.command("baseline")
def backbone_baseline(ref: str = typer.Argument(..., callback=MODEL_REF, help="backbone ref, e.g. generic-mae:2"),
                      reason: str = typer.Option("generic baseline", help="why, recorded with the event"),
                      actor: str = typer.Option(os.environ.get("USER", "cli"), help="who decides")):
    """Put a backbone version under its model's `baseline` alias (a recorded promotion event)."""
    settings = prepare()
    from components.registry.db import session_scope
    from components.registry.promotion import designate_baseline
    from components.registry.refs import resolve_model_version
    with session_scope(settings) as session:
        version = run_step(resolve_model_version, session, ref)
        event = run_step(designate_baseline, session, version.id, actor=actor, reason=reason,
                         evidence={"ref": ref})
        console.print(f"{ref} -> baseline (event {event.id})")


def _feedback_params(dataset, classes, queue_size, uncertainty, diversity, webhook_url, kind="classification",
                     model=None) -> dict:
    return {"dataset": dataset, "classes": parse_list(classes, str) if classes else None, "kind": kind,
            "queue_size": queue_size, "uncertainty": uncertainty, "diversity": diversity,
            "webhook_url": webhook_url, **({"model": model} if model else {})}


def _retrain_name(settings: Settings) -> str:
    """The deployment name in DLVM_RETRAIN_DEPLOYMENT, which must name the `retrain` flow to be served here."""
    flow_name, _, name = settings.retrain_deployment.partition("/")
    if flow_name != "retrain" or not name:
        raise typer.BadParameter(f"DLVM_RETRAIN_DEPLOYMENT must be 'retrain/<name>' to be served here, "
                                 f"got {settings.retrain_deployment!r}")
    return name


FEEDBACK_OPTIONS = dict(
    classes=typer.Option(None, callback=CLASS_LIST,
                         help="comma-separated classes (default: the production model's or the latest snapshot's)"),
    queue_size=typer.Option(100, help="tasks ranked in the 'dlvm queue' tab"),
    uncertainty=typer.Option("margin", help="least_confidence, margin or entropy"),
    diversity=typer.Option(True, help="spread the queue over feature space (--no-diversity: uncertainty only)"),
    webhook_url=typer.Option(None, help="register this receiver URL in the project (needs DLVM_WEBHOOK_SECRET)"),
    kind=typer.Option("classification", help="classification, or localization (boxes: a box snapshot pull, the "
                                             "production detector's boxes and a queue by detection uncertainty)"),
    model=typer.Option(None, callback=MODEL_NAME, help="model whose @production version pre-annotates (default "
                                                       "DATASET-classifier, or DATASET-detector with --kind "
                                                       "localization)"),
)


@feedback_app.command("run")
def feedback_run(dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
                 classes: Optional[str] = FEEDBACK_OPTIONS["classes"],
                 queue_size: int = FEEDBACK_OPTIONS["queue_size"],
                 uncertainty: str = FEEDBACK_OPTIONS["uncertainty"],
                 diversity: bool = FEEDBACK_OPTIONS["diversity"],
                 webhook_url: Optional[str] = FEEDBACK_OPTIONS["webhook_url"],
                 kind: str = FEEDBACK_OPTIONS["kind"],
                 model: Optional[str] = FEEDBACK_OPTIONS["model"],
                 summary_path: Optional[Path] = SUMMARY):
    """One round: project, tasks, label pull, pre-annotations and queue, retrain trigger."""
    prepare()
    from flows.feedback import feedback_flow
    summary = run_step(feedback_flow, **_feedback_params(dataset, classes, queue_size, uncertainty, diversity,
                                                         webhook_url, kind, model))
    write_summary(summary_path, summary)


@feedback_app.command("serve")
def feedback_serve(dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
                   interval: int = typer.Option(3600, help="seconds between feedback rounds"),
                   classes: Optional[str] = FEEDBACK_OPTIONS["classes"],
                   queue_size: int = FEEDBACK_OPTIONS["queue_size"],
                   uncertainty: str = FEEDBACK_OPTIONS["uncertainty"],
                   diversity: bool = FEEDBACK_OPTIONS["diversity"],
                   webhook_url: Optional[str] = FEEDBACK_OPTIONS["webhook_url"],
                   kind: str = FEEDBACK_OPTIONS["kind"], model: Optional[str] = FEEDBACK_OPTIONS["model"]):
    """Serve the scheduled `feedback` deployment and the `retrain` deployment new labels start
    (needs a Prefect server: PREFECT_API_URL). Stop with Ctrl-C."""
    prepare()
    from prefect import serve

    from flows.deployments import feedback_loop_deployments
    params = _feedback_params(dataset, classes, queue_size, uncertainty, diversity, webhook_url, kind, model)
    serve(*feedback_loop_deployments(dataset, interval, _retrain_name(get_settings()), feedback_params=params))


@feedback_app.command("retrain")
def feedback_retrain(dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
                     backbone: Optional[str] = typer.Option(None, callback=BACKBONE_REF,
                                                            help="default: the production model's backbone, else <dataset>-mae"),
                     method: Optional[str] = typer.Option(None, help="probe, finetune, lora, prototype, reptile or maml "
                                                          "(default: the evaluation's best of probe and finetune)"),
                     recipe: str = RECIPE, fractions: str = typer.Option("0.25,1.0", help="evaluation label fractions"),
                     seeds: str = typer.Option("0", help="evaluation seeds"), margin: float = 0.0,
                     metric: str = METRIC, summary_path: Optional[Path] = SUMMARY):
    """What new labels start, by hand: pull labels, evaluate, adapt, gate for production."""
    prepare()
    from flows.retrain import retrain_flow
    out = run_step(retrain_flow, dataset, backbone=backbone, method=method, recipe=recipe,
                   fractions=parse_list(fractions), seeds=parse_list(seeds, int), margin=margin, metric=metric)
    write_summary(summary_path, out)


@feedback_app.command("webhook")
def feedback_webhook(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8765),
                     dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
                     min_interval: float = typer.Option(300.0, help="seconds between two retrain starts")):
    """Receive Label Studio's annotation webhooks; start the retrain deployment every
    DLVM_RETRAIN_AFTER_LABELS new labels (debounced by --min-interval)."""
    settings = prepare()
    import uvicorn

    from components.labeling.webhook import RetrainTrigger, create_app
    from components.orchestration.triggers import start_deployment
    secret = settings.webhook_secret.get_secret_value()
    if not secret:
        console.print("[red]error:[/red] set DLVM_WEBHOOK_SECRET: the receiver refuses events without a shared secret")
        raise typer.Exit(1)
    trigger = RetrainTrigger(settings.home / "webhook" / f"{dataset}.json", settings.retrain_after_labels,
                             start_deployment(settings.retrain_deployment, {"dataset": dataset}), min_interval)
    uvicorn.run(create_app(secret, trigger), host=host, port=port, log_level="info")


@app.command()
def ui(host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 inside a container)"),
       port: int = typer.Option(8000, min=1, max=65535),
       workers: int = typer.Option(1, min=1, help="server processes (one per core for throughput)")):
    """The registry API (OpenAPI at /docs) and the ops dashboard. Writes (promote, rollback)
    need DLVM_API_TOKEN; reads need DLVM_API_READ_TOKEN when it is set."""
    settings = prepare()
    import uvicorn
    if not settings.api_token.get_secret_value():
        console.print("[yellow]DLVM_API_TOKEN is not set: promote and rollback are disabled[/yellow]")
    console.print(f"dlvm ui on http://{host}:{port}/ (API docs /docs), registry {mask_url_password(settings.database_url)}")
    uvicorn.run("app.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


@app.command()
def serve(dataset: str = typer.Option(..., "--dataset", "-d", callback=DATASET_NAME),
          source: Optional[Path] = typer.Option(None, help="raw-image folder the nightly deployment ingests"),
          nightly: str = typer.Option("0 2 * * *", help="cron of ingest + label sync ('' = on demand only)"),
          weekly_pretrain: str = typer.Option("0 3 * * 0", help="cron of pretraining ('' = on demand only)"),
          feedback_interval: int = typer.Option(3600, help="seconds between feedback rounds (0 = on demand only)"),
          predict_source: Optional[str] = typer.Option(None, help="folder (or dataset:NAME, s3://...) the "
                                                        "predict deployment runs the production classifier on"),
          predict_cron: str = typer.Option("0 * * * *", help="cron of the predict deployment ('' = on demand only)"),
          recipe: str = RECIPE,
          timezone: str = typer.Option("UTC")):
    """Serve dlvm's deployments (nightly ingest + label sync, weekly pretraining, the feedback
    loop, retrain on new labels, hourly predict with --predict-source) with their schedules; runs execute in this process's
    children. Needs a Prefect server (PREFECT_API_URL). Stop with Ctrl-C."""
    prepare()
    from prefect import serve as prefect_serve

    from flows.deployments import Schedules, build_deployments
    settings = get_settings()
    retrain_name = _retrain_name(settings)
    if source is not None and not source.is_dir():
        raise typer.BadParameter(f"--source {source} is not a folder")
    schedules = Schedules(nightly=nightly or None, pretrain=weekly_pretrain or None,
                          feedback_interval_s=feedback_interval or None, predict=predict_cron or None,
                          timezone=timezone)
    if predict_source and "://" not in predict_source and not predict_source.startswith("dataset:"):
        if not Path(predict_source).is_dir():
            raise typer.BadParameter(f"--predict-source {predict_source} is not a folder")
        predict_source = str(Path(predict_source).resolve())
    deployments = build_deployments(dataset, str(source.resolve()) if source else None, schedules, recipe, retrain_name,
                                    feedback=bool(settings.label_studio_url), predict_source=predict_source)
    console.print("serving " + ", ".join(f"{d.flow_name}/{d.name}" for d in deployments))
    prefect_serve(*deployments)


STACK_DIR = typer.Option(None, "--dir", help="stack state folder (default $DLVM_HOME/stack)")


def _stack_dir(path: Optional[Path]) -> Path:
    return (path or get_settings().home / "stack").resolve()


@stack_app.command("up")
def stack_up(dir: Optional[Path] = STACK_DIR, prefect_port: int = 4200, s3_port: int = 9000,
             label_studio_port: int = 8080,
             prefect_database: Optional[str] = typer.Option(None, help="postgresql+asyncpg://... for Prefect's state "
                                                                       "(default SQLite in the stack folder)"),
             label_studio: bool = typer.Option(True, help="--no-label-studio: Prefect and S3 only")):
    """Start the stack (what is not running yet) and write DIR/stack.env."""
    from components.stack.local import StackConfig, up
    root = _stack_dir(dir)
    try:
        up(StackConfig(root, prefect_port, s3_port, label_studio_port, prefect_database, label_studio),
           progress=console.print)
    except (RuntimeError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1)
    console.print(f"stack up; point dlvm at it with:  source {root / 'stack.env'}")


@stack_app.command("result-storage")
def stack_result_storage(bucket: str = typer.Option("dlvm", help="bucket whose prefect-results/ keeps flow results")):
    """Save the Prefect block that keeps flow results in the S3 bucket (PREFECT_API_URL and
    DLVM_S3_ENDPOINT from the environment); docker-compose.yml's prefect-init runs this."""
    from components.stack.local import save_result_storage
    api_url, endpoint = os.environ.get("PREFECT_API_URL"), get_settings().s3_endpoint
    if not api_url or not endpoint:
        console.print("[red]error:[/red] set PREFECT_API_URL and DLVM_S3_ENDPOINT")
        raise typer.Exit(1)
    console.print(f"saved {save_result_storage(api_url, endpoint, bucket)} (s3://{bucket}/prefect-results)")


@stack_app.command("status")
def stack_status(dir: Optional[Path] = STACK_DIR):
    """Each service: running, answering, URL. Exits 1 when one is down."""
    from components.stack.local import status
    states = status(_stack_dir(dir))
    for name, state in states.items():
        word = "up" if state["healthy"] else ("not answering" if state["running"] else "down")
        console.print(f"{name:13} {word:14} {state['url'] or ''}")
    if not all(s["healthy"] for s in states.values() if s["url"] is not None) or \
            not any(s["url"] for s in states.values()):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down(dir: Optional[Path] = STACK_DIR):
    """Stop the stack's services (their data stays for the next `up`)."""
    from components.stack.local import down
    stopped = down(_stack_dir(dir))
    console.print("stopped " + (", ".join(stopped) if stopped else "nothing (no service was running)"))


@stack_app.command("label-studio")
def stack_label_studio(action: str = typer.Argument(..., help="install, start (foreground) or env")):
    """Label Studio in its own venv on loopback (the script dlvm ships): install it, run it in
    the foreground, or print the DLVM_LABEL_STUDIO_* settings for it."""
    from components.stack.services import LABEL_STUDIO_SCRIPT, bundled_uv
    if action not in ("install", "start", "env"):
        raise typer.BadParameter(f"action must be install, start or env, got {action!r}")
    os.environ.setdefault("UV", bundled_uv())
    os.execvp("bash", ["bash", str(LABEL_STUDIO_SCRIPT), action])


@app.command()
def runs(limit: int = 20):
    """Recent Prefect flow runs (from the embedded Prefect API or PREFECT_API_URL)."""
    settings = prepare()
    from components.orchestration.flow_runs import mark_crashed, recent_flow_runs
    from components.orchestration.lineage import CRASHED, TERMINATED
    from components.registry import monitoring
    from components.registry.db import read_session
    with read_session(settings) as session:  # Prefect's record of runs the registry knows crashed
        ids = [r["flow_run_id"] for r in monitoring.recent_runs(session, 200, "failed")
               if r["flow_run_id"] and (r["error"] or "").startswith((CRASHED, TERMINATED))]
    try:
        mark_crashed(ids, CRASHED)
    except Exception as exc:  # Prefect unreachable: the listing below says so
        console.print(f"[yellow]could not update Prefect's record of crashed runs: {exc}[/yellow]")
    table = Table("started", "flow", "run", "state", "id")
    for run in recent_flow_runs(limit):
        table.add_row(run["start_time"], run["flow"], run["name"], run["state"], run["id"])
    console.print(table)


@db_app.command("upgrade")
def db_upgrade():
    """Apply the registry's Alembic migrations up to head."""
    settings = get_settings()
    from components.registry.db import upgrade
    upgrade(settings.database_url)
    console.print(f"registry at head: {settings.database_url}")


@registry_app.command("verify")
def registry_verify(deep: bool = typer.Option(False, "--deep", help="also restore every dataset version from "
                                              "the DVC remote and compare its files with its manifest")):
    """Check that every artifact the registry points at exists and matches its sha256."""
    settings = prepare()
    from components.registry.integrity import verify_registry
    problems = verify_registry(settings, deep=deep, progress=lambda line: console.print(f"[dim]{line}[/dim]"))
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    console.print(f"{len(problems)} problems")
    if problems:
        raise typer.Exit(1)


@app.command("settings")
def show_settings():
    """The effective settings (secrets masked)."""
    print(get_settings().model_dump_json(indent=2))


def main() -> None:
    """Console entry point: configuration errors end with one line, not a traceback."""
    from pydantic import ValidationError
    try:
        app()
    except ValidationError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        sys.exit(2)
    except Exception as exc:  # anything run_step did not see (the registry down, say): one line
        if debugging():
            raise
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
