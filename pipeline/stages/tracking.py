"""tracking: record which MLflow store this workspace's runs go to, so that DVC re-runs what a new store lacks."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import files
from pipeline.stages import Context


def execute(ctx: Context, out: Path) -> None:
    """Write the store's identity to `out` (DVC runs this stage every time; the file changes with the store).

    train, evaluate and register depend on `out`: pointed at another store (MLFLOW_TRACKING_URI), `dvc repro`
    runs them there, and pointed back, DVC's run cache restores what that store already has.
    """
    files.write_json(out, {"store": ctx.store_id})
    click.echo(f"MLflow store: {ctx.store_id} ({ctx.uri})")
