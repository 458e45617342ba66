"""The model card: what a classifier version is for, what it was trained and judged on,
how sure we are, where it fails, and whether its export is faithful -- written from the
registry alone (its rows and the artifacts they point at, each verified by sha256),
never by re-running anything.

``card_facts`` gathers the facts as plain data; ``render_markdown`` writes them.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

from sqlmodel import Session, col, select

from components.registry import monitoring, queries, usage, views
from components.registry.tables import DatasetVersion, LabelSnapshot, PromotionEvent

ReadArtifact = Callable[[str, str], bytes]


def resolve_card_version(session: Session, ref: str) -> tuple[str, int]:
    """``NAME`` -> (NAME, production holder or latest version); ``NAME:V`` -> (NAME, V)."""
    name, _, number = ref.partition(":")
    if number:
        if not number.isdigit():
            raise ValueError(f"bad model reference {ref!r}: use NAME or NAME:VERSION")
        return name, queries.get_model_version(session, name, int(number)).version
    holder = queries.get_alias_version(session, name, monitoring.PRODUCTION) or queries.latest_model_version(session, name)
    if holder is None:
        raise queries.NotFound(f"model {name!r} has no versions")
    return name, holder.version


def _class_counts(snapshot: LabelSnapshot, read_artifact: ReadArtifact | None) -> dict | None:
    """Labels per class in the snapshot, split into the training pool and the fixed test split."""
    if read_artifact is None:
        return None
    from components.evaluation.split import test_split

    snap = json.loads(read_artifact(snapshot.artifact_uri, snapshot.sha256))
    classes = list(snap["classes"])
    labels = [classes.index(item["label"]) for item in snap["items"]]
    train_idx, test_idx = test_split([item["sha256"] for item in snap["items"]], labels)
    train, test = Counter(labels[i] for i in train_idx), Counter(labels[i] for i in test_idx)
    return {c: {"train": train.get(i, 0), "test": test.get(i, 0)} for i, c in enumerate(classes)}


def card_facts(session: Session, ref: str, read_artifact: ReadArtifact | None = None) -> dict[str, Any]:
    name, number = resolve_card_version(session, ref)
    detail = views.model_detail(session, name)
    if detail["kind"] != "classifier":
        raise ValueError(f"{name} is a {detail['kind']}: model cards describe classifiers")
    version = next(v for v in detail["versions"] if v["version"] == number)
    row = queries.get_model_version(session, name, number)
    snapshot = session.get(LabelSnapshot, row.label_snapshot_id) if row.label_snapshot_id else None
    dataset_version = session.get(DatasetVersion, row.dataset_version_id) if row.dataset_version_id else None
    promotions = session.exec(select(PromotionEvent).where(PromotionEvent.candidate_version_id == row.id)
                              .order_by(col(PromotionEvent.id).desc())).all()
    evaluation_id = next((p.evaluation_id for p in promotions if p.evaluation_id), None)
    if evaluation_id is None and snapshot is not None:  # never gated: the model's latest evaluation
        evaluation_id = monitoring.model_evaluation_id(session, name)
    evaluation = views.evaluation_detail(session, evaluation_id) if evaluation_id else None
    exports = [a for a in usage.model_artifacts(session, name) if a["version"] == number]
    batches = [b for b in usage.prediction_batches(session, name, limit=200) if b["version"] == number]
    return {
        "name": name, "version": version, "description": detail["description"],
        "dataset": ({"name": version["dataset"]["name"], "version": dataset_version.version,
                     "n_images": dataset_version.n_images, "content_hash": dataset_version.content_hash,
                     "source_path": dataset_version.source_path} if dataset_version else None),
        "snapshot": (monitoring.snapshot_dict(snapshot) if snapshot else None),
        "class_counts": _class_counts(snapshot, read_artifact) if snapshot else None,
        "evaluation": evaluation,
        "promotions": [views.promotion_dict(p, views.version_refs(session, views.promotion_event_version_ids(p)))
                       for p in promotions],
        "lineage": monitoring.lineage(session, name, number),
        "exports": [a for a in exports if a["kind"] in ("onnx", "torchscript")],
        "drift_reference": next((a for a in exports if a["kind"] == "drift_reference"), None),
        "prediction_batches": batches[:5],
    }


def _metric(m: Any) -> str:
    if isinstance(m, dict) and "value" in m:
        if m.get("ci_low") is not None and m.get("ci_high") is not None:
            return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        return f"{m['value']:.3f}"
    return "-" if m is None else str(m)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return out + [""]


def render_markdown(f: dict[str, Any]) -> str:
    v = f["version"]
    params, metrics = v.get("params") or {}, v.get("metrics") or {}
    lines = [f"# Model card: {f['name']}:{v['version']}", ""]
    lines.append(f"Aliases: {', '.join(v['aliases']) or 'none'}. Registered {v['created_at'][:19].replace('T', ' ')} "
                 f"by flow run `{v.get('flow_run_id') or '-'}`, code `{v.get('code_revision') or '-'}`.")
    if f["description"]:
        lines += ["", f["description"]]
    lines += ["", "## Intended data", ""]
    if f["dataset"]:
        d = f["dataset"]
        lines.append(f"Images like those of **{d['name']} v{d['version']}** ({d['n_images']} images from "
                     f"`{d['source_path']}`, content `{d['content_hash'][:12]}`), decoded to "
                     f"{params.get('img_size', '?')} px grayscale. Other kinds of images are outside what it was "
                     "trained and tested on: the drift monitor (`dlvm predict`) says when a batch differs.")
    else:
        lines.append("No dataset is recorded for this version.")
    s = f["snapshot"]
    if s:
        lines += ["", f"Labels: snapshot v{s['version']} ({s['n_labeled']} labels, {s['n_issues']} issues, "
                      f"from {s['source']}, content `{s['content_hash'][:12]}`)."]
    lines += ["", "## Classes", ""]
    recall = ((f["exports"][0]["checks"].get("test_split") if f["exports"] else None)
              or ((f["drift_reference"] or {}).get("details") or {}).get("test_split"))
    classes = (s or {}).get("classes") or list((f["class_counts"] or {}).keys())
    rows = []
    for c in classes:
        counts = (f["class_counts"] or {}).get(c, {})
        per = (recall or {}).get("per_class", {}).get(c, {})
        rows.append([c, counts.get("train", "-"), counts.get("test", "-"),
                     "-" if per.get("recall") is None else f"{per['recall']:.3f}"])
    lines += _table(["class", "training pool", "test split", "test recall"], rows)
    if recall:
        weak = sorted((p["recall"], c) for c, p in recall["per_class"].items() if p.get("recall") is not None)
        if weak:
            lines.append(f"Known failure classes: the lowest test recall is **{weak[0][1]}** ({weak[0][0]:.3f}); "
                         f"overall accuracy {recall['accuracy']:.3f} on {recall['n']} test images.")
            lines.append("")
    else:
        lines += ["Per-class recall is not recorded yet: `dlvm export` (its parity check runs the model on the "
                  "test split) or a first `dlvm predict` records it.", ""]

    lines += ["## Performance", ""]
    lines.append(f"Adapted with **{params.get('method', '?')}** from backbone `{v.get('parent') or params.get('backbone', '?')}` "
                 f"on {params.get('fraction', 1.0):.0%} of the training labels (recipe {params.get('recipe', '?')}, "
                 f"seed {params.get('seed', '?')}).")
    lines += [""] + _table(["metric (95 % bootstrap CI)", "value"],
                           [[k, _metric(m)] for k, m in metrics.items() if isinstance(m, dict) and "value" in m])
    if "n_train" in metrics or "n_test" in metrics:
        lines += [f"{metrics.get('n_train', '?')} training images, {metrics.get('n_test', '?')} test images.", ""]

    e = f["evaluation"]
    lines += ["## Label efficiency and baselines", ""]
    if e:
        summ = e["summary"] or {}
        lines.append(f"Evaluation {e['id']} ({e['created_at'][:10]}): each backbone adapted on fractions of the "
                     f"training labels, scored on the same fixed test split (plot: `{(e.get('plot') or {}).get('uri', '-')}`).")
        lines.append("")
        table = summ.get("table") or []
        fractions = sorted({r["fraction"] for r in table})
        backbones = sorted({(r["backbone"], r["method"]) for r in table})
        # detection and anomaly sweeps have no accuracy: their decision metric instead
        shown = {"detection": "map50", "anomaly": "image_auroc"}.get(summ.get("task"), "accuracy")
        cell = {(r["backbone"], r["method"], r["fraction"]): r["metrics"].get(shown) for r in table}
        lines += _table(["backbone", "method", *[f"{x:g} labels" for x in fractions]],
                        [[b, m, *[_metric(cell.get((b, m, x))) for x in fractions]] for b, m in backbones])
        for backbone, fraction in (summ.get("label_efficiency") or {}).items():
            lines.append(f"- {backbone} needs {'%g %%' % (100 * fraction) if fraction else 'more than all'} of the "
                         f"labels to match {summ.get('reference')} with all of them.")
        if summ.get("label_efficiency"):
            lines.append("")
        baselines = {k: val for k, val in summ.items() if "baseline" in k and k != "label_efficiency"}
        for key, value in baselines.items():
            lines += [f"Sanity baselines ({key}):", "", "```", json.dumps(value, indent=1, default=str)[:4000], "```", ""]
    else:
        lines += ["No evaluation covers this model yet (`dlvm evaluate`).", ""]

    lines += ["## Promotion evidence", ""]
    if f["promotions"]:
        for p in f["promotions"]:
            gate = (p["evidence"] or {}).get("gate") or {}
            lines.append(f"- {p['created_at'][:19].replace('T', ' ')}: **{p['decision']}** for `{p['alias']}` by "
                         f"{p['actor']}: {p['reason'] or gate.get('reason', '')}")
            comps = gate.get("comparisons") or {}
            if comps:
                conf = gate.get("confidence", 0.95)
                lines += [""] + _table(
                    ["against", f"candidate {gate.get('metric', '')}", "other", "difference",
                     f"{conf:.0%} one-sided lower bound", "p", "passed"],
                    [[name, f"{c['candidate']:.3f}", f"{c['other']:.3f}", f"{c['diff']:+.3f}",
                      f"{c['ci_low']:+.3f}" if c.get("ci_low") is not None else "-",
                      f"{c['p_value']:.3f}" if c.get("p_value") is not None else "-", "yes" if c["passed"] else "no"]
                     for name, c in comps.items()])
        lines.append("")
    else:
        lines += ["This version was never put to the promotion gate.", ""]

    lines += ["## Export", ""]
    if f["exports"]:
        rows = []
        for a in f["exports"]:
            p = a["checks"].get("parity", {})
            rows.append([a["kind"], a["details"].get("opset") or "-", f"`{a['sha256'][:16]}`",
                         f"{p.get('max_abs_diff', float('nan')):.2e}", f"{p.get('top1_agreement', 0):.2%}",
                         p.get("n_images", "-"), "passed" if p.get("passed") else "FAILED", a["created_at"][:10]])
        lines += _table(["format", "opset", "sha256", "max abs diff of probabilities", "top-1 agreement",
                         "test images", "parity", "exported"], rows)
        lines.append(f"Runtime: {f['exports'][0]['checks'].get('parity', {}).get('runtime', '-')}; file "
                     f"`{f['exports'][0]['artifact_uri']}`.")
        lines.append("")
    else:
        lines += ["Not exported yet (`dlvm export`).", ""]

    lines += ["## Use and drift", ""]
    if f["prediction_batches"]:
        lines += _table(["batch", "when", "images", "unreadable", "drift"],
                        [[b["id"], b["created_at"][:19].replace("T", " "), b["n_images"], b["n_failed"],
                          {None: "not tested", True: "ALERT", False: "none"}[b["drift_alert"]]]
                         for b in f["prediction_batches"]])
    else:
        lines += ["No prediction batches yet.", ""]

    lines += ["## Lineage", ""]
    for node in f["lineage"]:
        lines.append(f"1. {node['kind'].replace('_', ' ')} **{node['ref']}**"
                     + (f" (sha256 `{node['sha256'][:12]}`)" if node.get("sha256") else "")
                     + (f" (content `{node['content_hash'][:12]}`)" if node.get("content_hash") else ""))
    return "\n".join(lines).rstrip() + "\n"


def model_card(session: Session, ref: str, read_artifact: ReadArtifact | None = None) -> str:
    return render_markdown(card_facts(session, ref, read_artifact))
