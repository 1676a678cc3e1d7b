"""report: the current champion, this workspace's challenger and its baseline, compared on the same rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pipeline import files
from pipeline.lineage import FAMILIES
from pipeline.records import elsewhere
from pipeline.reporting import comparison_table, registration_line
from pipeline.store import connection, registry, runs
from pipeline.workspace import Context, Paths


def execute(ctx: Context, paths: Paths) -> None:
    """Write <reports>/report.html (self-contained) and report.md with its figures; print where they are.

    This workspace's version is the one the store registered for its model (found by the model's
    fingerprint, whichever execution registered it), with the gate decision made when it was registered.
    """
    from pipeline import dataset, figures, reporting, serving

    results = files.read_json(paths.metrics)
    tables = {name: files.read_json(paths.plots / f"{name}.json") for name in figures.TABLES}
    ours = figures.from_tables(tables)
    meta = dataset.read_meta(paths.prepared)
    client = connection.connect(ctx.uri)
    name = ctx.params.register.model_name
    found = registry.find_version(client, name, registry.fingerprint(paths.model.read_bytes(), serving.SERVING_CONFIG))
    if found is None:
        raise ValueError(
            f"{paths.model}: the store {ctx.uri} has no version of {name} for this model"
            + elsewhere(ctx, "; `make run` (or `dvc repro`) registers it there")
        )
    version = str(found.version)
    decision = registry.version_decision(client, name, version)
    if decision is None:
        raise ValueError(
            f"{name} v{version} has no gate decision (its registration was cut short): `dvc repro -f register`"
        )
    summary = registry.version_summary(client, name, version, None, decision)
    notes: list[str] = []
    champion = registry.alias_version(client, name, registry.CHAMPION)
    challenger = registry.alias_version(client, name, registry.CHALLENGER)
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
            columns.append(reporting.Column(label, runs.run_name(client, champion.run_id), rescored[0]))
            curves[label] = rescored[1]
            params_diff = _params_diff(client, champion.run_id, summary["run_id"])
    same = champion is not None and str(champion.version) == version
    label = f"challenger v{version}" + (" = champion" if same else "")
    columns.append(reporting.Column(label, runs.run_name(client, summary["run_id"]), results["model"]))
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
    from pipeline.dataset import load_prepared
    from pipeline.scoring import FeatureMismatch, score_version

    prepared = load_prepared(prepared_dir)
    try:
        scores = score_version(client, name, version, prepared)
    except FeatureMismatch:
        return None
    return metrics.evaluation(prepared.y_test, scores.proba, scores.threshold)


def _params_diff(client: Any, champion_run: str, challenger_run: str) -> list[tuple[str, str, str]]:
    """The params whose values differ between the champion's run and the challenger's."""
    old, new = runs.run_params(client, champion_run), runs.run_params(client, challenger_run)
    keys = sorted(set(old) | set(new))
    return [(k, old.get(k, "-"), new.get(k, "-")) for k in keys if old.get(k) != new.get(k)]
