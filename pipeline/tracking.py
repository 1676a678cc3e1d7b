"""MLflow glue: where the store is, experiments, runs that end FAILED on error, batched metrics."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mlflow costs ~1 s to import; only the functions that talk to the store import it
    from mlflow import MlflowClient

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
FAMILY_TAG = "pipeline.family"  # "model" (BinaryClassifier) or "baseline" (scikit-learn)
DATA_HASH_TAG = "pipeline.data_sha256"
TRAIN_RUN_TAG = "pipeline.train_run_id"
GIT_COMMIT_TAG = "mlflow.source.git.commit"


def project_root(env: Mapping[str, str], cwd: Path) -> Path:
    """The repository root: DVC_ROOT (or cwd) walked up to the folder holding .dvc/."""
    start = Path(env.get("DVC_ROOT") or cwd).resolve()
    parts = start.parts
    # `dvc exp run --temp/--queue` runs in <root>/.dvc/tmp/exps/<name>: anchor on the real root.
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return start


def tracking_uri(root: Path, env: Mapping[str, str]) -> str:
    """MLFLOW_TRACKING_URI when set, else sqlite:///<root>/mlflow.db (never relative to cwd)."""
    return env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """For a sqlite store, artifacts live in mlartifacts/ beside the database; servers decide their own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def git_commit(root: Path) -> str | None:
    """HEAD of the repository, or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def client(uri: str) -> MlflowClient:
    """A client bound to one store (tracking and registry)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client: MlflowClient, name: str, uri: str) -> str:
    """Get or create the experiment, with artifacts beside a sqlite store."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=artifact_location(uri))


@dataclass(frozen=True)
class RunRef:
    """A run and whether this process owns its lifecycle (False under `mlflow run`)."""

    run_id: str
    experiment_id: str
    owned: bool


def start_run(
    mlflow_client: MlflowClient,
    experiment: str,
    uri: str,
    run_name: str,
    tags: Mapping[str, str],
    env: Mapping[str, str],
) -> RunRef:
    """Pick up MLFLOW_RUN_ID (set by `mlflow run`) in its own experiment, else create a run."""
    run_id = env.get("MLFLOW_RUN_ID")
    if run_id:
        run = mlflow_client.get_run(run_id)
        for key, value in tags.items():
            mlflow_client.set_tag(run_id, key, value)
        return RunRef(run_id, run.info.experiment_id, owned=False)
    exp_id = experiment_id(mlflow_client, experiment, uri)
    run = mlflow_client.create_run(exp_id, run_name=run_name, tags=dict(tags))
    return RunRef(run.info.run_id, exp_id, owned=True)


@contextmanager
def failing_run(mlflow_client: MlflowClient, run: RunRef) -> Iterator[RunRef]:
    """Mark the run FAILED if the body raises; FINISHED on success when we own it."""
    try:
        yield run
    except BaseException:
        mlflow_client.set_terminated(run.run_id, "FAILED")
        raise
    if run.owned:
        mlflow_client.set_terminated(run.run_id, "FINISHED")


def log_params(mlflow_client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """All params in one call."""
    from mlflow.entities import Param

    mlflow_client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def log_metrics(mlflow_client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """A dict of scalar metrics in one call."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    mlflow_client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_history(mlflow_client: MlflowClient, run_id: str, series: Mapping[str, Any], first_step: int = 0) -> None:
    """Per-epoch series (step = epoch) in batches of MLflow's 1000-metric limit, not one call each."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, value, now, step)
        for key, values in series.items()
        for step, value in enumerate(map(float, values), start=first_step)
    ]
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])


def environ() -> dict[str, str]:
    """A copy of the process environment (passed in, so functions above stay testable)."""
    return dict(os.environ)
