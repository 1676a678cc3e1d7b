"""tracking: record which MLflow store this workspace's runs go to, so that DVC re-runs what a new store lacks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import click

from pipeline import files
from pipeline.records import PENDING, RECORDING_STAGES
from pipeline.store import runs
from pipeline.workspace import Context, workspace


def execute(ctx: Context, out: Path) -> None:
    """Write the store's identity to `out`, and mark pending what this store does not hold (DVC runs this each time).

    train, evaluate and register depend on `out`: pointed at another store (MLFLOW_TRACKING_URI), `dvc repro`
    runs them there. Each also depends on its own mark in ctx.paths.recorded, which it sets to RECORDED once its
    runs are in the store. A store in the same place that does not hold the workspace's training run (a fresh
    clone's new mlflow.db, a new server at the same address) gets every mark set to PENDING, so that they run
    there too; once they have, dvc.lock is byte for byte as committed.
    """
    files.write_json(out, {"store": ctx.store_id})
    click.echo(f"MLflow store: {ctx.store_id} ({ctx.uri})")
    marks = [workspace(ctx, ctx.paths.recorded) / stage for stage in RECORDING_STAGES]
    if not all(mark.exists() for mark in marks) or not _holds_training_run(ctx):
        for mark in marks:
            if not mark.exists() or mark.read_text() != PENDING:
                files.write_text(mark, PENDING)
        click.echo("this store does not hold the run that trained the workspace's model: train, evaluate and register")
        click.echo("will run (again) and record there")


def _holds_training_run(ctx: Context) -> bool:
    """Whether the store holds a run that trained the workspace's model (by its checkpoint's sha256)."""
    model = workspace(ctx, ctx.paths.model)
    if not model.exists():
        return False
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    return runs.holds_checkpoint(ctx.uri, ctx.params.mlflow.experiment, sha)
