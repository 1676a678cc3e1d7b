"""Tracking overhead: our train loop with every epoch persisted to MLflow vs the tutorial's bare loop.

Both run in this process, warmed up, on the tutorial data (1000 epochs), against a fresh sqlite
store in a temp dir. Prints the median times and, last, `ratio: X` (ours / bare; goal <= 1.5).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn, optim

from pipeline import tracking
from pipeline.data import read_csv
from pipeline.params import load_params
from pipeline.train import train

REPO = Path(__file__).resolve().parents[1]
REPEATS = 7


def bare_loop(x_train: torch.Tensor, y_train: torch.Tensor, epochs: int) -> None:
    """The tutorial's loop, verbatim but for the print (formatted, not written)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 1), nn.Sigmoid())
    optimizer = optim.SGD(model.parameters(), lr=1)
    for epoch in range(epochs + 1):
        hypothesis = model(x_train)
        cost = F.binary_cross_entropy(hypothesis, y_train)
        optimizer.zero_grad()
        cost.backward()
        optimizer.step()
        if epoch % 100 == 0:
            prediction = hypothesis >= torch.FloatTensor([0.5])
            correct_prediction = prediction.float() == y_train
            accuracy = correct_prediction.sum().item() / len(correct_prediction)
            log = "Epoch {:4d}/{} Cost: {:.6f} Accuracy {:2.2f}%".format(  # noqa: UP032 - the tutorial's line
                epoch, epochs, cost.item(), accuracy * 100
            )
            assert log


def main() -> None:
    params = load_params(REPO / "params.yaml")
    table = read_csv(REPO / "data/raw/tutorial.csv", "y")
    x_train, y_train = torch.from_numpy(table.X), torch.from_numpy(table.y).reshape(-1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        client = tracking.client(uri)
        exp_id = tracking.experiment_id(client, "benchmark", uri)

        def ours() -> None:
            run_id = client.create_run(exp_id).info.run_id
            result = train(table.X, table.y, params.train, torch.device("cpu"), lambda _: None)
            tracking.log_history(client, run_id, {"cost": result.cost, "accuracy": result.accuracy})

        def bare() -> None:
            bare_loop(x_train, y_train, params.train.epochs)

        timings: dict[str, list[float]] = {"bare": [], "ours": []}
        bare(), ours()  # warm-up: first-call costs (allocator, ORM mappers) are not the loop's
        for _ in range(REPEATS):
            for name, fn in (("bare", bare), ("ours", ours)):
                start = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - start)
        n_metrics = len(client.get_metric_history(client.search_runs([exp_id])[0].info.run_id, "cost"))
    t_bare, t_ours = statistics.median(timings["bare"]), statistics.median(timings["ours"])
    print(f"epochs: {params.train.epochs}, metrics persisted per run: {2 * n_metrics}, repeats: {REPEATS}")
    print(f"bare tutorial loop (no tracking):            {t_bare * 1000:8.1f} ms")
    print(f"ours (loop + cost/accuracy every epoch to MLflow): {t_ours * 1000:8.1f} ms")
    print(f"ratio: {t_ours / t_bare:.2f}")


if __name__ == "__main__":
    main()
