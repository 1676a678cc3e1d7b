"""promote: a person moves @champion to a version (a rollback included), with who and why recorded."""

from __future__ import annotations

import click

from pipeline import store
from pipeline.stages import Context
from pipeline.stages.records import elsewhere


def execute(ctx: Context, version: str, reason: str) -> None:
    """Point @champion at `version` of register.model_name and record the move."""
    if not reason.strip():
        raise ValueError("--reason must say why (it is recorded in the alias history)")
    name = ctx.params.register.model_name
    client = store.client(ctx.uri)
    try:
        target = store.model_version(client, name, version)
    except ValueError as exc:
        raise ValueError(f"{exc} in the store {ctx.uri}{elsewhere(ctx)}") from None
    evidence = {"manual": True, "run_id": target.run_id}
    with store.registry_lock(client, ctx.uri, name):  # not between a registration's decision and its move
        before = store.move_alias(client, ctx.uri, name, store.CHAMPION, str(target.version), reason, evidence)
    if before == str(target.version):
        click.echo(f"{name} v{target.version} is already @{store.CHAMPION}; nothing moved")
        return
    click.echo(f"{name} @{store.CHAMPION}: v{before or '-'} -> v{target.version} (by {store.user()}: {reason})")
