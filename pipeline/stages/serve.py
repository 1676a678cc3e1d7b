"""serve: `mlflow models serve` on the champion, after saying which model it is and how to call it."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click

from pipeline.records import elsewhere
from pipeline.store import connection, registry
from pipeline.workspace import Context


def execute(
    ctx: Context, model_uri: str, host: str, port: int, workers: int, device: str | None, max_request_mb: float | None
) -> None:
    """Describe the model, then replace this process with `mlflow models serve` (this store, this venv's uvicorn)."""
    client = connection.connect(ctx.uri)
    with connection.absent_as_error(f"model {model_uri}", ctx.uri, elsewhere(ctx)):
        click.echo(describe(client, model_uri, host, port), err=True)
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve` starts `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": ctx.uri, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    config = {"device": device, "max_request_bytes": None if max_request_mb is None else int(max_request_mb * 2**20)}
    config = {k: v for k, v in config.items() if v is not None}
    if config:  # MLflow's own way to override a model's model_config when serving
        env["SERVING_MODEL_CONFIG"] = json.dumps(config)
    args = ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", host, "-p", str(port)]
    args += ["-w", str(workers)]
    click.echo(f"MLFLOW_TRACKING_URI={ctx.uri} {shlex.join(args)}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(str(Path(bin_dir) / "mlflow"), args, env)


def describe(client: object, model_uri: str, host: str, port: int) -> str:
    """Which model and version, its input columns, and a request to paste, built from its own input example."""
    served = registry.describe_model(client, model_uri)
    example = json.dumps(served["example"], separators=(",", ":"))
    columns = ", ".join(f"{name} ({kind})" for name, kind in served["inputs"])
    return "\n".join(
        [
            f"serving {served['title']}",
            f"  input columns: {columns}; each row gets: {', '.join(served['outputs'])}",
            "  try:",
            f"    curl -s http://{host}:{port}/invocations -H 'Content-Type: application/json' \\",
            f"         -d {shlex.quote(example)}",
        ]
    )
