"""The execution's runs: experiment, parent and children, params, tags, datasets, batched metrics, artifacts."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.store import connection, location

if TYPE_CHECKING:  # mlflow is slow to import: only the functions that talk to the store import it
    from mlflow import MlflowClient


MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit

MAX_PARAM_VALUE = 6000  # MLflow's param value limit

FAMILY_TAG = "pipeline.family"  # "model" (BinaryClassifier), "baseline" (scikit-learn) or "execution" (parent)

PARENT_TAG = "mlflow.parentRunId"  # what nests a run under its parent in the UI

LABEL_TAG = "pipeline.label_key"  # a hash of a parent's label (commit or DVC experiment, changed params)

CHECKPOINT_TAG = "pipeline.checkpoint_sha256"  # on a model run: the sha256 of the checkpoint file it wrote

EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

EXPERIMENT_DESCRIPTION = (
    "The PyTorch tutorial's BinaryClassifier (nn.Linear + nn.Sigmoid) against scikit-learn's LogisticRegression. "
    "One parent run per pipeline execution (`dvc repro`, `dvc exp run`, `python -m pipeline run`, `mlflow run`), "
    "named after its DVC experiment or commit and the params that differ from that revision (#2, #3 ... when a "
    "name repeats); its children are "
    "the BinaryClassifier run (per-epoch cost and accuracy, the logged model) and the LogisticRegression run. "
    "Evaluation figures are artifacts of all three; the champion gate's evidence is in the model run's "
    "gate/decision.json. Every move of @champion and @challenger is in the experiment `<model> · history` "
    "(`python -m pipeline history` prints it)."
)


def context_tags(source_name: str) -> dict[str, str]:
    """MLflow's own run-context tags (user, source type), with a source name a person can read."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {k: v for k, v in resolve_tags().items() if not k.startswith("mlflow.source.git")}
    return {**tags, "mlflow.source.name": source_name}


