"""Label-efficiency reporting: seed-aggregated table, efficiency ratio, curve plot, markdown.

Input is the ``rows`` of a sweep (``SweepResult.rows``): one dict per
(backbone, method, fraction, seed) with ``n_train`` and
``metrics = {name: {value, ci_low, ci_high}}``.

Aggregation over seeds (``summary_table``): ``value`` is the mean over seeds;
``ci_low``/``ci_high`` are the means of the per-seed bootstrap bounds, i.e. the test-set
sampling uncertainty of one typical run; ``seed_sd`` is the standard deviation over seeds
(the variability from which labels were drawn and from training randomness), reported
beside it rather than folded in, so each source of noise stays visible.

Sanity-baseline rows (backbone ``baseline``, method = the baseline's name, see
components/evaluation/baselines.py) are rows like any other: they appear in every table
(as ``sanity / NAME``), in their own section with what was fitted, and never as a
label-efficiency reference or target.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from components.evaluation.baselines import BASELINE_BACKBONE
from components.evaluation.metrics import (
    METRICS,
    check_metric,
    json_safe,
    paired_comparison,
)

METRIC_NAMES = ("accuracy", "macro_f1", "balanced_accuracy")
_FULL = 1.0


def _group_key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row["backbone"]), str(row["method"])


def _curves(rows: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(backbone, method) pairs in order of first appearance."""
    seen: dict[tuple[str, str], None] = {}
    for r in rows:
        seen.setdefault(_group_key(r), None)
    return list(seen)


