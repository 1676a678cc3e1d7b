"""The pipeline as one command: every stage in dvc.yaml's order, in this process (`run`, what `mlflow run .` calls)."""

from __future__ import annotations

from pipeline.engines import one_ray
from pipeline.stages import evaluate, prepare, register, train
from pipeline.workspace import Context, Paths


def run(ctx: Context, paths: Paths) -> None:
    """prepare, train, evaluate and register with these paths (on cluster.engine ray, one Ray instance for all)."""
    with one_ray(ctx.params.cluster):
        prepare.execute(ctx, paths.prepared)
        train.execute(ctx, paths.prepared, paths.model, paths.history, paths.run_info)
        evaluate.execute(ctx, paths.prepared, paths.model, paths.run_info, paths.metrics, paths.plots)
        register.execute(ctx, paths.prepared, paths.model, paths.run_info, paths.metrics, paths.registered)