def experiment_id(mlflow_client: MlflowClient, name: str, uri: str, description: str = EXPERIMENT_DESCRIPTION) -> str:
    """Get or create the experiment (artifacts beside a sqlite store), with its description and kind.

    MLflow 3's UI opens an experiment of no declared kind on its GenAI overview (traces, tokens):
    `mlflow.experimentKind` says these are model-training runs, so it opens on the runs.
    """
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        tags = {"mlflow.note.content": description, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        try:
            return mlflow_client.create_experiment(name, artifact_location=location.artifact_location(uri), tags=tags)
        except MlflowException as exc:  # another pipeline created it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = mlflow_client.get_experiment_by_name(name)
    for key, value in {"mlflow.note.content": description, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}.items():
        if key not in experiment.tags:
            mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def open_parent(
    mlflow_client: MlflowClient, experiment: str, uri: str, label: str, tags: Mapping[str, str], run_id: str | None
) -> tuple[connection.RunRef, str, str | None]:
    """The execution's parent run: the one `mlflow run` made (run_id), else a new one in `experiment`.

    Returns the run, its name (`label`, or `label #n` for the n-th execution with that label) and, under
    `mlflow run`, a warning when its run is not in `experiment`.
    """
    tags = {**tags, LABEL_TAG: hashlib.sha256(label.encode()).hexdigest()[:16]}
    if run_id:
        run = mlflow_client.get_run(run_id)
        exp = mlflow_client.get_experiment(run.info.experiment_id)
        mlflow_client.log_batch(run_id, tags=connection.as_tags(tags))
        name = _unique_name(
            mlflow_client, connection.RunRef(run_id, exp.experiment_id, owned=False), label, tags[LABEL_TAG]
        )
        warning = None
        if exp.name != experiment:
            warning = (
                f"`mlflow run` created run {run_id} in experiment {exp.name!r}, not {experiment!r} where the "
                f"pipeline's other runs are: use `mlflow run . --experiment-name {experiment}` "
                f"(or export MLFLOW_EXPERIMENT_NAME={experiment}) to keep them together"
            )
        return connection.RunRef(run_id, run.info.experiment_id, owned=False), name, warning
    exp_id = experiment_id(mlflow_client, experiment, uri)
    with connection.holding(mlflow_client):  # created and recorded as open in one step
        run = mlflow_client.create_run(exp_id, run_name=label, tags={**tags, **connection.owner_tags()})
        ref = connection.opened(mlflow_client, connection.RunRef(run.info.run_id, exp_id))
    return ref, _unique_name(mlflow_client, ref, label, tags[LABEL_TAG]), None


def _unique_name(mlflow_client: MlflowClient, run: connection.RunRef, label: str, label_key: str) -> str:
    """Name the parent `label #n`, n counting the parents with that label started before it.

    Two executions started at once may count alike; whichever checks last sees both names, so a
    name another run also took gets this run's id appended.
    """

    def same_label() -> list[Any]:
        query = f"tags.`{LABEL_TAG}` = '{label_key}'"
        return mlflow_client.search_runs([run.experiment_id], query, max_results=5000)

    runs = same_label()
    mine = next(r for r in runs if r.info.run_id == run.run_id)
    before = [r for r in runs if (r.info.start_time, r.info.run_id) < (mine.info.start_time, run.run_id)]
    name = f"{label} #{len(before) + 1}" if before else label
    mlflow_client.set_tag(run.run_id, "mlflow.runName", name)
    if any(r.info.run_name == name for r in same_label() if r.info.run_id != run.run_id):
        name = f"{name} ({run.run_id[:7]})"
        mlflow_client.set_tag(run.run_id, "mlflow.runName", name)
    return name


def create_child(
    mlflow_client: MlflowClient, parent: connection.RunRef, name: str, tags: Mapping[str, str]
) -> connection.RunRef:
    """A run nested under the parent in the UI."""
    tags = {**tags, **connection.owner_tags(), PARENT_TAG: parent.run_id}
    with connection.holding(mlflow_client):
        run = mlflow_client.create_run(parent.experiment_id, run_name=name, tags=tags)
        return connection.opened(mlflow_client, connection.RunRef(run.info.run_id, parent.experiment_id))


def run_ref(mlflow_client: MlflowClient, run_id: str, owned: bool = True) -> connection.RunRef:
    """A run known by id; raises MlflowException when this store does not have it."""
    run = mlflow_client.get_run(run_id)
    return connection.RunRef(run.info.run_id, run.info.experiment_id, owned)


def trained(
    mlflow_client: MlflowClient, experiment: str, checkpoint_sha256: str
) -> tuple[connection.RunRef, connection.RunRef] | None:
    """The parent and model run of the newest execution in `experiment` that trained this checkpoint."""
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = f"tags.`{CHECKPOINT_TAG}` = '{checkpoint_sha256}' and tags.`{FAMILY_TAG}` = 'model'"
    found = mlflow_client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"])
    for run in found:
        parent_id = run.data.tags.get(PARENT_TAG)
        if parent_id:
            parent = mlflow_client.get_run(parent_id)
            owned = (
                connection.PID_TAG in parent.data.tags
            )  # `mlflow run` made the ones without: their FINISHED is its own
            return connection.RunRef(parent_id, exp.experiment_id, owned), connection.RunRef(
                run.info.run_id, exp.experiment_id
            )
    return None


def holds_checkpoint(uri: str, experiment: str, checkpoint_sha256: str) -> bool:
    """Whether the store holds a model run that wrote this checkpoint.

    A sqlite store is read with sqlite3 (a check DVC makes on every repro: MLflow's import and store open would
    cost it more than the rest of a no-op repro); other stores through MLflow.
    """
    if not uri.startswith("sqlite:///"):
        return trained(connection.connect(uri), experiment, checkpoint_sha256) is not None
    query = (
        "SELECT 1 FROM tags JOIN runs ON runs.run_uuid = tags.run_uuid JOIN experiments ON "
        "experiments.experiment_id = runs.experiment_id WHERE tags.key = ? AND tags.value = ? "
        "AND runs.lifecycle_stage = 'active' AND experiments.name = ? LIMIT 1"
    )
    return bool(location.read_sqlite(uri, query, (CHECKPOINT_TAG, checkpoint_sha256, experiment)))


def run_params(mlflow_client: MlflowClient, run_id: str) -> dict[str, str]:
    """A run's params."""
    return dict(mlflow_client.get_run(run_id).data.params)


def run_name(mlflow_client: MlflowClient, run_id: str) -> str:
    """The run's name as the UI shows it."""
    return mlflow_client.get_run(run_id).info.run_name or run_id


def log_params(
    mlflow_client: MlflowClient, run_id: str, params: Mapping[str, Any], metrics: Mapping[str, float] | None = None
) -> None:
    """All params in one call, written as params.yaml would hold them (null, lists as JSON), with `metrics` if given."""
    from mlflow.entities import Metric, Param

    def text(value: Any) -> str:
        value = "null" if value is None else json.dumps(value) if isinstance(value, list) else str(value)
        return value[:MAX_PARAM_VALUE]

    now = int(time.time() * 1000)
    scalars = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
    mlflow_client.log_batch(run_id, params=[Param(k, text(v)) for k, v in params.items()], metrics=scalars)


def set_tags(mlflow_client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Several tags in one call."""
    mlflow_client.log_batch(run_id, tags=connection.as_tags(tags))


@dataclass(frozen=True)
class Split:
    """A prepared split as an MLflow dataset: digest = the prepared data's hash, with source and counts."""

    name: str
    digest: str
    source: str
    rows: int
    features: tuple[str, ...]
    context: str  # MLflow's input context: "training", "evaluation" or both


def log_datasets(mlflow_client: MlflowClient, run_id: str, splits: list[Split]) -> None:
    """Link the splits to the run as inputs, so the runs table's Dataset column names them."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for split in splits:
        if "://" in split.source:  # an object store's file or folder: its own URI, as MLflow's S3 source names it
            source_type, source = split.source.split("://")[0], {"uri": split.source}
        elif Path(split.source).suffix:
            source_type, source = "local", {"uri": Path(split.source).resolve().as_uri()}
        else:
            source_type, source = "code", {}
        schema = {"mlflow_colspec": [{"type": "float", "name": f} for f in split.features]}
        profile = {"num_rows": split.rows, "num_features": len(split.features)}
        dataset = Dataset(
            name=split.name,
            digest=split.digest,
            source_type=source_type,
            source=json.dumps({**source, "name": split.source}),
            schema=json.dumps(schema),
            profile=json.dumps(profile),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", split.context)]))
    mlflow_client.log_inputs(run_id, datasets=inputs)


def log_metrics(
    mlflow_client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float],
    step: int = 0,
    split: Split | None = None,
    model_id: str | None = None,
) -> None:
    """A dict of scalar metrics in one call, optionally tied to the dataset and the logged model they measure."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    ties = dict(model_id=model_id, dataset_name=split and split.name, dataset_digest=split and split.digest)
    batch = [Metric(k, float(v), now, step, **ties) for k, v in metrics.items()]
    mlflow_client.log_batch(run_id, metrics=batch)


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


def log_files(mlflow_client: MlflowClient, run_id: str, named: Mapping[str, bytes]) -> None:
    """Artifacts from bytes, e.g. {"roc.png": b"..."}, in one upload.

    The UI's Compare page shows only files at the artifact root that both runs have: figures go there.
    """
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in named.items():
            path = Path(tmp, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        mlflow_client.log_artifacts(run_id, tmp)