def summary_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (backbone, method, fraction), aggregated over seeds (see module doc).

    Entry: ``{backbone, method, fraction, n_seeds, n_train, metrics: {name: {value, ci_low, ci_high, seed_sd}}}``,
    ordered by curve (first appearance) then fraction; ``n_train`` is the mean over seeds.
    """
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((*_group_key(r), float(r["fraction"])), []).append(r)
    order = {c: i for i, c in enumerate(_curves(rows))}
    out = []
    for (backbone, method, fraction), rs in sorted(groups.items(), key=lambda kv: (order[kv[0][:2]], kv[0][2])):
        common = set.intersection(*(set(r["metrics"]) for r in rs))
        names = [m for m in METRIC_NAMES if m in common] + sorted(common - set(METRIC_NAMES))
        metrics = {}
        for m in names:
            vals = np.array([r["metrics"][m]["value"] for r in rs], dtype=float)
            lows = np.array([r["metrics"][m].get("ci_low", np.nan) for r in rs], dtype=float)
            highs = np.array([r["metrics"][m].get("ci_high", np.nan) for r in rs], dtype=float)
            metrics[m] = {
                "value": float(np.mean(vals)),
                "ci_low": float(np.mean(lows)),
                "ci_high": float(np.mean(highs)),
                "seed_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            }
        out.append({
            "backbone": backbone,
            "method": method,
            "fraction": fraction,
            "n_seeds": len(rs),
            "n_train": float(np.mean([r.get("n_train", np.nan) for r in rs])),
            "metrics": metrics,
        })
    return out


def _means(rows: Sequence[dict[str, Any]], metric: str) -> dict[tuple[str, str], dict[float, float]]:
    """{(backbone, method): {fraction: seed-mean of metric}}."""
    out: dict[tuple[str, str], dict[float, float]] = {}
    for s in summary_table(rows):
        if metric in s["metrics"]:
            out.setdefault((s["backbone"], s["method"]), {})[s["fraction"]] = s["metrics"][metric]["value"]
    return out


def reference_backbone(table: Sequence[dict[str, Any]], candidates: Sequence[str],
                       metric: str = "accuracy") -> str | None:
    """The candidate with the best 100 %-label score (any method): the reference whose
    full-label score the label-efficiency ratio asks the others to reach."""
    def full_label_score(backbone: str) -> float:
        return max((row["metrics"][metric]["value"] for row in table
                    if row["backbone"] == backbone and row["fraction"] == 1.0), default=float("-inf"))
    candidates = [c for c in candidates if c != BASELINE_BACKBONE]
    return max(candidates, key=full_label_score) if candidates else None


def best_method(table: Sequence[dict[str, Any]], backbone: str, metric: str, fraction: float = 1.0) -> str | None:
    """The adaptation method with the best seed-mean ``metric`` for ``backbone`` at ``fraction`` of the
    labels in a ``summary_table`` (ties: the first in table order), or None if it has no such row."""
    rows = [r for r in table if r["backbone"] == backbone and r["fraction"] == fraction and metric in r["metrics"]]
    return max(rows, key=lambda r: r["metrics"][metric]["value"])["method"] if rows else None


def choose_candidate_method(table: Sequence[dict[str, Any]], backbone: str, metric: str,
                            requested: str | None = None) -> tuple[str, str]:
    """(method, why): the adaptation method a promotion candidate of ``backbone`` is trained with:
    ``requested`` if given, otherwise the one the sweep measured best at 100 % of the labels
    on ``metric`` (not always the probe)."""
    if requested:
        return requested, "chosen by the user"
    method = best_method(table, backbone, metric)
    if method is None:
        raise ValueError(f"the evaluation has no 100 %-label run of {backbone}: cannot choose its candidate's method")
    scores = ", ".join(f"{r['method']} {r['metrics'][metric]['value']:.3f}" for r in table
                       if r["backbone"] == backbone and r["fraction"] == _FULL and metric in r["metrics"])
    return method, f"the best measured at 100 % of the labels on {metric} ({scores})"


def choose_candidate(table: Sequence[dict[str, Any]], backbones: Sequence[str], metric: str,
                     requested_method: str | None = None) -> tuple[str, str, str]:
    """(backbone, method, why) of a pipeline's promotion candidate, from the sweep's 100 %-label
    rows on ``metric``. With ``requested_method``: the first of ``backbones`` (the domain
    backbone) adapted that way. Otherwise the domain backbone's best-measured method, unless a
    later backbone (from scratch) measured clearly better: the lower end of its 95 % interval
    above the domain's best value. The domain backbone is what the platform is for, so a
    difference within the noise keeps it; a domain start that makes models worse does not."""
    if requested_method:
        return backbones[0], requested_method, "method chosen by the user"
    rows = [r for r in table if r["backbone"] in backbones and r["fraction"] == _FULL and metric in r["metrics"]]
    best = {b: max((r for r in rows if r["backbone"] == b), key=lambda r: r["metrics"][metric]["value"], default=None)
            for b in backbones}
    chosen = best[backbones[0]]
    if chosen is None:
        raise ValueError(f"the evaluation has no 100 %-label run of {backbones[0]}: cannot choose a candidate")
    for b in backbones[1:]:
        if best[b] is not None and best[b]["metrics"][metric]["ci_low"] > chosen["metrics"][metric]["value"]:
            chosen = best[b]
    scores = ", ".join(f"{r['backbone']} / {r['method']} {r['metrics'][metric]['value']:.3f}" for r in rows)
    why = (f"the best measured at 100 % of the labels on {metric} ({scores})" if chosen is best[backbones[0]] else
           f"{chosen['backbone']} measured clearly better than {backbones[0]} at 100 % of the labels on {metric} "
           f"(its 95 % interval starts at {chosen['metrics'][metric]['ci_low']:.3f}; {scores})")
    return chosen["backbone"], chosen["method"], why


def label_efficiency_details(
    rows: Sequence[dict[str, Any]],
    reference_backbone: str,
    target_backbones: Sequence[str],
    metric: str = "accuracy",
    method: str | None = None,
) -> list[dict[str, Any]]:
    """The evidence behind ``label_efficiency``: one dict per target.

    ``{target, reference, method, reference_method, reference_value, fraction, target_method, value}``;
    ``fraction``/``target_method``/``value`` are None when the target never reaches the bar.
    """
    means = _means(rows, metric)

    def best_at(backbone: str, fraction: float) -> tuple[float, str | None]:
        # With method=None each backbone is credited with its best adaptation method.
        cands = [(f[fraction], m) for (b, m), f in means.items()
                 if b == backbone and (method is None or m == method) and fraction in f]
        return max(cands) if cands else (float("nan"), None)

    ref_value, ref_method = best_at(reference_backbone, _FULL)
    if ref_method is None:
        raise ValueError(f"no 100 %-label rows for reference backbone {reference_backbone!r}"
                         + (f" with method {method!r}" if method else ""))
    out = []
    for target in target_backbones:
        fractions = sorted({f for (b, m), fs in means.items()
                            if b == target and (method is None or m == method) for f in fs})
        hit: tuple[float, float, str | None] | None = None
        for f in fractions:
            v, m = best_at(target, f)
            if m is not None and v >= ref_value:
                hit = (f, v, m)
                break
        out.append({
            "target": target,
            "reference": reference_backbone,
            "method": method,
            "reference_method": ref_method,
            "reference_value": ref_value,
            "fraction": hit[0] if hit else None,
            "value": hit[1] if hit else None,
            "target_method": hit[2] if hit else None,
        })
    return out


def label_efficiency(
    rows: Sequence[dict[str, Any]],
    reference_backbone: str,
    target_backbones: Sequence[str],
    metric: str = "accuracy",
    method: str | None = None,
) -> dict[str, float | None]:
    """{target: smallest label fraction whose seed-mean reaches the reference's 100 %-label seed-mean, or None}.

    With ``method`` set, only that adaptation method counts for both sides; with None,
    each backbone is credited with its best method at each fraction (the reference
    included, so the bar is the reference's best full-label score). The label-efficiency
    ratio is ``1 / fraction`` (e.g. 0.1 -> the target needs 10x fewer labels).
    """
    return {d["target"]: d["fraction"]
            for d in label_efficiency_details(rows, reference_backbone, target_backbones, metric, method)}


def full_label_runs(results: Mapping[str, Any], metric: str, fraction: float = 1.0) -> list[dict[str, Any]]:
    """Every run of an evaluation's sweep (``SweepResult.to_dict()``) at ``fraction`` of the labels,
    with its test-set predictions and its ``value`` on ``metric``."""
    y_test = np.asarray(results["y_test"], dtype=np.int64)
    num_classes = int(results["num_classes"])
    fn = METRICS[check_metric(metric)]
    runs = []
    for p in results["predictions"]:
        if float(p["fraction"]) != float(fraction):
            continue
        pred = np.asarray(p["pred"], dtype=np.int64)
        runs.append({"backbone": p["backbone"], "method": p["method"], "seed": int(p["seed"]), "pred": pred,
                     "value": fn(y_test, pred, num_classes)})
    return runs


def beats_majority(results: Mapping[str, Any], backbone: str, method: str, metric: str,
                   confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Whether ``backbone``/``method`` at 100 % of the labels (its lowest seed) is significantly better
    than the majority class on ``metric``: a label-efficiency reference must be, or the ratio
    measures nothing. The dict of ``metrics.paired_comparison`` plus ``backbone``, ``method``, ``seed``."""
    runs = full_label_runs(results, metric)
    majority = [r for r in runs if r["backbone"] == BASELINE_BACKBONE and r["method"] == "majority"]
    mine = sorted((r for r in runs if r["backbone"] == backbone and r["method"] == method), key=lambda r: r["seed"])
    if not majority or not mine:
        missing = "the majority-class baseline" if not majority else f"{backbone} / {method}"
        raise ValueError(f"no 100 %-label run of {missing} in the evaluation")
    y_test = np.asarray(results["y_test"], dtype=np.int64)
    c = paired_comparison(y_test, mine[0]["pred"], majority[0]["pred"], int(results["num_classes"]), metric,
                          "better", 0.0, confidence, n_boot, seed)
    return json_safe({**c, "backbone": backbone, "method": method, "seed": mine[0]["seed"], "confidence": confidence})


def efficiency_claim(results: Mapping[str, Any], backbones: Sequence[str], domain: str, metric: str,
                     reference: str | None = None) -> dict[str, Any]:
    """What an evaluation may claim about label efficiency on ``metric``: ``{reference, targets,
    reference_check, label_efficiency}``. The reference is ``reference`` or the non-domain backbone
    with the best 100 %-label score; the ratio (``label_efficiency``, see there) is only computed
    when that reference, with its best method, is significantly better than the majority class
    (``reference_check``, ``beats_majority``); otherwise it is empty and the report says why."""
    rows = results["rows"]
    reference = reference or reference_backbone(summary_table(rows), [b for b in backbones if b != domain], metric)
    if reference is None:
        return {"reference": None, "targets": [], "reference_check": None, "label_efficiency": {}}
    targets = [b for b in backbones if b != reference]
    check = beats_majority(results, reference, best_method(summary_table(rows), reference, metric), metric)
    return {"reference": reference, "targets": targets, "reference_check": check,
            "label_efficiency": label_efficiency(rows, reference, targets, metric) if check["passed"] else {}}


def plot_curves(rows: Sequence[dict[str, Any]], metric: str = "accuracy", title: str | None = None) -> bytes:
    """PNG bytes: metric vs label fraction (%, log x), one line per backbone x method, CI band shaded.

    Band = the seed-mean of the per-seed bootstrap intervals (see module doc).
    """
    # Figure + Agg canvas directly: no pyplot global state, safe inside worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    table = summary_table(rows)
    fig = Figure(figsize=(9, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    all_x: set[float] = set()
    # Colour = backbone, line style = method: a dozen curves stay tellable apart.
    curves = _curves(rows)
    colors = {b: f"C{i % 10}" for i, b in enumerate(dict.fromkeys(b for b, _ in curves))}
    styles = {m: ("-", "--", ":", "-.")[i % 4] for i, m in enumerate(dict.fromkeys(m for _, m in curves))}
    for backbone, method in curves:
        pts = [s for s in table if (s["backbone"], s["method"]) == (backbone, method) and metric in s["metrics"]]
        if not pts:
            continue
        x = np.array([100 * s["fraction"] for s in pts])
        y = np.array([s["metrics"][metric]["value"] for s in pts])
        lo = np.array([s["metrics"][metric]["ci_low"] for s in pts])
        hi = np.array([s["metrics"][metric]["ci_high"] for s in pts])
        (line,) = ax.plot(x, y, marker="o", color=colors[backbone], linestyle=styles[method], label=f"{backbone} / {method}")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.1, linewidth=0)
        all_x.update(x.tolist())
    ax.set_xscale("log")
    if all_x:
        ax.set_xticks(sorted(all_x))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("labels used (% of train pool, log scale)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or f"Label efficiency: {metric.replace('_', ' ')} (mean over seeds, 95 % CI band)")
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    # No Software/date metadata: the same rows give the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _pct(f: float) -> str:
    return f"{100 * f:g} %"


def _cell(m: dict[str, float]) -> str:
    if m is None:
        return "–"
    return f"{m['value']:.3f} ({m['ci_low']:.3f}–{m['ci_high']:.3f})"


def _label(backbone: str, method: str) -> str:
    return f"sanity / {method}" if backbone == BASELINE_BACKBONE else f"{backbone} / {method}"


def _metric_table(table: list[dict[str, Any]], curves: list[tuple[str, str]], metric: str) -> list[str]:
    """One row per backbone / method (the sanity baselines last), one column per label fraction."""
    fractions = sorted({s["fraction"] for s in table})
    by_key = {(s["backbone"], s["method"], s["fraction"]): s for s in table}
    curves = sorted(curves, key=lambda c: c[0] == BASELINE_BACKBONE)  # stable: plan order otherwise
    header = ["model"] + [_pct(f) for f in fractions]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # Labelled images per fraction: the same subsets for every model (an SVM's subsample aside).
    n_train = [[by_key[(b, m, f)]["n_train"] for b, m in curves if (b, m, f) in by_key and b != BASELINE_BACKBONE]
               or [by_key[(b, m, f)]["n_train"] for b, m in curves if (b, m, f) in by_key] for f in fractions]
    lines.append("| n_train | " + " | ".join(f"{np.nanmean(n):.0f}" if n else "–" for n in n_train) + " |")
    for b, m in curves:
        cells = [_label(b, m)]
        for f in fractions:
            s = by_key.get((b, m, f))
            cells.append(_cell(s["metrics"].get(metric)) if s else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fitted(info: dict[str, Any] | None) -> str:
    if not info:
        return "–"
    return ", ".join(f"{k} {v}" for k, v in info.items())


def _sanity_section(rows: Sequence[dict[str, Any]], table: list[dict[str, Any]], metric: str,
                    scratch: str | None) -> list[str]:
    """The sanity baselines at 100 % of the labels (and the from-scratch network's rows), with
    what each fitted, and which is strongest on ``metric``."""
    full = sorted((s for s in table if s["fraction"] == _FULL and s["backbone"] in (BASELINE_BACKBONE, scratch)),
                  key=lambda s: s["backbone"] != BASELINE_BACKBONE)  # the classical rows first, then scratch
    out = ["## Sanity baselines", ""]
    if not any(s["backbone"] == BASELINE_BACKBONE for s in full):
        return out + ["- none in this evaluation: no candidate from it can pass the promotion gate.", ""]
    fit = {r["method"]: r.get("fit") for r in sorted(rows, key=lambda r: r["seed"], reverse=True)
           if r["backbone"] == BASELINE_BACKBONE and r["fraction"] == _FULL}
    out += ["Fitted on the same training labels and scored on the same test split as every backbone: the "
            "majority class; logistic regression and an RBF-SVM on raw pixels and on HOG features "
            f"(hyperparameters by cross-validation on the training labels, on {metric.replace('_', ' ')}); "
            "the supervised network trained from scratch (`scratch` rows). 100 % of the labels; 95 % bootstrap "
            "intervals.", "",
            "| baseline | " + " | ".join(m.replace("_", " ") for m in METRIC_NAMES) + " | fitted |",
            "|---|" + "---|" * len(METRIC_NAMES) + "---|"]
    for s in full:
        cells = [_label(s["backbone"], s["method"])] + [_cell(s["metrics"].get(m)) for m in METRIC_NAMES]
        out.append("| " + " | ".join(cells + [_fitted(fit.get(s["method"])) if s["backbone"] == BASELINE_BACKBONE
                                                 else "–"]) + " |")
    scored = [s for s in full if metric in s["metrics"]]
    if scored:
        best = max(scored, key=lambda s: s["metrics"][metric]["value"])
        out += ["", f"Strongest sanity baseline on {metric.replace('_', ' ')}: **{_label(best['backbone'], best['method'])}** "
                f"({best['metrics'][metric]['value']:.3f})."]
    return out + [""]


def markdown_report(
    rows: Sequence[dict[str, Any]],
    title: str,
    context: dict[str, Any],
    gate: dict[str, Any] | None = None,
    reference_backbone: str | None = None,
    target_backbones: Sequence[str] | None = None,
    metrics: Sequence[str] = METRIC_NAMES,
    efficiency_metric: str = "accuracy",
    reference_check: dict[str, Any] | None = None,
    scratch: str | None = "scratch",
) -> str:
    """A markdown report: context, one table per metric (backbone/method x label fraction,
    seed-mean with 95 % CI, sanity baselines included), the sanity baselines' section,
    label-efficiency lines and, if given, the promotion gate (``GateResult.to_dict()``).

    Label-efficiency lines need ``reference_backbone`` (e.g. the generic baseline); the
    targets default to every other backbone. With ``reference_check`` (``gate.beats_majority``
    of the reference) not passed, no ratio is claimed and the report says why.
    ``efficiency_metric`` is also the metric the strongest sanity baseline is named on.
    """
    table = summary_table(rows)
    curves = _curves(rows)
    seeds = sorted({r["seed"] for r in rows})
    out = [f"# {title}", ""]
    if context:
        out += ["## Context", ""]
        out += [f"- **{k}**: {v}" for k, v in context.items()]
        out.append("")
    out += [
        "## Results",
        "",
        f"Cells: mean over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) and, in brackets, the mean of the "
        "per-seed 95 % bootstrap intervals over the test set. Columns: the fraction of the training pool "
        "used; `n_train` the number of labelled images. `sanity / …` rows are the sanity baselines.",
        "",
    ]
    for m in metrics:
        if any(m in s["metrics"] for s in table):
            out += [f"### {m.replace('_', ' ')}", ""] + _metric_table(table, curves, m) + [""]
    out += _sanity_section(rows, table, efficiency_metric, scratch)

    if reference_backbone is not None:
        backbones = list(dict.fromkeys(b for b, _ in curves if b != BASELINE_BACKBONE))
        targets = list(target_backbones) if target_backbones is not None else [b for b in backbones if b != reference_backbone]
        targets = [t for t in targets if t != BASELINE_BACKBONE]
        out += ["## Label efficiency", ""]
        details: list[dict[str, Any]] = []
        if reference_check is not None and not reference_check.get("passed"):
            out += [withheld_reason(reference_check), ""]
        else:
            try:
                details = label_efficiency_details(rows, reference_backbone, targets, efficiency_metric)
            except ValueError as e:
                out += [f"- not computed: {e}", ""]
            if reference_check is not None and details:
                rc = reference_check
                out.append(f"- the reference {reference_backbone} / {rc['method']} is significantly better than the "
                           f"majority class on {rc['metric']} ({rc['candidate']:.3f} vs {rc['other']:.3f}, "
                           f"{rc['confidence']:.0%} lower bound of the difference {rc['ci_low']:+.3f}).")
        for d in details:
            bar = f"{reference_backbone}'s 100 %-label {efficiency_metric} ({d['reference_value']:.3f}, {d['reference_method']})"
            if d["fraction"] is None:
                out.append(f"- **{d['target']}** does not reach {bar} at any label fraction tried.")
            else:
                out.append(
                    f"- **{d['target']}** reaches {bar} with {_pct(d['fraction'])} of the labels "
                    f"({d['value']:.3f}, {d['target_method']}): label-efficiency ratio {1 / d['fraction']:.3g}x."
                )
        out.append("")

    if gate is not None:
        out += gate_section(gate)
    return "\n".join(out)


def withheld_reason(check: dict[str, Any]) -> str:
    """Why no label-efficiency ratio is given: the reference is not significantly better than the
    majority class (``gate.beats_majority``)."""
    def f(v: Any, fmt: str) -> str:
        return "nan" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

    return (f"- **no label-efficiency ratio is given**: the reference {check['backbone']} / {check['method']} at "
            f"100 % of the labels ({check['metric']} {f(check['candidate'], '.3f')}) is not significantly better than "
            f"the majority class ({f(check['other'], '.3f')}; {check['confidence']:.0%} lower bound of the difference "
            f"{f(check['ci_low'], '+.3f')}): reaching its score says nothing.")


def gate_section(gate: dict[str, Any]) -> list[str]:
    """The promotion gate's decision (``GateResult.to_dict()``) as markdown: one row per comparison."""
    def f(v: Any, fmt: str = ".3f") -> str:
        return "–" if v is None else format(v, fmt)

    verdict = "PASSED" if gate.get("passed") else "REFUSED"
    conf = gate.get("confidence")
    conf_txt = f"{conf:.0%} " if isinstance(conf, float) else ""
    out = ["## Promotion gate", "", f"**{verdict}** — {gate.get('reason', '')}", ""]
    comps = gate.get("comparisons") or {}
    if comps:
        out += [f"Metric: {gate.get('metric')}; accuracy beside it. `better`: the {conf_txt}lower bound of the "
                "difference must exceed the threshold; `not_worse`: its upper bound must not fall below it. `p`: the "
                "share of bootstrap resamples against the rule (diff <= 0 for `better`, diff >= 0 for `not_worse`): "
                "small means significantly better, or significantly worse, respectively.", "",
                f"| against | kind | rule | candidate | other | diff | {conf_txt}bound | p | accuracy (cand / other) "
                "| verdict |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for name, c in comps.items():
            bound = c.get("ci_low") if c.get("rule", "better") == "better" else c.get("ci_high")
            acc = c.get("accuracy") or {}
            out.append(
                f"| {name} | {c.get('kind', '–')} | {c.get('rule', 'better')} | {f(c.get('candidate'))} | "
                f"{f(c.get('other'))} | {f(c.get('diff'), '+.3f')} | {f(bound, '+.3f')} | {f(c.get('p_value'), '.4f')} | "
                f"{f(acc.get('candidate'))} / {f(acc.get('other'))} | "
                f"{'PASS' if c.get('passed') else 'FAIL'}: {c.get('verdict', '')} |")
        out.append("")
    goal = gate.get("goal") or {}
    if goal:
        out += [f"Goal (recorded, not required): significantly better than the strongest sanity baseline "
                f"({goal.get('against')}): **{'met' if goal.get('met') else 'not met'}** (diff {f(goal.get('diff'), '+.3f')}, "
                f"lower bound {f(goal.get('ci_low'), '+.3f')}).", ""]
    return out


# A grid of 64 samples of 32 px is about 30-70 KB; 1,024 samples of 64 px could reach megabytes,
# which a markdown report (and Prefect's artifact store of it) should not carry inline.
SAMPLES_EMBED_MAX_BYTES = 512_000


def samples_section(entries: Sequence[dict[str, Any]], max_embed_bytes: int = SAMPLES_EMBED_MAX_BYTES) -> list[str]:
    """The generated samples of the evaluated sequential backbones, as markdown: per backbone its
    newest grid from `dlvm generate` (embedded as a PNG data URI, so the report file stands alone;
    a grid over ``max_embed_bytes`` is named, not embedded), how it was drawn and its Fréchet
    distances beside the tokenizer floor and the shuffled-token baseline.

    ``entries``: ``{"backbone": ref, "artifact": usage.artifact_dict(...) with its "version" | None,
    "png": bytes | None, "error": str | None}`` (no artifact: the backbone has no samples yet; ``error``: the grid
    could not be read)."""
    if not entries:
        return []
    out = ["## Generated samples", "",
           "The newest grid `dlvm generate` drew from each sequential backbone evaluated here. Fréchet "
           "distance: between Gaussians fitted to the backbone's pooled features of the samples and of real "
           "images (lower is better), beside the tokenizer's reconstructions of those real images (the floor a "
           "generator over these tokens can reach) and their tokens shuffled per image (the baseline: right "
           "token statistics, no spatial structure).", ""]
    for e in entries:
        out += [f"### {e['backbone']}", ""]
        a = e.get("artifact")
        if a is None:
            out += [f"No samples yet: `dlvm generate {e['backbone']} --n 64 --against DATASET`.", ""]
            continue
        d = a.get("details") or {}
        what = f"{d.get('n', '?')} samples of {e['backbone']}" + (f" v{a['version']}" if a.get("version") else "")
        png = e.get("png")
        if e.get("error"):
            out.append(f"The grid could not be read ({e['error']}): `{a['artifact_uri']}`.")
        elif png is not None and len(png) <= max_embed_bytes:
            out.append(f"![{what}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")
        else:
            out.append(f"The grid ({a['size']:,} bytes) is too large to embed here: `{a['artifact_uri']}`.")
        out += ["", f"- {what}: temperature {d.get('temperature', '?')}, top-k {d.get('top_k') or 'off'}, "
                    f"seed {d.get('seed', '?')}; drawn {str(a.get('created_at') or '?')[:19].replace('T', ' ')}; "
                    f"artifact `{a['artifact_uri']}` (sha256 {a['sha256'][:12]})"]
        quality, against = d.get("quality"), d.get("against") or {}
        if quality:
            fd = quality["frechet_distance"]
            verdict = ("below the shuffled-token baseline" if fd["samples"] < fd["shuffled_tokens"]
                       else "**not below the shuffled-token baseline**: no spatial structure learned that this "
                            "measure can see")
            out.append(f"- Fréchet distance to {quality['n_real']} images of {against.get('dataset', '?')} "
                       f"v{against.get('version', '?')}: samples **{fd['samples']:.3f}**, tokenizer reconstructions "
                       f"(floor) {fd['reconstructions']:.3f}, shuffled tokens (baseline) {fd['shuffled_tokens']:.3f}: "
                       f"{verdict}.")
        else:
            out.append("- not measured against real images (`dlvm generate ... --against DATASET` measures it).")
        out.append("")
    return out


def backbone_sweep_markdown(title: str, table: Sequence[dict[str, Any]], context: Mapping[str, Any],
                            columns: Sequence[tuple[str, str]], train_unit: str, note: str) -> str:
    """A sweep of backbones over fractions of the training images as markdown (detection and
    anomaly detection: one method, so a row per backbone and fraction). ``table``:
    :func:`summary_table`'s; ``columns``: (metric name, header), the first the decision metric,
    whose best value per fraction is bold when several backbones compete; a metric a row lacks
    is "-"."""
    decision = columns[0][0]
    best: dict[float, float] = {}
    for row in table:
        best[row["fraction"]] = max(best.get(row["fraction"], -np.inf), row["metrics"][decision]["value"])
    several = len({row["backbone"] for row in table}) > 1
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in context.items()]
    lines += ["", f"| backbone | {train_unit} | seeds | " + " | ".join(h for _, h in columns) + " |",
              "| --- | --- | --- |" + " --- |" * len(columns)]
    for row in table:
        cells = []
        for name, _ in columns:
            m = row["metrics"].get(name)
            cell = "-" if m is None else f"{m['value']:.3f} ({m['ci_low']:.3f}-{m['ci_high']:.3f})"
            if name == decision and several and m["value"] == best[row["fraction"]]:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {row['backbone']} | {row['fraction']:.0%} ({row['n_train']:.0f}) | {row['n_seeds']} | "
                     + " | ".join(cells) + " |")
    return "\n".join([*lines, "", note]) + "\n"
