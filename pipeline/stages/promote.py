"""promote: a person moves @champion to a version (a rollback included), with who and why recorded."""

from __future__ import annotations

import click

from pipeline.records import elsewhere
from pipeline.store import connection, registry
from pipeline.workspace import Context


def execute(ctx: Context, version: str, reason: str) -> None:
    """Point @champion at `version` of register.model_name and record the move."""
    if not reason.strip():
        raise ValueError("--reason must say why (it is recorded in the alias history)")
    name = ctx.params.register.model_name
    client = connection.connect(ctx.uri)
    try:
        target = registry.model_version(client, name, version)
    except ValueError as exc:
        raise ValueError(f"{exc} in the store {ctx.uri}{elsewhere(ctx)}") from None
    evidence = {"manual": True, "run_id": target.run_id}
    with registry.registry_lock(client, ctx.uri, name):  # not between a registration's decision and its move
        before = registry.move_alias(client, ctx.uri, name, registry.CHAMPION, str(target.version), reason, evidence)
    if before == str(target.version):
        click.echo(f"{name} v{target.version} is already @{registry.CHAMPION}; nothing moved")
        return
    click.echo(f"{name} @{registry.CHAMPION}: v{before or '-'} -> v{target.version} (by {registry.user()}: {reason})")
