"""predict: score a CSV or Parquet file with a registered model, in bounded chunks, into an atomic output."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.records import elsewhere
from pipeline.store import connection, registry
from pipeline.workspace import Context

if TYPE_CHECKING:
    from pipeline.tables import Location


def execute(
    ctx: Context, model_uri: str, input_path: Location, output_path: Path, keep: tuple[str, ...], batch_rows: int
) -> None:
    """Load the model through MLflow (as the server does) and score the input, `batch_rows` rows at a time.

    The rows go to the loaded model's scorer (PyFuncModel.get_raw_model) as arrays the shared validator
    checked, skipping pyfunc's per-column DataFrame checks, which cost more than the scoring. With
    cluster.engine ray, each file of the input is scored by a Ray task with that same scorer.
    """
    from pipeline import batch_scoring
    from pipeline.tables import file_format

    source = batch_scoring.open_input(input_path)  # fail on a bad input before loading anything
    file_format(output_path)
    connection.connect(ctx.uri)
    with connection.absent_as_error(f"model {model_uri}", ctx.uri, elsewhere(ctx)):
        model = registry.load_pyfunc(model_uri)
    features = tuple(model.metadata.get_input_schema().input_names())
    bar = click.progressbar(length=source.total, label=f"scoring {input_path}", file=sys.stderr)
    tty = sys.stderr.isatty()  # a bar only on a terminal
    started = time.perf_counter()
    score, cluster = model.get_raw_model().score_columns, ctx.params.cluster
    progress = {"on_chunk": lambda done: bar.update(done - bar.pos) if tty else None}
    with bar if tty else contextlib.nullcontext(bar):
        if cluster.engine == "ray":
            from pipeline.engines import ray_cluster

            with ray_cluster(cluster) as workers:
                args = (score, features, source, output_path, batch_rows, keep, workers)
                n = batch_scoring.score_on_ray(*args, **progress)
        else:
            n = batch_scoring.score_file(score, features, source, output_path, batch_rows, keep, **progress)
    seconds = time.perf_counter() - started
    where = f" on Ray ({workers} tasks at a time)" if cluster.engine == "ray" else ""
    click.echo(
        f"scored {n} rows with {model_uri} -> {output_path}{where} in {seconds:.2f} s ({n / seconds:,.0f} rows/s)"
    )
