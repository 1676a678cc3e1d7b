"""evaluate: score BinaryClassifier and scikit-learn's baseline on the same split; metrics, plots and figures."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline import files, interrupts
from pipeline.child import InChild
from pipeline.lineage import FAMILIES
from pipeline.records import mark_recorded, run_tags, splits, training_runs
from pipeline.reporting import comparison_table
from pipeline.store import connection, runs
from pipeline.workspace import Context


def execute(
    ctx: Context, prepared_dir: Path, model_path: Path, run_info_path: Path, metrics_path: Path, plots: Path
) -> None:
    """Both models scored on the same split; metrics to both runs and a JSON file, curves to DVC and MLflow."""
    from pipeline import dataset, figures, scoring

    baseline, cluster = ctx.params.evaluate.baseline, ctx.params.cluster  # ray: each part's rows scored by a task
    with InChild(scoring.compare, prepared_dir, model_path, baseline, cluster, stream=True) as comparing:
        meta = dataset.read_meta(prepared_dir)
        client = connection.connect(ctx.uri)
        parent, model_run = training_runs(ctx, client, run_info_path, model_path)
        train_split, eval_split = splits(meta)
        # scikit-learn fits the baseline in one process, on the CPU
        tags = {**run_tags(ctx, "baseline", meta["sha256"]), "pipeline.device": "cpu", "pipeline.world_size": "1"}
        name = f"{FAMILIES['baseline']} · {runs.run_name(client, parent.run_id)}"
        baseline_run = runs.create_child(client, parent, name, tags)
        both = {"model": model_run, "baseline": baseline_run}
        with connection.running(client, baseline_run, parent):
            dropped = {"dropped_rows": meta.get("dropped_rows", 0)}
            runs.log_params(client, baseline_run.run_id, ctx.params.knobs(), dropped)
            runs.log_datasets(client, baseline_run.run_id, list(dict.fromkeys([train_split, eval_split])))
            scores: list[scoring.Compared] = []

            def record(emitted: list[scoring.Compared]) -> None:
                """The scores, while the child draws each model's own figures: metrics, and the overlaid figures."""
                (scored,) = emitted
                scores.append(scored)
                for family, run in both.items():
                    eval_metrics = {f"eval_{k}": v for k, v in scored.metrics[family].items()}
                    runs.log_metrics(client, run.run_id, eval_metrics, split=eval_split)
                    runs.set_tags(client, run.run_id, {"pipeline.evaluated_on": meta["evaluated_on"]})
                runs.log_metrics(client, baseline_run.run_id, scored.baseline_fit, split=train_split)
                overlaid = figures.render(scored.curves, scored.by_name(), scored.rows)
                runs.log_files(client, parent.run_id, overlaid)

            own = comparing.result(record)
            (scored,) = scores
            for family, run in both.items():
                runs.log_files(client, run.run_id, own[family])
            with interrupts.deferred():  # written last and together: a failed stage leaves the old ones
                files.write_json(metrics_path, scored.metrics)
                for table, rows in figures.tables(scored.curves).items():
                    files.write_text(plots / f"{table}.json", json.dumps(rows, indent=1) + "\n")
                mark_recorded(ctx, "evaluate")
    click.echo(comparison_table(scored.metrics))
    if cluster.engine == "ray":
        parts = len(meta["parts"])
        click.echo(f"{scored.rows} evaluation rows scored on Ray, a task per part ({parts} part{'s' * (parts > 1)})")
