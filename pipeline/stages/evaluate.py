"""evaluate: score BinaryClassifier and scikit-learn's baseline on the same split; metrics, plots and figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from pipeline import files, interrupts, store
from pipeline.child import InChild
from pipeline.params import METRICS, BaselineParams
from pipeline.stages import FAMILIES, Context, splits
from pipeline.stages.identity import run_tags
from pipeline.stages.records import mark_recorded, training_runs


@dataclass(frozen=True)
class Scored:
    """Both models' metrics and curves on the evaluation split, and the baseline's fit on the train split."""

    metrics: dict[str, dict[str, float]]  # {"model": {...}, "baseline": {...}}
    curves: dict[str, Any]  # family name -> metrics.Curves
    baseline_fit: dict[str, float]  # the baseline's cost and accuracy on its training rows
    rows: int


def score(data_dir: Path, model_path: Path, params: BaselineParams) -> Scored:
    """Both models scored on the evaluation split (a child process, where torch and scikit-learn load).

    The baseline fits on the prepared train split itself (standardised by prepare where asked; scikit-learn
    has no scaling of its own): no scaled copy. scikit-learn 1.9 fits float32 as it is (lbfgs included: no
    float64 copy).
    """
    from concurrent.futures import ThreadPoolExecutor

    import sklearn.linear_model  # noqa: F401  before torch: see below

    from pipeline import data, metrics

    prepared = data.load_prepared(data_dir)
    y = prepared.y_test

    def checked_model() -> tuple[Any, Any]:
        from pipeline.model import load_checkpoint

        model, config = load_checkpoint(model_path)
        if config.features != prepared.features:
            raise ValueError(f"{model_path}: model features {config.features} != prepared {prepared.features}")
        return model, config

    def ours() -> tuple[dict[str, float], Any]:
        from pipeline.model import score_prepared

        model, config = loaded.result()
        return metrics.evaluation(y, score_prepared(model, config, prepared), config.threshold)

    # BinaryClassifier on a thread while scikit-learn fits, torch's import (1.5 s) included, so that it no
    # longer delays the fit: the fit's BLAS and numpy's sorts and sums release the GIL. Evaluate of 10M x 100:
    # median 13.2 -> 11.9 s (four runs each, interleaved); with the baseline's train cost on the thread beside
    # its evaluation, 12.9 -> 11.8 s. A model for other features is refused after the fit.
    with ThreadPoolExecutor(1) as pool:
        loaded, scored = pool.submit(checked_model), pool.submit(ours)
        baseline = metrics.fit_baseline(prepared.X_train, prepared.y_train, params)
        threshold = loaded.result()[1].threshold
        fitted = pool.submit(  # the baseline's cost on its train rows beside its evaluation: a core each
            lambda: metrics.cost_and_accuracy(
                prepared.y_train, metrics.baseline_proba(baseline, prepared.X_train), threshold
            )
        )
        theirs = metrics.evaluation(y, metrics.baseline_proba(baseline, prepared.X_test), threshold)
        cost, accuracy = fitted.result()
        results = {"model": scored.result(), "baseline": theirs}
    return Scored(
        {k: metrics.recorded(r[0]) for k, r in results.items()},
        {FAMILIES[k]: r[1] for k, r in results.items()},
        {"cost": cost, "accuracy": accuracy},
        int(y.shape[0]),
    )


def execute(
    ctx: Context, data_dir: Path, model_path: Path, run_info_path: Path, metrics_path: Path, plots: Path
) -> None:
    """Both models scored on the same split; metrics to both runs and a JSON file, curves to DVC and MLflow."""
    from pipeline import data, figures

    with InChild(score, data_dir, model_path, ctx.params.evaluate.baseline) as scoring:
        meta = data.read_meta(data_dir)
        client = store.client(ctx.uri)
        parent, model_run = training_runs(ctx, client, run_info_path, model_path)
        train_split, eval_split = splits(meta)
        # scikit-learn fits the baseline in one process, on the CPU
        tags = {**run_tags(ctx, "baseline", meta["sha256"]), "pipeline.device": "cpu", "pipeline.world_size": "1"}
        name = f"{FAMILIES['baseline']} · {store.run_name(client, parent.run_id)}"
        baseline_run = store.create_child(client, parent, name, tags)
        runs = {"model": model_run, "baseline": baseline_run}
        with store.running(client, baseline_run, parent):
            store.log_params(client, baseline_run.run_id, ctx.params.knobs())
            store.log_datasets(client, baseline_run.run_id, list(dict.fromkeys([train_split, eval_split])))
            store.log_metrics(client, baseline_run.run_id, {"dropped_rows": meta.get("dropped_rows", 0)})
            figures.warm_up()  # while the child still loads torch and scikit-learn
            scored = scoring.result()
            for family, run in runs.items():
                eval_metrics = {f"eval_{k}": v for k, v in scored.metrics[family].items()}
                store.log_metrics(client, run.run_id, eval_metrics, split=eval_split)
                store.set_tags(client, run.run_id, {"pipeline.evaluated_on": meta["evaluated_on"]})
            store.log_metrics(client, baseline_run.run_id, scored.baseline_fit, split=train_split)
            by_name = {FAMILIES[k]: v for k, v in scored.metrics.items()}
            store.log_files(client, parent.run_id, figures.render(scored.curves, by_name, scored.rows))
            for family, run in runs.items():  # each child's own curves: Compare shows them side by side
                name = FAMILIES[family]
                store.log_files(client, run.run_id, figures.render({name: scored.curves[name]}, by_name, scored.rows))
            with interrupts.deferred():  # written last and together: a failed stage leaves the old ones
                files.write_json(metrics_path, scored.metrics)
                for table, rows in figures.tables(scored.curves).items():
                    files.write_text(plots / f"{table}.json", json.dumps(rows, indent=1) + "\n")
                mark_recorded(ctx, "evaluate")
    click.echo(comparison_table(scored.metrics))


def comparison_table(results: dict[str, dict[str, float]]) -> str:
    """BinaryClassifier against the baseline, one metric per line."""
    lines = [f"{'metric':<10} {FAMILIES['model']:>18} {FAMILIES['baseline']:>20}"]
    for key in METRICS:
        lines.append(f"{key:<10} {results['model'][key]:>18.6f} {results['baseline'][key]:>20.6f}")
    return "\n".join(lines)
