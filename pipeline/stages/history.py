"""history: every move of the registered model's aliases, from the tracking store alone."""

from __future__ import annotations

from typing import Any

import click

from pipeline import store
from pipeline.stages import Context


def execute(ctx: Context) -> None:
    """Print when, alias, from, to, by, reason and evidence of each move, oldest first."""
    name = ctx.params.register.model_name
    moves = store.alias_history(store.client(ctx.uri), name)
    click.echo(f"{name}: {len(moves)} alias moves in {ctx.uri}")
    rows = [("when (UTC)", "alias", "from", "to", "by", "reason", "evidence")]
    rows += [
        (m["when"], f"@{m['alias']}", f"v{m['from']}" if m["from"] else "-", f"v{m['to']}", m["by"], m["reason"],
         evidence_text(m.get("evidence") or {}))
        for m in moves
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        fixed = "  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True))
        click.echo(f"{fixed}  {row[5]}" + (f"  [{row[6]}]" if row[6] else ""))


def evidence_text(evidence: dict[str, Any]) -> str:
    """The evidence of one move, in a line."""
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
