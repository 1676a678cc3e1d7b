"""The click CLI: the only layer that reads params, touches files and opens MLflow runs."""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from pipeline import files, tracking
from pipeline.child import InChild
from pipeline.params import BaselineParams, Params, TrainParams, load_params

FAMILIES = {"model": "BinaryClassifier", "baseline": "LogisticRegression"}


@dataclass(frozen=True)
class Context:
    """Params plus where the store is; built once per command."""

    params: Params
    root: Path
    env: dict[str, str]

    @property
    def uri(self) -> str:
        """The MLflow tracking (and registry) URI."""
        return tracking.tracking_uri(self.root, self.env)

    def tags(self, family: str, data_sha256: str) -> dict[str, str]:
        """Tags every run carries: which family, which data, which commit."""
        tags = {tracking.FAMILY_TAG: family, tracking.DATA_HASH_TAG: data_sha256}
        commit = tracking.git_commit(self.root)
        if commit:
            tags[tracking.GIT_COMMIT_TAG] = commit
        return tags


def _is_user_error(exc: Exception) -> bool:
    """Bad params, data or paths, or a store that refused: a message, not a traceback."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")  # only loaded if a stage used MLflow
    return isinstance(exc, (ValueError, FileNotFoundError)) or bool(
        mlflow_exceptions and isinstance(exc, mlflow_exceptions.MlflowException)
    )


def stage(func: Callable[..., None]) -> Callable[..., None]:
    """Add --params/--set, build the Context, and turn known errors into a clear exit 1."""

    @click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path())
    @click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one param.")
    @functools.wraps(func)
    def wrapper(params_path: str, overrides: tuple[str, ...], **kwargs: Any) -> None:
        env = tracking.environ()
        try:
            ctx = Context(load_params(params_path, overrides), tracking.project_root(env, Path.cwd()), env)
            func(ctx, **kwargs)
        except Exception as exc:
            if not _is_user_error(exc):
                raise
            raise click.ClickException(str(exc)) from exc

    return wrapper


def path_option(name: str, key: str) -> Callable:
    """A path option whose default is params.yaml's paths.<key> (dvc.yaml passes the same value)."""
    return click.option(f"--{name}", key, default=None, type=click.Path(), help=f"default: params paths.{key}")


def _path(ctx: Context, key: str, given: str | None) -> Path:
    return Path(given if given is not None else getattr(ctx.params.paths, key))


@click.group()
def main() -> None:
    """BinaryClassifier pipeline: prepare, train, evaluate, register (or `run` for all); predict and serve."""


# ---------------------------------------------------------------- prepare
@main.command()
@stage
@path_option("out", "prepared")
def prepare(ctx: Context, prepared: str | None) -> None:
    """Read data.source, validate, split and write the prepared arrays."""
    do_prepare(ctx, _path(ctx, "prepared", prepared))


def do_prepare(ctx: Context, out: Path) -> None:
    """Stage body: load, validate, split, write atomically."""
    from pipeline import data
    from pipeline.sources import open_source

    p = ctx.params.data
    source = open_source(p.source, p.label, p.features, p.synthetic.n_samples, p.synthetic.n_features, p.seed)
    meta = data.prepare_dir(out, source, p.test_size, p.seed, p.standardize)
    click.echo(
        f"prepared {meta['n_train']} train / {meta['n_test']} {meta['evaluated_on']} rows, "
        f"{len(meta['features'])} features from {source.origin} -> {out} (sha256 {meta['sha256'][:12]})"
    )


# ---------------------------------------------------------------- train
@main.command()
@stage
@path_option("data", "prepared")
@path_option("model", "model")
@path_option("history", "history")
@path_option("run-info", "run_info")
def train(ctx: Context, prepared: str | None, model: str | None, history: str | None, run_info: str | None) -> None:
    """Train BinaryClassifier, logging params and per-epoch cost/accuracy to MLflow."""
    do_train(
        ctx,
        _path(ctx, "prepared", prepared),
        _path(ctx, "model", model),
        _path(ctx, "history", history),
        _path(ctx, "run_info", run_info),
    )


