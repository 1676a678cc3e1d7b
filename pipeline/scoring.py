"""Scoring on prepared rows: a checkpoint or a registered version, and both models side by side (evaluate's)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.lineage import FAMILIES
from pipeline.store import registry

if TYPE_CHECKING:
    from pipeline.dataset import Prepared
    from pipeline.params import BaselineParams, ClusterParams


class FeatureMismatch(ValueError):
    """A model that takes other features than the prepared data's."""


@dataclass(frozen=True)
class Scores:
    """A model's probabilities on the evaluation rows, and the threshold it labels them with."""

    proba: np.ndarray
    threshold: float


def score_checkpoint(path: Path, prepared: Prepared) -> Scores:
    """A checkpoint's probabilities on the prepared evaluation rows, as it would give them on the raw rows.

    The one place that checks a model's features against the data's: FeatureMismatch when they differ.
    """
    from pipeline.model import load_checkpoint, score_prepared

    model, config = load_checkpoint(path)
    if config.features != prepared.features:
        raise FeatureMismatch(f"{path}: model features {config.features} != prepared {prepared.features}")
    return Scores(score_prepared(model, config, prepared), config.threshold)


def score_version(client: Any, name: str, version: str, prepared: Prepared) -> Scores:
    """score_checkpoint of a registered version's checkpoint (downloaded from the store)."""
    with tempfile.TemporaryDirectory() as tmp:
        return score_checkpoint(registry.checkpoint_path(client, name, version, Path(tmp)), prepared)


@dataclass(frozen=True)
class Compared:
    """Both models' metrics and curves on the evaluation split, and the baseline's fit on the train split."""

    metrics: dict[str, dict[str, float]]  # {"model": {...}, "baseline": {...}}
    curves: dict[str, Any]  # family name -> metrics.Curves
    baseline_fit: dict[str, float]  # the baseline's cost and accuracy on its training rows
    rows: int

    def by_name(self) -> dict[str, dict[str, float]]:
        """The metrics by model name, as figures label them."""
        return {FAMILIES[k]: v for k, v in self.metrics.items()}


def compare(
    emit: Callable[[Compared], None],
    prepared_dir: Path,
    model_path: Path,
    params: BaselineParams,
    cluster: ClusterParams,
) -> dict[str, dict[str, bytes]]:
    """BinaryClassifier and scikit-learn's baseline scored on the evaluation split (evaluate's child process).

    Emits the scores as soon as they are known, then draws each model's own figures and returns them by family
    ("model", "baseline"): the parent draws the overlaid ones meanwhile, on the other core.

    The baseline fits on the prepared train split itself (standardised by prepare where asked; scikit-learn
    has no scaling of its own): no scaled copy. scikit-learn fits float32 as it is (lbfgs included: no
    float64 copy). With cluster.engine ray, the rows are scored part by part in Ray tasks: the same probabilities.
    """
    from pipeline import dataset, figures, metrics

    prepared = dataset.load_prepared(prepared_dir)
    if cluster.engine == "ray":
        results, (cost, accuracy) = _evaluated_on_ray(prepared, model_path, params, cluster)
    else:
        results, (cost, accuracy) = _evaluated_here(prepared, model_path, params)
    compared = Compared(
        {k: metrics.recorded(r[0]) for k, r in results.items()},
        {FAMILIES[k]: r[1] for k, r in results.items()},
        {"cost": cost, "accuracy": accuracy},
        int(prepared.y_test.shape[0]),
    )
    emit(compared)
    by_name = compared.by_name()  # each run's own curves: the UI's Compare shows them side by side
    return {f: figures.render({n: compared.curves[n]}, by_name, compared.rows) for f, n in FAMILIES.items()}


Evaluated = tuple[dict[str, tuple[dict[str, float], Any]], tuple[float, float]]  # results by family; baseline fit


def _evaluated_here(prepared: Prepared, model_path: Path, params: BaselineParams) -> Evaluated:
    """Both models' metrics and curves, and the baseline's cost and accuracy on its train rows, in this process."""
    from concurrent.futures import ThreadPoolExecutor

    import sklearn.linear_model  # noqa: F401  before torch: see below

    from pipeline import metrics

    y = prepared.y_test

    def ours() -> tuple[Scores, tuple[dict[str, float], Any]]:
        scores = score_checkpoint(model_path, prepared)
        return scores, metrics.evaluation(y, scores.proba, scores.threshold)

    # BinaryClassifier on a thread while scikit-learn fits, torch's import included, so that it no longer
    # delays the fit: the fit's BLAS and numpy's sorts and sums release the GIL. A model for other features is
    # refused after the fit.
    with ThreadPoolExecutor(1) as pool:
        scored = pool.submit(ours)
        baseline = metrics.fit_baseline(prepared.X_train, prepared.y_train, params)
        test_proba = metrics.baseline_proba(baseline, prepared.X_test)
        model_scores, model_results = scored.result()  # its threshold labels the baseline's rows too
        threshold = model_scores.threshold
        fitted = pool.submit(  # the baseline's cost on its train rows beside its evaluation: a core each
            lambda: metrics.cost_and_accuracy(
                prepared.y_train, metrics.baseline_proba(baseline, prepared.X_train), threshold
            )
        )
        theirs = metrics.evaluation(y, test_proba, threshold)
        return {"model": model_results, "baseline": theirs}, fitted.result()


def _evaluated_on_ray(
    prepared: Prepared, model_path: Path, params: BaselineParams, cluster: ClusterParams
) -> Evaluated:
    """_evaluated_here's results with the baseline fitted here and each part's rows scored by a Ray task.

    A row's probability does not depend on the rows scored with it: the same probabilities, and so the same
    metrics, as the local engine's.
    """
    from pipeline import engines, metrics

    baseline = metrics.fit_baseline(prepared.X_train, prepared.y_train, params)
    with engines.ray_cluster(cluster) as workers:
        each = engines.on_ray(workers)
        where = (prepared.directory.resolve(), model_path.resolve())  # the same for every worker
        parts = list(each(_score_part, range(len(prepared.meta["parts"])), *where, baseline))
    threshold = parts[0][0].threshold
    model, test_proba, train_proba = (
        np.concatenate([scores.proba for scores, _, _ in parts]),
        np.concatenate([on_test for _, on_test, _ in parts]),
        np.concatenate([on_train for _, _, on_train in parts]),
    )
    y = prepared.y_test
    results = {
        "model": metrics.evaluation(y, model, threshold),
        "baseline": metrics.evaluation(y, test_proba, threshold),
    }
    return results, metrics.cost_and_accuracy(prepared.y_train, train_proba, threshold)


def _score_part(directory: Path, model_path: Path, baseline: Any, index: int) -> tuple[Scores, np.ndarray, np.ndarray]:
    """A Ray task: one part's rows scored by both models (the baseline on its test and its train rows)."""
    from pipeline import dataset, metrics

    part = dataset.load_prepared(directory).only(index)
    on_test, on_train = (metrics.baseline_proba(baseline, X) for X in (part.X_test, part.X_train))
    return score_checkpoint(model_path, part), on_test, on_train
