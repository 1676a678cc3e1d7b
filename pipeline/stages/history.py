"""history: every record of the registered model's history (alias moves, reused versions), from the store alone."""

from __future__ import annotations

from typing import Any

import click

from pipeline.records import elsewhere
from pipeline.store import connection, registry
from pipeline.workspace import Context


def execute(ctx: Context) -> None:
    """Print when, what, from, to, by, reason and evidence of each record, oldest first."""
    name = ctx.params.register.model_name
    try:
        records = registry.history(connection.connect(ctx.uri), ctx.uri, name)
    except ValueError as exc:
        raise ValueError(f"{exc}{elsewhere(ctx)}") from None
    moves = sum(1 for r in records if "alias" in r)
    click.echo(f"{name}: {moves} alias moves, {len(records) - moves} reused versions in {ctx.uri}")
    rows = [("when (UTC)", "what", "from", "to", "by", "reason", "evidence")]
    for r in records:
        what, before, after = (f"@{r['alias']}", r["from"], r["to"]) if "alias" in r else ("reused", None, r["reused"])
        rows.append((r["when"], what, f"v{before}" if before else "-", f"v{after}", r["by"], r["reason"],
                     evidence_text(r.get("evidence") or {})))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        fixed = "  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True))
        click.echo(f"{fixed}  {row[5]}" + (f"  [{row[6]}]" if row[6] else ""))


def evidence_text(evidence: dict[str, Any]) -> str:
    """The evidence of one record, in a line."""
    if evidence.get("manual"):
        return "manual"
    if "delta" in evidence:
        return (
            f"{evidence['metric']} {evidence['delta']:+.4g} in [{evidence['low']:+.4g}, {evidence['high']:+.4g}] "
            f"at {evidence['level']:.0%}, {evidence['method']}, n={evidence['n']} vs v{evidence['champion']}"
        )
    if "metric" in evidence:
        return f"{evidence['metric']} {evidence['model']:.4g} vs baseline {evidence['baseline']:.4g}"
    return ""