@dataclass(frozen=True)
class Fitted:
    """What the training process sends back: plain bytes and arrays, so this one needs no torch."""

    checkpoint: bytes
    cost: np.ndarray
    accuracy: np.ndarray
    device: str
    weights: str
    started: float  # time.monotonic() when the training loop began


def _print_now(line: str) -> None:
    print(line, flush=True)  # from a child process: flushed, so lines interleave in order


@dataclass(frozen=True)
class HistoryChunk:
    """Per-epoch cost and accuracy from `first` on, sent while training goes on."""

    first: int
    cost: np.ndarray
    accuracy: np.ndarray


@dataclass(frozen=True)
class Rank:
    """Where this process sits in a `torchrun` job (from its environment); rank 0 of 1 otherwise."""

    rank: int
    world: int
    local: int

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Rank:
        """Read RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them."""
        rank = int(env.get("RANK", "0"))
        return cls(rank, int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", str(rank))))


def fit(emit: Callable[[HistoryChunk], None], data_dir: Path, params: TrainParams, rank: Rank) -> Fitted:
    """Load this rank's rows of the prepared data, train on the chosen device, serialise (a child process)."""
    from pipeline import data
    from pipeline import train as training
    from pipeline.model import ModelConfig, checkpoint_bytes

    training.warm_up(params)
    prepared = data.load_prepared(data_dir)
    config = ModelConfig(len(prepared.features), prepared.features, params.threshold, prepared.mean, prepared.scale)
    device = training.resolve_device(params.device)
    X, y, n_total = prepared.X_train, prepared.y_train, prepared.y_train.shape[0]
    if rank.world > 1:
        import torch
        import torch.distributed as dist

        lo, hi = rank.rank * n_total // rank.world, (rank.rank + 1) * n_total // rank.world
        X, y = X[lo:hi], y[lo:hi]  # slices of the memory map: this rank reads only its own rows
        if device.type == "cuda":
            device = torch.device("cuda", rank.local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # The imports' objects (torch's, hundreds of thousands) never become garbage, but every full collection
    # scans them all (about 60 ms, once in ~500 tutorial epochs): freeze them out of its way.
    gc.freeze()
    started = time.monotonic()  # system-wide clock: comparable with the parent's
    try:
        result = training.train(
            X,  # raw: the scaling is folded into the model, never a scaled copy
            y,
            params,
            device,
            _print_now if rank.rank == 0 else (lambda line: None),
            lambda first, cost, accuracy: emit(HistoryChunk(first, cost, accuracy)),
            mean=prepared.mean,
            scale=prepared.scale,
            shard=training.Shard(rank.rank, rank.world, n_total),
        )
    finally:
        if rank.world > 1:
            dist.destroy_process_group()
    w, b = result.model.linear.weight.tolist(), result.model.linear.bias.tolist()
    weights = f"W = {[[round(v, 4) for v in row] for row in w]}, b = {[round(v, 4) for v in b]}"
    checkpoint = checkpoint_bytes(result.model, config)
    return Fitted(checkpoint, result.cost, result.accuracy, result.device, weights, started)


def log_chunk(client: Any, run_id: str, chunk: HistoryChunk) -> None:
    """Persist one chunk of training history (step = epoch)."""
    tracking.log_history(client, run_id, {"cost": chunk.cost, "accuracy": chunk.accuracy}, chunk.first)


def do_train(ctx: Context, data_dir: Path, model_path: Path, history_path: Path, run_info_path: Path) -> None:
    """Stage body: train inside an MLflow run; outputs are written only once everything succeeded."""
    from pipeline import data

    p = ctx.params
    rank = Rank.from_env(ctx.env)
    if rank.rank != 0:  # under torchrun: train this rank's shard in step with rank 0, which records everything
        fit(lambda chunk: None, data_dir, p.train, rank)
        return
    fitting = InChild(fit, data_dir, p.train, rank, stream=True)
    meta = data.read_meta(data_dir)
    client = tracking.client(ctx.uri)
    run = tracking.start_run(
        client, p.mlflow.experiment, ctx.uri, FAMILIES["model"], ctx.tags("model", meta["sha256"]), ctx.env
    )
    with tracking.failing_run(client, run):
        tracking.log_params(client, run.run_id, {**p.section("data"), **p.section("train")})
        fitted = fitting.result(lambda chunk: log_chunk(client, run.run_id, chunk))
        client.set_tag(run.run_id, "pipeline.device", fitted.device)
        pairs = zip(fitted.cost.tolist(), fitted.accuracy.tolist(), strict=True)
        rows = "".join(f"{i},{c!r},{a!r}\n" for i, (c, a) in enumerate(pairs))
        files.write_bytes(model_path, fitted.checkpoint)
        files.write_text(history_path, "epoch,cost,accuracy\n" + rows)
        files.write_json(run_info_path, {"run_id": run.run_id, "experiment_id": run.experiment_id})
    click.echo(fitted.weights)
    click.echo(f"MLflow run {run.run_id} ({ctx.uri})")


# ---------------------------------------------------------------- evaluate
@main.command()
@stage
@path_option("data", "prepared")
@path_option("model", "model")
@path_option("run-info", "run_info")
@path_option("metrics", "metrics")
def evaluate(ctx: Context, prepared: str | None, model: str | None, run_info: str | None, metrics: str | None) -> None:
    """Score BinaryClassifier and a scikit-learn baseline with one metric set."""
    do_evaluate(
        ctx,
        _path(ctx, "prepared", prepared),
        _path(ctx, "model", model),
        _path(ctx, "run_info", run_info),
        _path(ctx, "metrics", metrics),
    )


def _training_run(client: Any, run_info_path: Path, uri: str) -> tracking.RunRef:
    """The training run named in models/mlflow_run.json, checked to exist in this store."""
    from mlflow.exceptions import MlflowException

    info = files.read_json(run_info_path)
    try:
        run = client.get_run(info["run_id"])
    except (KeyError, MlflowException) as exc:
        raise ValueError(
            f"{run_info_path}: training run {info.get('run_id')!r} is not in the store {uri}; "
            "re-run training (`dvc repro --force train`)"
        ) from exc
    return tracking.RunRef(run.info.run_id, run.info.experiment_id, owned=False)


def score(data_dir: Path, model_path: Path, params: BaselineParams) -> dict[str, dict[str, float]]:
    """Both models' metrics on the evaluation split (runs in the child process)."""
    from pipeline import data, evaluate
    from pipeline.model import load_checkpoint, predict_proba, standardize

    prepared = data.load_prepared(data_dir)
    model, config = load_checkpoint(model_path)
    if config.features != prepared.features:
        raise ValueError(f"{model_path}: model features {config.features} != prepared {prepared.features}")
    baseline = evaluate.fit_baseline(standardize(prepared.X_train, config), prepared.y_train, params)
    X_test = standardize(prepared.X_test, config)
    return {
        "model": evaluate.scores(prepared.y_test, predict_proba(model, config, prepared.X_test), config.threshold),
        "baseline": evaluate.scores(prepared.y_test, evaluate.baseline_proba(baseline, X_test), config.threshold),
    }


def do_evaluate(ctx: Context, data_dir: Path, model_path: Path, run_info_path: Path, metrics_path: Path) -> None:
    """Stage body: both models scored on the same split; metrics to both runs and one JSON file."""
    from pipeline import data

    scoring = InChild(score, data_dir, model_path, ctx.params.evaluate.baseline)
    meta = data.read_meta(data_dir)
    client = tracking.client(ctx.uri)
    train_run = _training_run(client, run_info_path, ctx.uri)
    tags = {**ctx.tags("baseline", meta["sha256"]), tracking.TRAIN_RUN_TAG: train_run.run_id}
    created = client.create_run(train_run.experiment_id, run_name=FAMILIES["baseline"], tags=tags)
    baseline_run = tracking.RunRef(created.info.run_id, train_run.experiment_id, owned=True)
    with tracking.failing_run(client, baseline_run):
        tracking.log_params(client, baseline_run.run_id, ctx.params.section("evaluate"))
        results = scoring.result()
        for family, run_id in (("model", train_run.run_id), ("baseline", baseline_run.run_id)):
            tracking.log_metrics(client, run_id, {f"eval_{k}": v for k, v in results[family].items()})
            client.set_tag(run_id, "pipeline.evaluated_on", meta["evaluated_on"])
        files.write_json(metrics_path, results)
    click.echo(comparison_table(results))


def comparison_table(results: dict[str, dict[str, float]]) -> str:
    """BinaryClassifier against the baseline, one metric per line."""
    lines = [f"{'metric':<10} {FAMILIES['model']:>18} {FAMILIES['baseline']:>20}"]
    for key in results["model"]:
        lines.append(f"{key:<10} {results['model'][key]:>18.6f} {results['baseline'][key]:>20.6f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- register
@main.command()
@stage
@path_option("data", "prepared")
@path_option("model", "model")
@path_option("run-info", "run_info")
@path_option("metrics", "metrics")
@path_option("out", "registered")
def register(
    ctx: Context,
    prepared: str | None,
    model: str | None,
    run_info: str | None,
    metrics: str | None,
    registered: str | None,
) -> None:
    """Log the model, register it, set @challenger and (if it passes the gate) @champion."""
    do_register(
        ctx,
        _path(ctx, "prepared", prepared),
        _path(ctx, "model", model),
        _path(ctx, "run_info", run_info),
        _path(ctx, "metrics", metrics),
        _path(ctx, "registered", registered),
    )


def do_register(
    ctx: Context, data_dir: Path, model_path: Path, run_info_path: Path, metrics_path: Path, out: Path
) -> None:
    """Stage body: one version per distinct checkpoint; aliases moved by the gate."""
    import mlflow

    from pipeline import data, registry
    from pipeline.model import load_checkpoint

    p = ctx.params.register
    prepared = data.load_prepared(data_dir)
    _, config = load_checkpoint(model_path)
    results = files.read_json(metrics_path)
    checkpoint = model_path.read_bytes()
    mlflow.set_tracking_uri(ctx.uri)
    mlflow.set_registry_uri(ctx.uri)
    client = tracking.client(ctx.uri)
    run = _training_run(client, run_info_path, ctx.uri)
    with tracking.failing_run(client, run):
        model_config = ctx.params.serve.model_config()
        sha = registry.fingerprint(checkpoint, model_config)
        version = registry.find_version(client, p.model_name, sha)
        new = version is None
        if new:
            spec = registry.pyfunc_spec(model_path, config.features, prepared.X_test[:5], model_config)
            model_uri = registry.log_model(run.run_id, spec)
            tags = {registry.SHA_TAG: sha, tracking.DATA_HASH_TAG: prepared.sha256}
            version = mlflow.register_model(model_uri, p.model_name, tags=tags)
            client.set_registered_model_alias(p.model_name, registry.CHALLENGER, version.version)
        decision = registry.champion_decision(
            client, p, version.version, results, prepared.X_test, prepared.y_test, prepared.features, config.threshold
        )
        if decision.promote:
            client.set_registered_model_alias(p.model_name, registry.CHAMPION, version.version)
        summary = registry.summary(client, p.model_name, version, new, decision)
        files.write_json(out, summary)
    click.echo(registration_line(summary))


def registration_line(summary: dict[str, Any]) -> str:
    """One sentence on what the registry now holds."""
    aliases = ", ".join(f"@{a}" for a in summary["aliases"]) or "no aliases"
    state = "new version" if summary["new_version"] else "unchanged model, existing version"
    return (
        f"{summary['name']} v{summary['version']} ({state}; {aliases}): "
        f"{'champion' if summary['decision']['promote'] else 'not champion'}: {summary['decision']['reason']}"
    )


# ---------------------------------------------------------------- predict / serve
def champion_uri(ctx: Context) -> str:
    """The registry URI of this project's champion."""
    from pipeline.registry import CHAMPION

    return f"models:/{ctx.params.register.model_name}@{CHAMPION}"


@main.command()
@stage
@click.option("--model", "model_uri", default=None, help="MLflow model URI [default: models:/<name>@champion]")
@click.option("--input", "input_path", required=True, type=click.Path(), help="CSV or Parquet file to score")
@click.option("--output", "output_path", required=True, type=click.Path(), help="CSV or Parquet file to write")
@click.option("--keep", multiple=True, metavar="COLUMN", help="Input column to copy to the output (e.g. an id).")
def predict(ctx: Context, model_uri: str | None, input_path: str, output_path: str, keep: tuple[str, ...]) -> None:
    """Score a file in chunks of serve.batch_rows rows: probability and label per row."""
    do_predict(ctx, model_uri or champion_uri(ctx), Path(input_path), Path(output_path), keep)


def do_predict(ctx: Context, model_uri: str, input_path: Path, output_path: Path, keep: tuple[str, ...]) -> None:
    """Load the model through MLflow (as the server does) and score the file into an atomic output."""
    import mlflow

    from pipeline import batch
    from pipeline.sources import file_format

    source = batch.open_input(input_path)  # fail on a bad input before loading anything
    file_format(output_path)
    mlflow.set_tracking_uri(ctx.uri)
    mlflow.set_registry_uri(ctx.uri)
    model = mlflow.pyfunc.load_model(model_uri)
    features = tuple(model.metadata.get_input_schema().input_names())
    bar = click.progressbar(length=source.total, label=f"scoring {input_path}", file=sys.stderr)
    tty = sys.stderr.isatty()  # a bar only on a terminal
    started = time.perf_counter()
    with bar if tty else contextlib.nullcontext(bar):
        n = batch.score_file(
            model.predict,
            features,
            source,
            output_path,
            ctx.params.serve.batch_rows,
            keep,
            on_chunk=lambda chunk: bar.update(chunk.done - bar.pos) if tty else None,
        )
    seconds = time.perf_counter() - started
    click.echo(f"scored {n} rows with {model_uri} -> {output_path} in {seconds:.2f} s ({n / seconds:,.0f} rows/s)")


@main.command()
@stage
@click.option("--model", "model_uri", default=None, help="MLflow model URI [default: models:/<name>@champion]")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5001, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def serve(ctx: Context, model_uri: str | None, host: str, port: int, workers: int) -> None:
    """Run `mlflow models serve` on the champion, with this store and this venv's uvicorn."""
    import os
    import shlex

    uri = model_uri or champion_uri(ctx)
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve` starts `uvicorn` from PATH
    path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": ctx.uri, "PATH": path}
    args = ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", host, "-p", str(port)]
    args += ["-w", str(workers)]
    click.echo(f"MLFLOW_TRACKING_URI={ctx.uri} {shlex.join(args)}", err=True)
    os.execve(str(Path(bin_dir) / "mlflow"), args, env)


# ---------------------------------------------------------------- run / report
@main.command()
@stage
def run(ctx: Context) -> None:
    """Every stage in order in this process (what `mlflow run .` calls), with params' paths."""
    paths = ctx.params.paths
    prepared, model, run_info, metrics = (
        Path(paths.prepared),
        Path(paths.model),
        Path(paths.run_info),
        Path(paths.metrics),
    )
    do_prepare(ctx, prepared)
    do_train(ctx, prepared, model, Path(paths.history), run_info)
    do_evaluate(ctx, prepared, model, run_info, metrics)
    do_register(ctx, prepared, model, run_info, metrics, Path(paths.registered))


@main.command()
@stage
@path_option("metrics", "metrics")
@path_option("registered", "registered")
def report(ctx: Context, metrics: str | None, registered: str | None) -> None:
    """Print the comparison table and the registered version from the stage outputs."""
    results = files.read_json(_path(ctx, "metrics", metrics))
    summary = files.read_json(_path(ctx, "registered", registered))
    click.echo(comparison_table(results))
    click.echo(registration_line(summary))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
