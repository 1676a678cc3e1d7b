"""report: the current champion, this workspace's challenger and its baseline, compared on the same rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pipeline import files, store
from pipeline.stages import FAMILIES, Context, Paths
from pipeline.stages.evaluate import comparison_table
from pipeline.stages.records import elsewhere
from pipeline.stages.register import registration_line, score_version, summary_of


def execute(ctx: Context, paths: Paths) -> None:
    """Write <reports>/report.html (self-contained) and report.md with its figures; print where they are.

    This workspace's version is the one the store registered for its model (found by the model's
    fingerprint, whichever execution registered it), with the gate decision made when it was registered.
    """
    from pipeline import data, figures, reporting, serving

    results = files.read_json(paths.metrics)
    tables = {name: files.read_json(paths.plots / f"{name}.json") for name in figures.TABLES}
    ours = figures.from_tables(tables)
    meta = data.read_meta(paths.prepared)
    client = store.client(ctx.uri)
    name = ctx.params.register.model_name
    found = store.find_version(client, name, store.fingerprint(paths.model.read_bytes(), serving.SERVING_CONFIG))
    if found is None:
        raise ValueError(
            f"{paths.model}: the store {ctx.uri} has no version of {name} for this model"
            + elsewhere(ctx, "; `make run` (or `dvc repro`) registers it there")
        )
    version = str(found.version)
    decision = store.version_decision(client, name, version)
    if decision is None:
        raise ValueError(
            f"{name} v{version} has no gate decision (its registration was cut short): `dvc repro -f register`"
        )
    summary = summary_of(client, name, version, None, decision)
    notes: list[str] = []
    champion = store.alias_version(client, name, store.CHAMPION)
    challenger = store.alias_version(client, name, store.CHALLENGER)
    if challenger is not None and str(challenger.version) != version:
        notes.append(f"@challenger is now v{challenger.version}, registered since; this report is about v{version}")
    columns, curves = [], {}
    params_diff: list[tuple[str, str, str]] = []
    if champion is None:
        notes.append("there is no @champion yet")
    elif str(champion.version) != version:
        rescored = _rescore(client, name, str(champion.version), paths.prepared)
        if rescored is None:
            notes.append(f"champion v{champion.version} takes other features: it cannot be scored on this data")
        else:
            label = f"champion v{champion.version}"
            columns.append(reporting.Column(label, store.run_name(client, champion.run_id), rescored[0]))
            curves[label] = rescored[1]
            params_diff = _params_diff(client, champion.run_id, summary["run_id"])
    same = champion is not None and str(champion.version) == version
    label = f"challenger v{version}" + (" = champion" if same else "")
    columns.append(reporting.Column(label, store.run_name(client, summary["run_id"]), results["model"]))
    curves[label] = ours[FAMILIES["model"]]
    columns.append(reporting.Column("baseline", FAMILIES["baseline"], results["baseline"]))
    curves["baseline"] = ours[FAMILIES["baseline"]]
    rows = int(curves[label].confusion.sum())
    report = reporting.Report(
        model_name=name,
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        store=ctx.uri,
        rows=rows,
        evaluated_on=meta["evaluated_on"],
        columns=columns,
        params_diff=params_diff,
        decision=summary["decision"],
        outcome=registration_line(summary),
        figures=figures.render(curves, {c.label: c.metrics for c in columns}, rows),
        notes=notes,
    )
    out = paths.reports
    for key, png in report.figures.items():
        files.write_bytes(out / "figures" / key, png)
    files.write_text(out / "report.md", reporting.to_markdown(report))
    files.write_text(out / "report.html", reporting.to_html(report))
    click.echo(comparison_table(results))
    click.echo(registration_line(summary))
    click.echo(f"report: {(out / 'report.html').resolve().as_uri()} (and report.md for a CI comment)")


def _rescore(client: Any, name: str, version: str, prepared_dir: Path) -> tuple[dict[str, float], Any] | None:
    """A version's metrics and curves on this workspace's evaluation rows; None if it takes other features."""
    from pipeline import metrics
    from pipeline.data import load_prepared

    prepared = load_prepared(prepared_dir)
    scored = score_version(client, name, version, prepared)
    if scored is None:
        return None
    proba, threshold = scored
    return metrics.evaluation(prepared.y_test, proba, threshold)


def _params_diff(client: Any, champion_run: str, challenger_run: str) -> list[tuple[str, str, str]]:
    """The params whose values differ between the champion's run and the challenger's."""
    old, new = store.run_params(client, champion_run), store.run_params(client, challenger_run)
    keys = sorted(set(old) | set(new))
    return [(k, old.get(k, "-"), new.get(k, "-")) for k in keys if old.get(k) != new.get(k)]
