"""train: fit BinaryClassifier in a child process while this one records the execution's runs in MLflow."""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from pipeline import files, interrupts, store
from pipeline.child import InChild
from pipeline.params import TrainParams
from pipeline.stages import FAMILIES, Context, splits
from pipeline.stages.identity import run_tags
from pipeline.stages.records import mark_recorded


@dataclass(frozen=True)
class Fitted:
    """What the training process sends back: plain bytes and arrays, so this one needs no torch."""

    checkpoint: bytes
    cost: np.ndarray
    accuracy: np.ndarray
    device: str
    weights: str
    started: float  # time.monotonic() when the training loop began


@dataclass(frozen=True)
class HistoryChunk:
    """Per-epoch cost and accuracy from `first` on, sent while training goes on."""

    first: int
    cost: np.ndarray
    accuracy: np.ndarray


@dataclass(frozen=True)
class Rank:
    """Where this process sits in a `torchrun` job (from its environment); rank 0 of 1 otherwise."""

    rank: int
    world: int
    local: int

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Rank:
        """Read RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them."""
        rank = int(env.get("RANK", "0"))
        return cls(rank, int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", str(rank))))


def _print_now(line: str) -> None:
    print(line, flush=True)  # from a child process: flushed, so lines interleave in order


def fit(emit: Callable[[HistoryChunk], None], data_dir: Path, params: TrainParams, rank: Rank) -> Fitted:
    """Load this rank's rows of the prepared data, train on the chosen device, serialise (a child process)."""
    from pipeline import data, training
    from pipeline.model import ModelConfig, checkpoint_bytes

    training.warm_up(params)
    prepared = data.load_prepared(data_dir)
    config = ModelConfig(len(prepared.features), prepared.features, params.threshold, prepared.mean, prepared.scale)
    device = training.resolve_device(params.device)
    X, y, n_total = prepared.X_train, prepared.y_train, prepared.y_train.shape[0]
    if rank.world > 1:
        import torch
        import torch.distributed as dist

        lo, hi = rank.rank * n_total // rank.world, (rank.rank + 1) * n_total // rank.world
        X, y = X[lo:hi], y[lo:hi]  # slices of the memory map: this rank reads only its own rows
        if device.type == "cuda":
            gpus = torch.cuda.device_count()
            if rank.local >= gpus:  # NCCL refuses two ranks on one GPU, and only after a long wait
                raise training.DeviceError(
                    f"train.device: torchrun started local rank {rank.local}, but this machine has {gpus} CUDA "
                    f"device(s): one process per GPU (--nproc_per_node={gpus})"
                )
            device = torch.device("cuda", rank.local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # The imports' objects (torch's, hundreds of thousands) never become garbage, but every full collection
    # scans them all (about 60 ms, once in ~500 tutorial epochs): freeze them out of its way.
    gc.freeze()
    started = time.monotonic()  # system-wide clock: comparable with the parent's
    try:
        result = training.train(
            X,  # as prepared (standardised there if asked): the model's config carries the statistics for raw rows
            y,
            params,
            device,
            _print_now if rank.rank == 0 else (lambda line: None),
            lambda first, cost, accuracy: emit(HistoryChunk(first, cost, accuracy)),
            shard=training.Shard(rank.rank, rank.world, n_total),
            standardized=prepared.mean is not None,
        )
    finally:
        if rank.world > 1:
            dist.destroy_process_group()
    w, b = result.model.linear.weight.tolist(), result.model.linear.bias.tolist()
    weights = f"W = {[[round(v, 4) for v in row] for row in w]}, b = {[round(v, 4) for v in b]}"
    checkpoint = checkpoint_bytes(result.model, config)
    return Fitted(checkpoint, result.cost, result.accuracy, result.device, weights, started)


def log_chunk(client: Any, run_id: str, chunk: HistoryChunk) -> None:
    """Persist one chunk of training history (step = epoch)."""
    store.log_history(client, run_id, {"cost": chunk.cost, "accuracy": chunk.accuracy}, chunk.first)


def execute(ctx: Context, data_dir: Path, model_path: Path, history_path: Path, run_info_path: Path) -> None:
    """Open the execution's parent run and the model run, train, and write the outputs once all succeeded."""
    from pipeline import data

    p = ctx.params
    rank = Rank.from_env(ctx.env)
    if rank.rank != 0:  # under torchrun: train this rank's shard in step with rank 0, which records everything
        fit(lambda chunk: None, data_dir, p.train, rank)
        return
    with InChild(fit, data_dir, p.train, rank, stream=True) as fitting:
        meta = data.read_meta(data_dir)
        client = store.client(ctx.uri)
        world = {"pipeline.world_size": str(rank.world)}
        parent, name, warning = store.open_parent(
            client, p.mlflow.experiment, ctx.uri, ctx.lineage.label(),
            {**run_tags(ctx, "execution", meta["sha256"]), **world}, ctx.env.get("MLFLOW_RUN_ID"),
        )  # fmt: skip
        if warning:
            click.echo(f"warning: {warning}", err=True)
        tags = {**run_tags(ctx, "model", meta["sha256"]), **world}
        run = store.create_child(client, parent, f"{FAMILIES['model']} · {name}", tags)
        with store.running(client, run, parent):
            for run_id in (parent.run_id, run.run_id):
                store.log_params(client, run_id, p.knobs())
                store.log_datasets(client, run_id, list(dict.fromkeys(splits(meta))))
                store.log_metrics(client, run_id, {"dropped_rows": meta.get("dropped_rows", 0)})  # prepare.missing
            fitted = fitting.result(lambda chunk: log_chunk(client, run.run_id, chunk))
            for run_id in (parent.run_id, run.run_id):  # the device `auto` resolved to
                store.set_tags(client, run_id, {"pipeline.device": fitted.device})
            sha = hashlib.sha256(fitted.checkpoint).hexdigest()
            store.set_tags(client, run.run_id, {store.CHECKPOINT_TAG: sha})  # how later stages find this run
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
