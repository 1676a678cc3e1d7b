"""Tracking overhead: the train loop with every epoch's cost and accuracy persisted to MLflow vs the bare loop.

All in one run, on the tutorial data (1000 epochs), against a fresh sqlite store in a temp dir:
- bare: the tutorial's loop, warmed up, in this process;
- sequential: our train() and then log_history() in this process (what a straightforward design does);
- stage: as `python -m pipeline train` runs it: a child process trains and sends each chunk of history
  at the log lines, this process persists it meanwhile; timed from the child's first epoch to the
  last metric committed.
Prints median times and, last, `ratio: X` (stage / bare; goal <= 1.5).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tutorial import bare_loop

from pipeline import dataset, preparation
from pipeline.child import InChild
from pipeline.devices import Rank
from pipeline.fitting import fit
from pipeline.params import load_params
from pipeline.sources import open_source
from pipeline.stages.train import log_chunks
from pipeline.store import connection, runs
from pipeline.training import train

REPO = Path(__file__).resolve().parents[1]
REPEATS = 15
STAGE_REPEATS = 5  # each starts a process (about 1.2 s of imports, not timed)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send fd 1 (the child's training lines too) to /dev/null."""
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def timed(fn: Callable[[], float | None], repeats: int) -> float:
    """Median seconds; fn may return its own measurement instead of being timed from outside."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        own = fn()
        samples.append(own if own is not None else time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    params = load_params(REPO / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        source = open_source(str(REPO / "data/raw/tutorial.csv"), "y", None, 0, 0, 1, None)
        preparation.prepare_dir(prepared, source, 0.0, seed=1, standardize=False, missing="error")
        table = dataset.load_prepared(prepared)
        x_train, y_train = torch.from_numpy(table.X_train), torch.from_numpy(table.y_train).reshape(-1, 1)
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        client = connection.connect(uri)
        exp_id = runs.experiment_id(client, "benchmark", uri)

        def bare() -> None:
            bare_loop(x_train, y_train, params.train.epochs, lambda line: None)  # formatted, not written

        def sequential() -> None:
            run_id = client.create_run(exp_id).info.run_id
            result = train(table.X_train, table.y_train, params.train, torch.device("cpu"), lambda _: None)
            runs.log_history(client, run_id, {"cost": result.cost, "accuracy": result.accuracy})

        def stage() -> float:
            run_id = client.create_run(exp_id).info.run_id
            with quiet_stdout():
                fitted = InChild(fit, prepared, params.train, Rank(0, 1, 0), stream=True).result(
                    lambda chunks: log_chunks(client, run_id, chunks)
                )
            persisted = time.monotonic()
            assert len(client.get_metric_history(run_id, "accuracy")) == params.train.epochs + 1
            return persisted - fitted.started

        bare(), sequential(), stage()  # warm-up: first-call costs (allocator, ORM mappers)
        t_bare = timed(bare, REPEATS)
        t_sequential = timed(sequential, REPEATS)
        t_stage = timed(stage, STAGE_REPEATS)
    print(f"epochs: {params.train.epochs}, metrics persisted per run: {2 * (params.train.epochs + 1)}")
    rows = [
        ("bare tutorial loop, no tracking", t_bare),
        ("sequential: train(), then log_history()", t_sequential),
        ("stage: child trains, chunks persisted meanwhile", t_stage),
    ]
    for label, seconds in rows:
        print(f"{label:<50} {seconds * 1000:7.1f} ms  {seconds / t_bare:5.2f}x")
    print(f"ratio: {t_stage / t_bare:.2f}")


if __name__ == "__main__":
    main()
