"""The click CLI: parses options and calls one stage module (pipeline/stages/<command>.py; `run`: pipeline/flow.py)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.interrupts import Interrupted
from pipeline.store import connection, location
from pipeline.workspace import Context, tidy


def _is_user_error(exc: Exception) -> bool:
    """Bad params, data or paths, or a store that refused: a message, not a traceback."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")  # only loaded if a stage used MLflow
    return isinstance(exc, (ValueError, FileNotFoundError)) or bool(
        mlflow_exceptions and isinstance(exc, mlflow_exceptions.MlflowException)
    )


def command(func: Callable[..., None]) -> Callable[..., None]:
    """Add --params/--set, build the Context, and turn known errors into a clear exit 1."""

    @click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
    @click.option(
        "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
        help="Override one param (an empty value keeps the file's; null clears it).",
    )  # fmt: skip
    @functools.wraps(func)
    def wrapper(params_path: str, overrides: tuple[str, ...], **kwargs: Any) -> None:
        import os

        # MLflow draws a progress bar per artifact download (registry loads): noise in a pipeline's log.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            ctx = Context.load(params_path, overrides, dict(os.environ), click.get_current_context().info_name)
            tidy(ctx)
            func(ctx, **kwargs)
        except BaseException as exc:
            # Runs opened but not yet under connection.running (a failure or signal right after creating them).
            connection.terminate_open("KILLED" if isinstance(exc, KeyboardInterrupt | Interrupted) else "FAILED")
            gone = connection.unreachable(exc) if isinstance(exc, Exception) else None
            if gone:
                raise click.ClickException(
                    f"the MLflow tracking server {location.tracking_uri(Path.cwd(), os.environ)} stopped answering "
                    f"({gone}); what was written before is intact and nothing half-written was kept: "
                    "start it again (`make server`) and re-run; the runs left RUNNING are marked KILLED then"
                ) from exc
            if isinstance(exc, Exception) and _is_user_error(exc):
                raise click.ClickException(str(exc)) from exc
            raise

    return wrapper


def path_option(key: str) -> Callable:
    """--<key> (run_info: --run-info), a path whose default is dvc.yaml's vars paths.<key> (dvc.yaml passes it)."""
    name = key.replace("_", "-")
    return click.option(f"--{name}", key, default=None, type=click.Path(), help=f"default: dvc.yaml paths.{key}")


def _path(ctx: Context, key: str, given: str | None) -> Path:
    return Path(given) if given is not None else getattr(ctx.paths, key)


@click.group()
def main() -> None:
    """BinaryClassifier pipeline: tracking, prepare, train, evaluate, register (`run`: all); and the rest.

    report, promote, history, predict, serve; ui (MLflow's UI) and server (a team's tracking server).
    """


@main.command()
@command
@path_option("tracking")
def tracking(ctx: Context, tracking: str | None) -> None:
    """Record which MLflow store this workspace's runs go to (MLFLOW_TRACKING_URI, or the repository's own)."""
    from pipeline.stages import tracking as stage

    stage.execute(ctx, _path(ctx, "tracking", tracking))


@main.command()
@command
@path_option("prepared")
def prepare(ctx: Context, prepared: str | None) -> None:
    """Read prepare.source, validate, split and write the prepared arrays."""
    from pipeline.stages import prepare as stage

    stage.execute(ctx, _path(ctx, "prepared", prepared))


@main.command()
@command
@path_option("prepared")
@path_option("model")
@path_option("history")
@path_option("run_info")
def train(ctx: Context, prepared: str | None, model: str | None, history: str | None, run_info: str | None) -> None:
    """Train BinaryClassifier, logging params and per-epoch cost/accuracy to MLflow."""
    from pipeline.stages import train as stage

    stage.execute(
        ctx,
        _path(ctx, "prepared", prepared),
        _path(ctx, "model", model),
        _path(ctx, "history", history),
        _path(ctx, "run_info", run_info),
    )


@main.command()
@command
@path_option("prepared")
@path_option("model")
@path_option("run_info")
@path_option("metrics")
@path_option("plots")
def evaluate(
    ctx: Context, prepared: str | None, model: str | None, run_info: str | None, metrics: str | None, plots: str | None
) -> None:
    """Score BinaryClassifier and a scikit-learn baseline with one metric set; plots and figures."""
    from pipeline.stages import evaluate as stage

    stage.execute(
        ctx,
        _path(ctx, "prepared", prepared),
        _path(ctx, "model", model),
        _path(ctx, "run_info", run_info),
        _path(ctx, "metrics", metrics),
        _path(ctx, "plots", plots),
    )


