"""server: a team's tracking server in the foreground (`make server`), until Ctrl-C, a kill or a hangup."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.interrupts import Interrupted


def execute(folder: Path, host: str, port: int, workers: int, jobs: bool) -> None:
    """Run PostgreSQL and `mlflow server` with all their state in `folder`; say how they ended."""
    from pipeline import tracking_server

    try:
        tracking_server.run(folder, host, port, workers, jobs)
    except Interrupted as stop:  # Ctrl-C, SIGTERM or a hangup is how a foreground server ends: both were stopped
        click.echo(f"{stop}: MLflow and PostgreSQL stopped")
