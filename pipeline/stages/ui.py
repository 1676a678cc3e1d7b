"""ui: the MLflow UI on this store, opened on the experiment's training runs rather than MLflow 3's GenAI pages."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from pipeline.store import connection
from pipeline.workspace import Context

# MLflow 3's UI opens in its GenAI mode (traces, tokens, cost) unless the page asks for the other one.
RUNS_VIEW = "#/experiments/{id}/runs?workflowType=machine_learning"


def execute(ctx: Context, host: str, port: int) -> None:
    """Say where the runs are; then replace this process with `mlflow ui` on a local store (a server has its own)."""
    client = connection.connect(ctx.uri)
    experiment = client.get_experiment_by_name(ctx.params.mlflow.experiment)
    view = RUNS_VIEW.format(id=experiment.experiment_id) if experiment else "#/experiments"
    if ctx.uri.startswith(("http://", "https://")):
        click.echo(f"the runs of {ctx.params.mlflow.experiment}: {ctx.uri.rstrip('/')}/{view}")
        return
    click.echo(f"the runs of {ctx.params.mlflow.experiment}: http://{host}:{port}/{view}", err=True)
    bin_dir = Path(sys.executable).parent
    args = ["mlflow", "ui", "--backend-store-uri", ctx.uri, "--host", host, "--port", str(port)]
    click.echo(shlex.join(args), err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(str(bin_dir / "mlflow"), args)