@main.command()
@command
@path_option("prepared")
@path_option("model")
@path_option("run_info")
@path_option("metrics")
@path_option("registered")
def register(
    ctx: Context,
    prepared: str | None,
    model: str | None,
    run_info: str | None,
    metrics: str | None,
    registered: str | None,
) -> None:
    """Log the model, register it, set @challenger and (if the gate's evidence says so) @champion."""
    from pipeline.stages import register as stage

    stage.execute(
        ctx,
        _path(ctx, "prepared", prepared),
        _path(ctx, "model", model),
        _path(ctx, "run_info", run_info),
        _path(ctx, "metrics", metrics),
        _path(ctx, "registered", registered),
    )


@main.command()
@command
@click.option("--out-dir", default=None, type=click.Path(), help="Write every output under this folder instead.")
def run(ctx: Context, out_dir: str | None) -> None:
    """Every stage in order in this process (what `mlflow run .` calls)."""
    from pipeline import flow

    flow.run(ctx, ctx.paths if out_dir is None else ctx.paths.under(Path(out_dir)))


@main.command()
@command
def report(ctx: Context) -> None:
    """Write reports/report.html and report.md: champion, challenger and baseline on the same rows."""
    from pipeline.stages import report as stage

    stage.execute(ctx, ctx.paths)


@main.command()
@command
@click.argument("version")
@click.option("--reason", required=True, help="Why (recorded in the alias history).")
def promote(ctx: Context, version: str, reason: str) -> None:
    """Move @champion to VERSION by hand (a rollback included), recording who and why."""
    from pipeline.stages import promote as stage

    stage.execute(ctx, version, reason)


@main.command()
@command
def history(ctx: Context) -> None:
    """Print every move of @champion and @challenger: when, from, to, by whom, why, on what evidence."""
    from pipeline.stages import history as stage

    stage.execute(ctx)


@main.command()
@command
@click.option("--model", "model_uri", default=None, help="MLflow model URI [default: models:/<name>@champion]")
@click.option(
    "--input", "input_path", required=True, type=click.Path(),
    help="CSV or Parquet file to score, or a folder or glob of Parquet files (one table, files in name order); "
    "Parquet by URI too, e.g. s3://bucket/prefix/",
)  # fmt: skip
@click.option("--output", "output_path", required=True, type=click.Path(), help="CSV or Parquet file to write")
@click.option("--keep", multiple=True, metavar="COLUMN", help="Input column to copy to the output (e.g. an id).")
@click.option("--batch-rows", default=100_000, show_default=True, type=click.IntRange(min=1), help="Rows per chunk.")
def predict(
    ctx: Context, model_uri: str | None, input_path: str, output_path: str, keep: tuple[str, ...], batch_rows: int
) -> None:
    """Score a file in chunks: probability and label per row."""
    from pipeline.records import champion_uri
    from pipeline.stages import predict as stage
    from pipeline.table_files import location

    if not isinstance(location(output_path), Path):  # pyarrow reads a store; the output is written atomically here
        raise click.BadParameter(
            f"{output_path}: must be a local file (object stores are read, not written)", param_hint="--output"
        )
    stage.execute(ctx, model_uri or champion_uri(ctx), location(input_path), Path(output_path), keep, batch_rows)


@main.command()
@command
@click.option("--model", "model_uri", default=None, help="MLflow model URI [default: models:/<name>@champion]")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5001, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option("--device", default=None, type=click.Choice(["cpu", "cuda", "mps", "auto"]), help="Where to compute.")
@click.option("--max-request-mb", default=None, type=click.FloatRange(min=0, min_open=True), help="Body limit.")
def serve(
    ctx: Context,
    model_uri: str | None,
    host: str,
    port: int,
    workers: int,
    device: str | None,
    max_request_mb: float | None,
) -> None:
    """Say which model, its input columns and a request to try; then `mlflow models serve` it."""
    from pipeline.records import champion_uri
    from pipeline.stages import serve as stage

    stage.execute(ctx, model_uri or champion_uri(ctx), host, port, workers, device, max_request_mb)


@main.command()
@command
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def ui(ctx: Context, host: str, port: int) -> None:
    """The MLflow UI on this store, opened on the experiment's training runs (a server's: its address)."""
    from pipeline.stages import ui as stage

    stage.execute(ctx, host, port)


@main.command()
@click.option("--folder", default=".server", show_default=True, type=click.Path(), help="Where all its state lives.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int, envvar="SERVER_PORT", help="[env: SERVER_PORT]")
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(min=1), envvar="SERVER_WORKERS",
    help="uvicorn processes serving requests (a busy team: one per core) [env: SERVER_WORKERS]",
)  # fmt: skip
@click.option("--jobs/--no-jobs", default=False, show_default=True, help="Run MLflow's job runner (GenAI jobs).")
def server(folder: str, host: str, port: int, workers: int, jobs: bool) -> None:
    """A team's tracking server in the foreground: PostgreSQL behind `mlflow server`, proxied artifacts."""
    from pipeline.stages import server as stage

    try:
        stage.execute(Path(folder), host, port, workers, jobs)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
