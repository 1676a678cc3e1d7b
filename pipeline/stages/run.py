"""run: every stage in order in this process (what `mlflow run .` calls)."""

from __future__ import annotations

from pipeline.stages import Context, Paths, evaluate, prepare, register, train


def execute(ctx: Context, paths: Paths) -> None:
    """prepare, train, evaluate and register with these paths."""
    prepare.execute(ctx, paths.prepared)
    train.execute(ctx, paths.prepared, paths.model, paths.history, paths.run_info)
    evaluate.execute(ctx, paths.prepared, paths.model, paths.run_info, paths.metrics, paths.plots)
    register.execute(ctx, paths.prepared, paths.model, paths.run_info, paths.metrics, paths.registered)
