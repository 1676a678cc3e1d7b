"""train: fit BinaryClassifier in a child process while this one records the execution's runs in MLflow."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import click
import numpy as np

from pipeline import files, interrupts
from pipeline.child import InChild
from pipeline.devices import Rank
from pipeline.fitting import HistoryChunk, fit
from pipeline.lineage import FAMILIES
from pipeline.records import mark_recorded, run_tags, splits
from pipeline.store import connection, runs
from pipeline.workspace import Context


def log_chunks(client: Any, run_id: str, chunks: list[HistoryChunk]) -> None:
    """Persist consecutive chunks of training history (step = epoch) in as few batches as they fill."""
    series = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in ("cost", "accuracy")}
    runs.log_history(client, run_id, series, chunks[0].first)


def execute(ctx: Context, prepared_dir: Path, model_path: Path, history_path: Path, run_info_path: Path) -> None:
    """Open the execution's parent run and the model run, train, and write the outputs once all succeeded."""
    from pipeline import dataset

    p = ctx.params
    rank = Rank.from_env(ctx.env)
    if rank.rank != 0:  # under torchrun: train this rank's shard in step with rank 0, which records everything
        fit(lambda chunk: None, prepared_dir, p.train, rank)
        return
    with InChild(fit, prepared_dir, p.train, rank, stream=True) as fitting:
        meta = dataset.read_meta(prepared_dir)
        client = connection.connect(ctx.uri)
        world = {"pipeline.world_size": str(rank.world)}
        parent, name, warning = runs.open_parent(
            client, p.mlflow.experiment, ctx.uri, ctx.lineage.label(),
            {**run_tags(ctx, "execution", meta["sha256"]), **world}, ctx.env.get("MLFLOW_RUN_ID"),
        )  # fmt: skip
        if warning:
            click.echo(f"warning: {warning}", err=True)
        tags = {**run_tags(ctx, "model", meta["sha256"]), **world}
        run = runs.create_child(client, parent, f"{FAMILIES['model']} · {name}", tags)
        with connection.running(client, run, parent):
            for run_id in (parent.run_id, run.run_id):
                runs.log_params(client, run_id, p.knobs(), {"dropped_rows": meta.get("dropped_rows", 0)})
                runs.log_datasets(client, run_id, list(dict.fromkeys(splits(meta))))
            fitted = fitting.result(lambda chunks: log_chunks(client, run.run_id, chunks))
            sha = hashlib.sha256(fitted.checkpoint).hexdigest()
            runs.set_tags(client, parent.run_id, {"pipeline.device": fitted.device})  # what `auto` resolved to
            # The checkpoint's hash: how later stages find this run.
            runs.set_tags(client, run.run_id, {"pipeline.device": fitted.device, runs.CHECKPOINT_TAG: sha})
            pairs = zip(fitted.cost.tolist(), fitted.accuracy.tolist(), strict=True)
            rows = "".join(f"{i},{c!r},{a!r}\n" for i, (c, a) in enumerate(pairs))
            info = {"store": ctx.store_id, "checkpoint_sha256": sha, "experiment_id": run.experiment_id,
                    "parent_run_id": parent.run_id, "parent_owned": parent.owned}  # fmt: skip
            with interrupts.deferred():  # the three outputs together: never a new model beside an old run id
                files.write_bytes(model_path, fitted.checkpoint)
                files.write_text(history_path, "epoch,cost,accuracy\n" + rows)
                files.write_json(run_info_path, {**info, "run_id": run.run_id, "run_name": name})
                mark_recorded(ctx, "train")
    click.echo(fitted.weights)
    click.echo(f"MLflow run {run.run_id} in {name!r} ({ctx.uri})")
