"""A registry a real `dlvm promote` can gate, built in seconds from the components (no
pretraining): a synthetic dataset versioned in DVC, a label snapshot, an evaluation with a
from-scratch baseline's test predictions, and several tiny random classifier versions."""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from synthetic import banded_images

from components.data import access
from components.data.ingest import build_manifest, scan_folder, stage_into_workspace
from components.labeling.snapshots import (
    LabelSnapshotData,
    snapshot_hash,
    to_json_bytes,
)
from components.models.checkpoint import save_checkpoint
from components.registry import writes
from components.registry.db import session_scope
from components.settings import Settings
from components.storage import open_store

DATASET = "synth"
MODEL = "synth-classifier"
CLASSES = ["top", "middle", "bottom"]
SIZE = 32


def raw_images(folder: Path, n: int = 48) -> Path:
    images, labels = banded_images(n, len(CLASSES), SIZE)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(folder / f"{CLASSES[label]}-{i:03d}.png")
    return folder


class DvcTemplate:
    """The DVC side of a registry (workspace, local remote, decoded-image cache) as the first
    :func:`promotable_registry` of this process left it, for the next ones with the same images.

    The images are the same every time (synthetic, seeded), so DVC's output is too; building it
    is seven `dvc` processes, about 5 s of each test that needs a registry. A later registry gets
    a copy, its two absolute paths (the remote's url, the site cache) pointed at its own state
    directory, without DVC's inode-keyed hash state: DVC rehashes what it reads, as in a state
    directory copied elsewhere (which dlvm supports). The registry's own rows are always written
    anew."""

    PARTS = ("dvc-repo", "dvc-remote", "cache")

    def __init__(self, settings: Settings, dvc):
        self.dir = Path(tempfile.mkdtemp(prefix="dlvm-dvc-template-"))
        atexit.register(shutil.rmtree, self.dir, True)
        self.home, self.dvc = str(settings.home), dvc
        for part in self.PARTS:
            shutil.copytree(settings.home / part, self.dir / part, ignore=_dvc_machine_state)

    def restore(self, settings: Settings):
        for part in self.PARTS:
            shutil.copytree(self.dir / part, settings.home / part)
        for name in ("config", "config.local"):
            config = settings.dvc_repo / ".dvc" / name
            config.write_text(config.read_text().replace(self.home, str(settings.home)))
        return self.dvc


def _dvc_machine_state(folder: str, names: list[str]) -> list[str]:
    """What not to copy: DVC's hash state (keyed by inode) and its temporary files."""
    return [n for n in names if Path(folder).name == ".dvc" and n in ("site-cache", "tmp")]


_DVC_TEMPLATES: dict[str, DvcTemplate] = {}  # by manifest content hash, in this process


