"""train's computation, in its own process: this rank's rows of the prepared data, trained and serialised."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.devices import Rank
from pipeline.params import TrainParams


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


def _print_now(line: str) -> None:
    print(line, flush=True)  # from a child process: flushed, so lines interleave in order


def fit(emit: Callable[[HistoryChunk], None], prepared_dir: Path, params: TrainParams, rank: Rank) -> Fitted:
    """Load this rank's rows of the prepared data, train on the chosen device, serialise (a child process)."""
    from pipeline import dataset, training
    from pipeline.devices import Shard, placed, process_group, resolve_device
    from pipeline.model import ModelConfig, checkpoint_bytes

    training.warm_up(params)
    prepared = dataset.load_prepared(prepared_dir)
    n_total = prepared.meta["n_train"]
    prepared = replace(prepared, train_rows=rank.rows(n_total))  # this rank reads only the parts with its rows
    config = ModelConfig(len(prepared.features), prepared.features, params.threshold, prepared.mean, prepared.scale)
    # The imports' objects (torch's, hundreds of thousands) never become garbage, but every full collection
    # scans them all, once in a few hundred tutorial epochs: freeze them out of its way.
    gc.freeze()
    with process_group(rank, resolve_device(params.device)) as device:
        started = time.monotonic()  # system-wide clock: comparable with the parent's
        # On the CPU training reads the memory maps themselves; a device gets its copy a block at a time.
        on_host = device.type == "cpu"
        result = training.train(
            # as prepared (standardised there if asked): the config has the raw statistics
            prepared.X_train if on_host else placed(prepared, "X_train", device),
            prepared.y_train if on_host else placed(prepared, "y_train", device),
            params,
            device,
            _print_now if rank.rank == 0 else (lambda line: None),
            lambda first, cost, accuracy: emit(HistoryChunk(first, cost, accuracy)),
            shard=Shard(rank.rank, rank.world, n_total),
            standardized=prepared.mean is not None,
        )
    w, b = result.model.linear.weight.tolist(), result.model.linear.bias.tolist()
    weights = f"W = {[[round(v, 4) for v in row] for row in w]}, b = {[round(v, 4) for v in b]}"
    checkpoint = checkpoint_bytes(result.model, config)
    return Fitted(checkpoint, result.cost, result.accuracy, result.device, weights, started)
