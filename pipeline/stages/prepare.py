"""prepare: stream the source table, validate it, split it and write the prepared arrays atomically."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.workspace import Context


def execute(ctx: Context, prepared_dir: Path) -> dict:
    """Read prepare.source, validate, split, standardise and write the prepared dataset; returns its meta."""
    from pipeline import preparation
    from pipeline.sources import open_source

    p = ctx.params.prepare
    n, d = p.synthetic.n_samples, p.synthetic.n_features
    source = open_source(p.source, p.label, p.features, n, d, p.seed, p.positive)
    meta = preparation.prepare_dir(prepared_dir, source, p.test_size, p.seed, p.standardize, p.missing)
    if meta["dropped_rows"]:
        click.echo(f"dropped {meta['dropped_rows']} rows with a missing feature or label (prepare.missing: drop)")
    split = (
        f"{meta['n_train']} train rows, evaluated on the same rows (prepare.test_size: 0)"
        if meta["evaluated_on"] == "train"
        else f"{meta['n_train']} train and {meta['n_test']} test rows"
    )
    click.echo(
        f"prepared {split}, {len(meta['features'])} features from {source.origin} -> {prepared_dir} "
        f"(sha256 {meta['sha256'][:12]})"
    )
    return meta