def promotable_registry(settings: Settings, raw: Path, n_candidates: int = 4) -> dict:
    """Fill ``settings``' registry; returns {"versions": [1..n], "dataset_version": id, "evaluation": id}."""
    import torch

    from components.models.vit import ViTConfig
    from components.training.adapt import (
        AdaptConfig,
        Classifier,
        extract_features,
        fit_probe,
    )

    store = open_store(settings)
    scan = scan_folder(raw_images(raw), progress=False)
    manifest = build_manifest(scan, DATASET)
    # A local remote inside the state directory (the default) can be copied with it.
    copyable = settings.dvc_remote == str(settings.home / "dvc-remote")
    template = _DVC_TEMPLATES.get(manifest["content_hash"]) if copyable else None
    if template is not None:
        dvc = template.restore(settings)
    else:
        workspace = access.dvc_workspace(settings)
        with workspace.exclusive():
            workspace.init()
            stage_into_workspace(scan, raw, settings.dvc_repo / access.dataset_rel_dir(DATASET),
                                 root=settings.dvc_repo / "data")
            dvc = workspace.add_and_push(access.dataset_rel_dir(DATASET))
    manifest_art = store.put_bytes(json.dumps(manifest, sort_keys=True, indent=1).encode(), "manifests",
                                   f"{DATASET}.json")
    items = [{"path": r["path"], "sha256": r["sha256"], "label": r["path"].split("-")[0], "annotator": "t",
              "created_at": "", "task": i} for i, r in enumerate(manifest["images"])]
    snapshot = LabelSnapshotData(classes=CLASSES, items=items, issues=[], content_hash=snapshot_hash(CLASSES, items),
                                 manifest_hash=manifest["content_hash"], n_tasks=len(items))
    snapshot_art = store.put_bytes(to_json_bytes(snapshot), "label-snapshots", f"{DATASET}.json")
    with session_scope(settings) as s:
        ds = writes.get_or_create_dataset(s, DATASET)
        dv = writes.add_dataset_version(
            s, ds.id, content_hash=manifest["content_hash"], manifest_uri=manifest_art.uri,
            manifest_sha256=manifest_art.sha256, dvc_md5=dvc.md5, dvc_file=dvc.dvc_file_text,
            n_images=manifest["n_images"], n_bytes=manifest["n_bytes"], source_path=str(raw))
        sn = writes.add_label_snapshot(
            s, dv.id, content_hash=snapshot.content_hash, classes=CLASSES, n_labeled=len(items),
            source="synthetic", artifact_uri=snapshot_art.uri, sha256=snapshot_art.sha256)
    data = access.labeled_set(settings, DATASET, dv, sn, SIZE, progress=False)  # decodes into settings.cache
    if copyable and template is None:
        _DVC_TEMPLATES[manifest["content_hash"]] = DvcTemplate(settings, dvc)
    y_test = data.labels[data.test_idx]
    rng = np.random.default_rng(0)
    # The sweep's rows the gate reads: the majority class and a weak from-scratch model.
    majority = int(np.bincount(data.labels[data.train_idx], minlength=len(CLASSES)).argmax())
    weak = rng.dirichlet(np.ones(len(CLASSES)), size=len(data.test_idx)).argmax(axis=1)
    results = {"test_idx": [int(i) for i in data.test_idx], "y_test": y_test.tolist(), "num_classes": len(CLASSES),
               "predictions": [
                   {"backbone": "baseline", "method": "majority", "fraction": 1.0, "seed": 0,
                    "pred": [majority] * len(data.test_idx)},
                   {"backbone": "scratch", "method": "finetune", "fraction": 1.0, "seed": 0, "pred": weak.tolist()}]}
    results_art = store.put_bytes(json.dumps(results).encode(), "evaluations", f"{DATASET}-sweep.json")
    report_art = store.put_bytes(b"# synthetic evaluation\n", "reports", f"{DATASET}-evaluation.md")
    cfg = ViTConfig(img_size=SIZE, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    made = {"versions": [], "dataset_version": dv.id}
    with session_scope(settings) as s:
        evaluation = writes.add_evaluation(
            s, label_snapshot_id=sn.id, report_uri=report_art.uri, report_sha256=report_art.sha256,
            results_uri=results_art.uri, results_sha256=results_art.sha256, summary={"domain": f"{DATASET}-mae:1"})
        made["evaluation"] = evaluation.id
        writes.get_or_create_model(s, MODEL, "classifier")
        for k in range(n_candidates):
            # A random encoder with a probe fitted on the training split: the bands are easy, so
            # every candidate beats the majority class and the weak baseline (the gate lets it
            # through) and candidates differ from each other.
            torch.manual_seed(k)
            clf = Classifier(cfg, len(CLASSES), "probe", CLASSES)
            features = extract_features(clf.encoder, data.images[data.train_idx], device="cpu")
            clf.set_head(fit_probe(features, data.labels[data.train_idx], len(CLASSES),
                                   AdaptConfig(method="probe", probe_folds=3, seed=k, device="cpu")))
            art = store.put_bytes(save_checkpoint({"classifier": clf.state()}), "checkpoints", f"{MODEL}.pt")
            mv = writes.add_model_version(
                s, MODEL, artifact_uri=art.uri, sha256=art.sha256, dataset_version_id=dv.id, label_snapshot_id=sn.id,
                params={"img_size": SIZE, "method": "probe", "seed": k})
            made["versions"].append(mv.version)
    return made
