"""benchmarks/ssl_methods.py end to end in its seconds-long smoke mode on a tiny synthetic file in
the published WM-811K format: every method has its probe row at every label set and its fine-tune
row with every label, beside the random-init floor and the majority class; every metric and its
interval is a proportion in order; the methods saw the same number of pretraining images (the
tokenizer's counted in sequential's); the report, the sample grid and the Fréchet distances are
written."""
from __future__ import annotations

import json
import math

from synthetic import write_wafer_npz

from benchmarks.ssl_methods import BACKBONES, FLOOR, METHODS, main


def test_ssl_methods_smoke_wm811k(tmp_path):
    npz = tmp_path / "wm811k.npz"
    write_wafer_npz(npz, {"train_1": 12, "train_10": 16, "train_20": 8, "train_29": 8, "val": 8, "test": 24})
    grid = tmp_path / "img" / "grid.png"
    out = tmp_path / "out"
    res = main(["--domain", "wm811k", "--mode", "smoke", "--out", str(out), "--cache", str(tmp_path / "cache"),
                "--npz", str(npz), "--grid-to", str(grid)])

    rows = res["rows"]
    sets = ["train_1", "train_10", "all"]
    have = {(r["backbone"], r["method"], r["label_set"]) for r in rows}
    assert {(b, "probe", s) for b in BACKBONES for s in sets} <= have
    assert {(b, "finetune", "all") for b in BACKBONES} <= have
    assert {("baseline", "majority", s) for s in sets} <= have
    assert not {(b, m, s) for b, m, s in have if m == "finetune" and s != "all"}
    assert {r["n_train"] for r in rows if r["label_set"] == "all" and r["method"] == "probe"} == {44}
    for r in rows:
        for name in ("accuracy", "balanced_accuracy", "macro_f1"):
            m = r["metrics"][name]
            assert 0.0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1.0, (r["backbone"], r["method"], name, m)

    info = res["pretraining"]
    assert {info[m]["images_seen"] for m in METHODS} == {64}  # the same budget, the tokenizer's included
    assert info["sequential"]["tokenizer"]["steps"] + info["sequential"]["steps"] == info["mae"]["steps"]
    assert 0.0 < info["sequential"]["tokenizer"]["held_out"]["codebook_usage"] <= 1.0

    fd = res["generation"]["frechet_distance"]
    assert set(fd) == {"samples", "shuffled_tokens", "reconstructions"}
    assert all(math.isfinite(v) and v >= 0 for v in fd.values())

    folder = out / "ssl-methods-wm811k-smoke"
    report = (folder / "report.md").read_text()
    for b in BACKBONES:
        assert f"| {b} | probe | train_1 (" in report and f"| {b} | finetune | all (44) |" in report
    assert f"| {FLOOR} |" in report and "| majority class | - |" in report and "shuffled-token baseline" in report
    assert (folder / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" == grid.read_bytes()[:8]
    assert json.loads((folder / "results.json").read_text())["rows"] == json.loads(json.dumps(rows, default=str))


def test_quick_wm811k_probes_every_label_set_but_fine_tunes_on_train_10():
    from benchmarks.ssl_methods import plan_for

    quick = plan_for("wm811k", "quick")
    assert quick.label_sets == ("train_1", "train_10", "all") and quick.finetune_on == "train_10"
    assert plan_for("wm811k", "standard").finetune_on == "all"
    assert plan_for("elpv", "quick").finetune_on == 1.0
