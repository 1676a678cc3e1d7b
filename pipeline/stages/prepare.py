"""prepare: stream the source table, validate it, split it and write the prepared arrays atomically."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.workspace import Context, unseen_by_dvc


def execute(ctx: Context, prepared_dir: Path) -> dict:
    """Read prepare.source, validate, split, standardise and write the prepared dataset; returns its meta."""
    from pipeline import engines, preparation
    from pipeline.sources import BUILTIN_SOURCES, SYNTHETIC, open_source

    p, cluster = ctx.params.prepare, ctx.params.cluster
    n, d = p.synthetic.n_samples, p.synthetic.n_features
    source = open_source(p.source, p.label, p.features, n, d, p.seed, p.positive)
    stage = ctx.env.get("DVC_STAGE")
    if stage and p.source not in (SYNTHETIC, *BUILTIN_SOURCES):  # a table's files, not the params alone
        unseen = unseen_by_dvc(ctx, stage, [s.origin for s in source.parts or (source,)])
        if unseen:
            more = f" and {len(unseen) - 1} more of its files" if len(unseen) > 1 else ""
            click.echo(
                f"Warning: prepare.source {p.source}: {unseen[0]}{more} lies outside every dep of stage {stage} "
                f"in dvc.yaml, so DVC will not rerun the stage when the file changes: put the data under "
                f"{ctx.paths.raw.relative_to(ctx.root)}, or add it to the stage's deps",
                err=True,
            )
    args = (prepared_dir, source, p.test_size, p.seed, p.standardize, p.missing)
    if cluster.engine == "ray":  # a task per file of the source: the same parts and manifest, bit for bit
        with engines.ray_cluster(cluster) as workers:
            meta = preparation.prepare_dir(*args, engines.on_ray(workers))
    else:
        meta = preparation.prepare_dir(*args)
    if meta["dropped_rows"]:
        click.echo(f"dropped {meta['dropped_rows']} rows with a missing feature or label (prepare.missing: drop)")
    split = (
        f"{meta['n_train']} train rows, evaluated on the same rows (prepare.test_size: 0)"
        if meta["evaluated_on"] == "train"
        else f"{meta['n_train']} train and {meta['n_test']} test rows"
    )
    parts = f" in {len(meta['parts'])} part{'s' if len(meta['parts']) > 1 else ''}"
    parts += f" on Ray ({workers} tasks at a time)" if cluster.engine == "ray" else ""
    click.echo(
        f"prepared {split}, {len(meta['features'])} features from {source.origin} -> {prepared_dir}{parts} "
        f"(sha256 {meta['sha256'][:12]})"
    )
    return meta
