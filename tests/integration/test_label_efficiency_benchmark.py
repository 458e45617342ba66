"""benchmarks/label_efficiency.py end to end in its seconds-long smoke mode, on both domains (ELPV
from the package, a 200-image subset; WM-811K from a tiny synthetic file in the published
format): every backbone x method x label set has a row, the sanity baselines are rows, the
label-efficiency verdicts agree with the rows, the reports are written, and a rerun reuses the
cached pretrained encoders."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from synthetic import write_wafer_npz

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("label_efficiency", ROOT / "benchmarks" / "label_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def check_efficiency(rows: list[dict], effs: list[dict]) -> None:
    assert [e["metric"] for e in effs] == ["macro_f1", "accuracy"]
    for eff in effs:
        if "withheld" in eff:
            continue
        for method, details in eff["by_method"].items():
            if isinstance(details, str):
                continue
            for d in details:
                assert d["reference"] == "generic-simclr" and d["target"] != "generic-simclr"
                if d["fraction"] is not None:  # the verdict is backed by a row at or above the bar
                    assert d["value"] >= d["reference_value"]
                else:
                    assert all(r["metrics"][eff["metric"]]["value"] < d["reference_value"] for r in rows
                               if r["backbone"] == d["target"] and (method == "best" or r["method"] == method))


def test_label_efficiency_smoke_both_domains(tmp_path, generic_corpus):
    bench = load_benchmark()
    npz = tmp_path / "wm811k.npz"
    write_wafer_npz(npz, {"train_1": 12, "train_10": 16, "train_20": 8, "train_29": 8, "val": 8, "test": 16})
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--mode", "smoke", "--out", str(out), "--cache", str(cache), "--generic-corpus", str(generic_corpus),
            "--npz", str(npz), "--threads", "1"]
    results = bench.main(args)

    backbones = {"domain-simclr", "generic-then-domain", "generic-simclr", "scratch"}
    elpv = results["elpv"]
    rows4 = elpv["tasks"]["4class"]["rows"]
    assert {r["backbone"] for r in rows4} == backbones | {"baseline"}
    assert {(r["backbone"], r["method"], r["fraction"]) for r in rows4 if r["method"] == "finetune"} == {
        ("domain-simclr", "finetune", 1.0), ("scratch", "finetune", 1.0)}
    assert {r["fraction"] for r in rows4 if r["method"] == "probe"} == {0.5, 1.0}
    sanity = {(r["method"], r["fraction"]) for r in rows4 if r["backbone"] == "baseline"}
    assert {("svm-hog", 1.0), ("logreg-pixels", 1.0), ("majority", 0.5), ("majority", 1.0)} <= sanity
    assert ("svm-hog", 0.5) not in sanity  # fitted baselines only where the plan puts them
    assert {r["method"] for r in elpv["tasks"]["2class"]["rows"] if r["backbone"] != "baseline"} == {"probe"}
    assert elpv["data"]["train"] + elpv["data"]["test"] == 200
    assert elpv["recipe"]["preprocess"]["size"] == 32 and "input size" in elpv["overrides"]
    for result in (elpv, results["wm811k"]):  # the smoke budget's 2-fold probe CV, used and said
        assert result["recipe"]["adapt"]["probe"]["probe_folds"] == 2
        assert result["overrides"]["probe folds"].startswith("2 (mode budget; auto: ")

    wm = results["wm811k"]
    rows9 = wm["tasks"]["9class"]["rows"]
    assert {r["label_set"] for r in rows9} == {"train_1", "all"}
    # fractions are the label sets' share of all training labels (12 of 44, 44 of 44)
    assert {r["label_set"]: r["fraction"] for r in rows9} == {"train_1": round(12 / 44, 4), "all": 1.0}
    assert {r["n_train"] for r in rows9 if r["label_set"] == "train_1" and r["backbone"] != "baseline"} == {12}
    assert {(r["backbone"], r["label_set"]) for r in rows9 if r["method"] == "finetune"} == {("domain-simclr", "train_1")}
    assert wm["data"]["test"] == 16 and wm["recipe"]["preprocess"]["resample"] == "nearest"
    assert wm["pretraining"]["domain-simclr"]["images"] == 16 + 8 + 8 + 8 + 12  # the train+val pool, no test map
    for result, task in ((elpv, "4class"), (elpv, "2class"), (wm, "9class")):
        check_efficiency(result["tasks"][task]["rows"], result["tasks"][task]["label_efficiency"])

    for name, needles in (("label-efficiency-elpv-smoke", ("## ELPV 4class", "## ELPV 2class", "sanity / svm-hog",
                                                          "Deitsch et al. 2019", "Label efficiency against generic")),
                          ("label-efficiency-wm811k-smoke", ("## WM811K 9class", "train_1 = 27.3 %", "load average"))):
        report = (out / name / "report.md").read_text()
        for needle in needles:
            assert needle in report, needle
        assert json.loads((out / name / "results.json").read_text())["mode"] == "smoke"

    cached = sorted(p.name for p in cache.glob("*.pt"))
    assert len(cached) == 6 and not any(n.endswith(".resume.pt") for n in cached)
    again = bench.main(args[:-4] + ["--domain", "wm811k"] + args[-4:])  # cached encoders: same pretraining, same rows
    assert again["wm811k"]["pretraining"] == wm["pretraining"]
    assert again["wm811k"]["tasks"]["9class"]["rows"][0]["metrics"] == rows9[0]["metrics"]
