"""What a person reads, pure: the comparison table, the registry's outcome, the report as HTML and Markdown."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

from pipeline.lineage import FAMILIES
from pipeline.params import METRICS

FIGURE_TITLES = {
    "roc": "ROC",
    "precision_recall": "Precision-recall",
    "calibration": "Calibration",
    "confusion": "Confusion matrices",
}


@dataclass(frozen=True)
class Column:
    """One model in the comparison: a label, where it comes from, its metrics on the evaluation rows."""

    label: str
    origin: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Report:
    """Everything the report shows."""

    model_name: str
    generated: str
    store: str
    rows: int
    evaluated_on: str
    columns: list[Column]
    params_diff: list[tuple[str, str, str]]  # key, champion's value, challenger's value
    decision: dict[str, Any]
    outcome: str  # one sentence on the registration
    figures: dict[str, bytes]  # "roc.png" -> PNG
    notes: list[str] = field(default_factory=list)


def _best(metric: str, values: list[float]) -> float:
    return max(values) if METRICS[metric] else min(values)


def _evidence_rows(decision: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("decision", "promoted to @champion" if decision["promote"] else "not promoted"),
        ("reason", decision["reason"]),
        ("gate metric", decision["metric"]),
        ("model vs baseline", f"{decision['model']:.6f} vs {decision['baseline']:.6f}"),
        ("baseline tolerance", str(decision["tolerance"])),
    ]
    evidence = decision.get("evidence")
    if evidence:
        rows += [
            ("against", f"champion v{decision['champion_version']}"),
            ("challenger, champion", f"{evidence['challenger']:.6f}, {evidence['champion']:.6f}"),
            ("difference (> 0: challenger better)", f"{evidence['delta']:+.6f}"),
            (
                f"{evidence['level']:.0%} interval",
                f"[{evidence['low']:+.6f}, {evidence['high']:+.6f}] ({evidence['method']})",
            ),
            ("paired rows", str(evidence["n"])),
        ]
        if evidence.get("resamples"):
            rows.append(("resamples, seed", f"{evidence['resamples']}, {evidence['seed']}"))
    return rows


def _metric_rows(report: Report) -> list[tuple[str, list[str], list[bool]]]:
    rows = []
    for metric in METRICS:
        values = [c.metrics[metric] for c in report.columns]
        best = _best(metric, values)
        arrow = "higher is better" if METRICS[metric] else "lower is better"
        rows.append((f"{metric} ({arrow})", [f"{v:.6f}" for v in values], [v == best for v in values]))
    return rows


def to_html(report: Report) -> str:
    """One self-contained page: figures inline as data URIs, no script, no network."""
    e = html.escape
    head = "".join(f"<th>{e(c.label)}<br><small>{e(c.origin)}</small></th>" for c in report.columns)
    metrics = "".join(
        f"<tr><td>{e(name)}</td>"
        + "".join(f"<td class='num{' best' if b else ''}'>{v}</td>" for v, b in zip(values, best, strict=True))
        + "</tr>"
        for name, values, best in _metric_rows(report)
    )
    params = (
        "".join(f"<tr><td>{e(k)}</td><td>{e(a)}</td><td>{e(b)}</td></tr>" for k, a, b in report.params_diff)
        or "<tr><td colspan='3'>none: the same params</td></tr>"
    )
    evidence = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _evidence_rows(report.decision))
    figures = "".join(
        f"<figure><img alt='{e(FIGURE_TITLES[key])}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{e(FIGURE_TITLES[key])}</figcaption></figure>"
        for key, png in ((k.removesuffix(".png"), v) for k, v in report.figures.items())
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(report.model_name)}: champion, challenger, baseline</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }}
th small {{ font-weight: normal; color: #555; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.best {{ font-weight: bold; background: #eef6ee; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }} figcaption {{ text-align: center; color: #555; }}
.outcome {{ font-size: 1.1em; padding: 0.6em 1em; background: #f4f4f8; border-left: 4px solid #557; }}
</style></head><body>
<h1>{e(report.model_name)}: champion, challenger and baseline</h1>
<p class="outcome">{e(report.outcome)}</p>
<p>{report.rows} evaluation rows ({e(report.evaluated_on)} split of this workspace's prepared data) &middot;
store {e(report.store)} &middot; generated {e(report.generated)}</p>
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Metrics on the same evaluation rows</h2>
<table><tr><th>metric</th>{head}</tr>{metrics}</table>
<h2>The gate's decision and evidence</h2>
<table>{evidence}</table>
<h2>Params that differ (champion, challenger)</h2>
<table><tr><th>param</th><th>champion</th><th>challenger</th></tr>{params}</table>
<h2>Figures</h2>
{figures}
</body></html>
"""


def to_markdown(report: Report) -> str:
    """The same report for a CI comment; figures are linked files beside it."""
    lines = [f"## {report.model_name}: champion, challenger and baseline", "", f"**{report.outcome}**", ""]
    lines.append(f"{report.rows} evaluation rows ({report.evaluated_on} split) · store `{report.store}`")
    lines += [""] + [f"- {n}" for n in report.notes] + ([""] if report.notes else [])
    lines += ["| metric | " + " | ".join(f"{c.label} ({c.origin})" for c in report.columns) + " |"]
    lines += ["|---|" + "---:|" * len(report.columns)]
    for name, values, best in _metric_rows(report):
        cells = [f"**{v}**" if b else v for v, b in zip(values, best, strict=True)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### The gate", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in _evidence_rows(report.decision)]
    lines += ["", "### Params that differ", ""]
    if report.params_diff:
        lines += ["| param | champion | challenger |", "|---|---|---|"]
        lines += [f"| {k} | {a} | {b} |" for k, a, b in report.params_diff]
    else:
        lines.append("None: the same params.")
    lines += ["", "### Figures", ""]
    for key in report.figures:
        lines.append(f"![{FIGURE_TITLES[key.removesuffix('.png')]}](figures/{key})")
    return "\n".join(lines) + "\n"


def comparison_table(results: dict[str, dict[str, float]]) -> str:
    """BinaryClassifier against the baseline, one metric per line."""
    lines = [f"{'metric':<10} {FAMILIES['model']:>18} {FAMILIES['baseline']:>20}"]
    for key in METRICS:
        lines.append(f"{key:<10} {results['model'][key]:>18.6f} {results['baseline'][key]:>20.6f}")
    return "\n".join(lines)


def registration_line(summary: dict[str, Any]) -> str:
    """One sentence on what the registry now holds about a version (a summary as models/registered.json holds it)."""
    aliases = ", ".join(f"@{a}" for a in summary["aliases"]) or "no aliases"
    new = summary["new_version"]  # None: not about an execution (the report)
    state = "" if new is None else "new version; " if new else "unchanged model, existing version; "
    return (
        f"{summary['name']} v{summary['version']} ({state}{aliases}): "
        f"{'champion' if summary['decision']['promote'] else 'not champion'}: {summary['decision']['reason']}"
    )
