"""Inductive or transductive: which data each evaluated model learned from.

The founding documents name two ways to adapt a model to a domain: *inductive* (from the
labeled training data only) and *transductive* (also from unlabeled images of the target
domain: the unlabeled pool, or the unlabeled test images themselves, e.g. by continued
pretraining on them). A test score means something different in each case, so the report
says which one each row is.

Every adaptation method of dlvm (probe, prototype, fine-tune, LoRA, Reptile, MAML) uses the
snapshot's labeled training images only. What can make a row transductive is the backbone:
``dlvm pretrain`` learns from *all* the images of a dataset version, the test split's among
them (their pixels, never their labels). So a backbone pretrained on the evaluated dataset
is transductive with respect to its test split; a generic backbone or a random one is not.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

INDUCTIVE = "inductive"
TRANSDUCTIVE = "transductive"

# What each adaptation method learns from (all of them: the snapshot's labeled training images).
ADAPTATION_DATA = {
    "probe": "labeled training images (frozen features)",
    "prototype": "labeled training images (class means of frozen features)",
    "finetune": "labeled training images",
    "lora": "labeled training images",
    "svm": "labeled training images and their test-time views (frozen features; a descriptor backbone's "
           "kernel landmarks redrawn from them)",
    "reptile": "episodes of the labeled training images, then all of them for the head",
    "maml": "episodes of the labeled training images, then all of them for the head",
}


def pretraining_saw_test_images(session, backbone_dataset_version_id: int | None, evaluated_dataset_version) -> bool:
    """Whether a backbone registered with ``backbone_dataset_version_id`` was pretrained on the
    evaluated dataset (any version of it: later versions keep the earlier images, the test
    split's among them). ``None`` (imported generic weights, scratch): no."""
    if backbone_dataset_version_id is None:
        return False
    if backbone_dataset_version_id == evaluated_dataset_version.id:
        return True
    from components.registry.tables import DatasetVersion

    row = session.get(DatasetVersion, backbone_dataset_version_id)
    return row is not None and row.dataset_id == evaluated_dataset_version.dataset_id


def setting_of(method: str, backbone_saw_test_images: bool) -> str:
    if method not in ADAPTATION_DATA:
        raise ValueError(f"unknown adaptation method {method!r} (methods: {', '.join(ADAPTATION_DATA)})")
    return TRANSDUCTIVE if backbone_saw_test_images else INDUCTIVE


def learning_settings_markdown(saw_test_images: Mapping[str, bool], methods: Sequence[str]) -> str:
    """The report section: one row per backbone x method, what it learned from and the setting."""
    lines = ["## Learning setting (inductive vs transductive)", "",
             "Inductive: learned from the labeled training images only. Transductive: also from unlabeled "
             "images of the target domain (here: the backbone's self-supervised pretraining on this dataset's "
             "images, the test split's pixels among them, never their labels).", "",
             "| backbone | method | pretraining data | adaptation data | setting |", "| --- | --- | --- | --- | --- |"]
    for backbone, saw in saw_test_images.items():
        pre = ("this dataset's unlabeled images, test split included" if saw
               else "none (random init)" if backbone == "scratch" else "other images (not this dataset)")
        for method in methods:
            lines.append(f"| {backbone} | {method} | {pre} | {ADAPTATION_DATA[method]} | {setting_of(method, saw)} |")
    return "\n".join(lines) + "\n"
