"""Why the quick label-efficiency mode's fine-tunes on WM-811K collapse: the quick plan's fine-tune
config for ``train_1`` (label_efficiency.planned_recipe + finetune_for: SGD lr 0.1, the auto
recipe's class balance) from scratch, as is, with ``class_balance='none'``, and with AdamW
lr 2e-3; scored on the quick mode's 3,000-map test subsample.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.wm811k_balance_check asis|none|adamw
"""
import dataclasses
import sys

import components  # noqa: F401  (OMP_WAIT_POLICY before torch)
from benchmarks import label_efficiency as le
from benchmarks.wafer_maps import load_wafer_arrays, stratified_sample
from components.evaluation.metrics import evaluate_predictions
from components.training.adapt import adapt, predict_proba
from components.training.device import cpu_threads


def main(variant: str) -> None:
    cpu_threads(1)
    plan = le.plan_for("wm811k", "quick")
    data = load_wafer_arrays(32, le.ROOT / ".dlvm" / "bench-cache")
    recipe, _ = le.planned_recipe("wm811k", plan, le.wafer_profile(data, data.label_set("all")), 1, "cpu")
    train = data.label_set("train_1")
    test = stratified_sample(data.indices("test"), data.labels, plan.test_limit, 0)
    cfg = le.finetune_for(plan, recipe.adapt["finetune"], len(train))
    if variant == "none":
        cfg = dataclasses.replace(cfg, class_balance="none")
    elif variant == "adamw":
        cfg = dataclasses.replace(cfg, optimizer="adamw", lr=2e-3, weight_decay=0.05)
    clf = adapt(recipe.backbone, None, data.images[train], data.labels[train], len(data.classes), cfg, progress=False)
    m = evaluate_predictions(data.labels[test], predict_proba(clf, data.images[test], device="cpu"), len(data.classes))
    print(variant, cfg.optimizer, cfg.lr, cfg.epochs, clf.training_log["class_balance"],
          {k: round(v["value"], 3) for k, v in m.items()}, "val:", clf.training_log["val_scores"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "asis")
