"""benchmarks/label_efficiency.py end to end on its seconds-long smoke recipe: every backbone x
method x fraction has a row, the label-efficiency verdicts agree with the rows, the report and
curves are written, and a rerun reuses the cached pretrained encoders."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("label_efficiency", ROOT / "benchmarks" / "label_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_label_efficiency_smoke(tmp_path, generic_corpus):
    bench = load_benchmark()
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--recipe", "smoke", "--out", str(out), "--cache", str(cache), "--generic-corpus", str(generic_corpus)]
    results = bench.main(args)

    backbones = {"domain-mae", "domain-dino", "generic-then-domain", "generic-mae", "generic-dino", "scratch"}
    rows4 = results["tasks"]["4class"]["rows"]
    assert {r["backbone"] for r in rows4} == backbones
    assert {(r["method"], r["fraction"]) for r in rows4} == {
        ("probe", 0.5), ("probe", 1.0), ("prototype", 0.5), ("prototype", 1.0), ("finetune", 1.0)}
    assert {r["method"] for r in results["tasks"]["2class"]["rows"]} == {"probe", "prototype"}
    assert results["train"] + results["test"] == 240 and abs(results["test"] / 240 - 0.25) < 0.02

    for task in ("4class", "2class"):
        rows = results["tasks"][task]["rows"]
        for d in results["tasks"][task]["label_efficiency"]:
            assert d["reference"] in {"generic-mae", "generic-dino"}
            assert d["target"] in {"domain-mae", "domain-dino", "generic-then-domain"}
            if d["fraction"] is not None:  # the verdict must be backed by a row at or above the bar
                assert d["value"] >= d["reference_value"]
            else:  # nothing reaches the bar
                mean = [r["metrics"]["accuracy"]["value"] for r in rows if r["backbone"] == d["target"]
                        and (d["method"] == "best" or r["method"] == d["method"])]
                assert max(mean) < d["reference_value"] or len({r["seed"] for r in rows}) > 1

    report = (out / "report.md").read_text()
    for needle in ("## ELPV 4class", "## ELPV 2class", "Deitsch et al. 2019", "0.8842", "Label efficiency",
                   "| domain-dino / probe |"):
        assert needle in report
    assert (out / "curve-4class.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "results.json").read_text())["recipe"] == "smoke"

    cached = sorted(p.name for p in cache.glob("*.pt"))
    assert len(cached) == 5 and not any(n.endswith(".resume.pt") for n in cached)
    again = bench.main(args)  # cached encoders: identical pretraining info and identical rows
    assert again["pretraining"] == results["pretraining"]
    assert again["tasks"]["4class"]["rows"][0]["metrics"] == rows4[0]["metrics"]
