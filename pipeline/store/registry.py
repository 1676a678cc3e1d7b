"""Models and the registry: logged models, versions by fingerprint, the registry lock, aliases and their history."""

from __future__ import annotations

import getpass
import hashlib
import json
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.store import connection, location, runs

if TYPE_CHECKING:  # mlflow is slow to import: only the functions that talk to the store import it
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


LOCK_SUFFIX = ".lock"  # the registry lock on a tracking server: a registered model named <model>.lock

LOCK_WAIT_S, LOCK_STALE_S = 600, 900  # how long to wait for it; when a holder is presumed dead

SHA_TAG = "model_sha256"  # on a model version: its fingerprint (checkpoint and serving config)

CHALLENGER = "challenger"

CHAMPION = "champion"

HISTORY_EXPERIMENT = " · history"  # the experiment `<model> · history` holds each registered model's history run

HISTORY_TAG = "pipeline.history_of"  # names the registered model whose history a run holds

HISTORY_RECORD = "record."  # one tag per record of that history

LEGACY_ALIAS_LOG = "alias_log."  # where stores written before kept alias moves: registered-model tags

MAX_REASON = 4000  # a record stays well under MLflow's 8000-character tag value

HISTORY_DESCRIPTION = (
    "The history of registered model {name}: one tag per record, each a JSON object: an alias move (when, "
    "alias, from, to, by whom, why, on what evidence) or an execution that registered a checkpoint {name} "
    "already had (the version it reused and that execution's own gate decision). Records are added, never "
    "rewritten. `python -m pipeline history` prints them as a table."
)

REGISTERED_DESCRIPTION = (
    "Versions of the pipeline's BinaryClassifier (the PyTorch tutorial's nn.Linear + nn.Sigmoid), one per distinct "
    "checkpoint (tag model_sha256). Every new version becomes @challenger; @champion moves only when a version is "
    "no worse than scikit-learn's LogisticRegression and better than the champion by a paired test on the same "
    "rows, or by a person's `python -m pipeline promote`. Each version's gate.* tags are its decision, written "
    "when it was registered. Every alias move and reuse is in the experiment `{name} · history` "
    "(`python -m pipeline history` prints it)."
)


def fingerprint(checkpoint: bytes, model_config: dict[str, Any]) -> str:
    """Identity of a model: the checkpoint (weights, features, scaling, threshold) and how it serves."""
    serving = json.dumps(model_config, sort_keys=True).encode()
    return hashlib.sha256(checkpoint + b"\0" + serving).hexdigest()


def find_version(mlflow_client: MlflowClient, name: str, sha: str) -> ModelVersion | None:
    """The oldest version of `name` whose checkpoint has this fingerprint."""
    versions = mlflow_client.search_model_versions(f"name = '{name}' and tags.{SHA_TAG} = '{sha}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def alias_version(mlflow_client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version behind an alias, if any (with its tags and aliases)."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def model_version(mlflow_client: MlflowClient, name: str, version: str) -> ModelVersion:
    """One version with its aliases (search results carry none); a clear error when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise ValueError(f"registered model {name!r} has no version {version!r}") from exc


def version_summary(
    mlflow_client: MlflowClient, name: str, version: str, new: bool | None, decision: dict[str, Any]
) -> dict[str, Any]:
    """A version, its aliases now and a gate decision about it (what models/registered.json records)."""
    current = model_version(mlflow_client, name, version)
    return {
        "name": name,
        "version": int(current.version),
        "new_version": new,
        "aliases": sorted(current.aliases),
        "model_uri": f"models:/{name}/{current.version}",
        "run_id": current.run_id,
        "model_sha256": current.tags.get(SHA_TAG),
        "decision": decision,
    }


def log_model(
    mlflow_client: MlflowClient,
    run: connection.RunRef,
    spec: dict[str, Any],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    split: runs.Split,
) -> str:
    """Log the pyfunc into the run as a LoggedModel whose metrics are its evaluation metrics; returns its id.

    log_model() would link the run's step-0 metrics to the model (epoch 0's cost and accuracy), so
    the LoggedModel is created first, its evaluation metrics logged against it, and the artifacts
    logged with no active run; the run then lists it as an output.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput

    with connection.holding(mlflow_client):
        logged = mlflow.initialize_logged_model(
            name="model",
            source_run_id=run.run_id,
            params={k: str(v) for k, v in params.items()},
            experiment_id=run.experiment_id,
        )
        runs.log_metrics(mlflow_client, run.run_id, metrics, split=split, model_id=logged.model_id)
        mlflow.pyfunc.log_model(name="model", model_id=logged.model_id, **spec)
        mlflow_client.log_outputs(run.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id


def register(mlflow_client: MlflowClient, name: str, model_id: str, tags: Mapping[str, str]) -> ModelVersion:
    """A new version of `name` from a logged model; a registered model made here says what it holds."""
    import mlflow

    with connection.holding(mlflow_client):
        version = mlflow.register_model(f"models:/{model_id}", name, tags=dict(tags))
    if not mlflow_client.get_registered_model(name).description:
        mlflow_client.update_registered_model(name, REGISTERED_DESCRIPTION.format(name=name))
    return version


def set_version_tags(mlflow_client: MlflowClient, name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Tags on a model version (the gate's summary)."""
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, str(version), key, str(value))


@contextmanager
def registry_lock(mlflow_client: MlflowClient, uri: str, name: str) -> Iterator[None]:
    """Serialise find-or-register a checkpoint and read-the-champion, decide, move-the-alias across processes.

    Two registrations that each look for the checkpoint first both make a version; two that each read
    the champion first can both move it, the worse last. A file lock beside a sqlite database makes
    each one step; on any other store (a tracking server) the lock is a registered model
    `<name>.lock` whose creation the database makes atomic (a second creation is refused), deleted
    when the step is done; one whose owner died (same host, gone process) or that is older than
    LOCK_STALE_S is broken.
    """
    if uri.startswith("sqlite:///"):
        with location.sqlite_lock(uri, "registry"):
            yield
        return
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        mine = {**connection.owner_tags(), "since": str(time.time())}
        try:  # a sqlite client defers signals around each call (see connection._deferring_client)
            mlflow_client.create_registered_model(lock, tags=mine)
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        holder = _lock_holder(mlflow_client, lock)
        if holder is not None and holder.tags == mine:  # MLflow retried a create (timed out) that went through
            break
        if holder is not None and _stale(holder.tags):  # its owner will not release it: take it over
            again = _lock_holder(mlflow_client, lock)
            if again is not None and again.tags.get("since") == holder.tags.get("since"):
                with suppress(MlflowException):
                    mlflow_client.delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            owner = holder.tags if holder is not None else "?"
            raise ValueError(f"registered model {lock!r} has been held for over {LOCK_WAIT_S} s (by {owner})")
        time.sleep(0.1 + secrets.randbelow(100) / 1000)
    try:
        yield
    finally:
        try:
            mlflow_client.delete_registered_model(lock)
        except MlflowException as exc:  # gone already: MLflow retried a delete (timed out) that went through
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise


def _lock_holder(mlflow_client: MlflowClient, lock: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_registered_model(lock)
    except MlflowException:
        return None  # released meanwhile


def _stale(tags: Mapping[str, str]) -> bool:
    """A lock whose owner on this host is gone, or that is older than LOCK_STALE_S."""
    return connection.owner_gone(tags) or time.time() - float(tags.get("since") or 0) > LOCK_STALE_S


def user() -> str:
    """Who is acting, as MLflow records run users."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def move_alias(
    mlflow_client: MlflowClient,
    uri: str,
    name: str,
    alias: str,
    version: str,
    reason: str,
    evidence: Mapping[str, Any] | None = None,
) -> str | None:
    """Point `alias` at `version` and record the move in the model's history; returns the previous version."""
    previous = alias_version(mlflow_client, name, alias)
    before = None if previous is None else str(previous.version)
    if before == str(version):
        return before
    mlflow_client.set_registered_model_alias(name, alias, str(version))
    record_history(mlflow_client, uri, name, {"alias": alias, "from": before, "to": str(version), "reason": reason,
                                              "evidence": dict(evidence or {})})  # fmt: skip
    return before


def record_history(mlflow_client: MlflowClient, uri: str, name: str, record: Mapping[str, Any]) -> None:
    """Add one record (an alias move, a reused version) to the history of registered model `name`.

    The history is kept in the store, as tags of a run of its own (experiment `<name> · history`), so
    everyone on a server sees it and the registered model's page is not buried under it. One tag per
    record, named by its time and a random part: records are never rewritten, and two processes that
    each made a history run (a race) lose nothing, since every run of the history is read.
    """
    now = datetime.now(UTC)
    full = {"when": now.isoformat(timespec="seconds"), "by": user(), **record}
    full["reason"] = str(full.get("reason", ""))[:MAX_REASON]
    key = f"{HISTORY_RECORD}{now.strftime('%Y%m%dT%H%M%S%f')}.{secrets.token_hex(3)}"  # sortable, unique
    kept = _history_runs(mlflow_client, name)
    if kept:
        run_id = kept[0].info.run_id
    else:
        description = HISTORY_DESCRIPTION.format(name=name)
        exp_id = runs.experiment_id(mlflow_client, f"{name}{HISTORY_EXPERIMENT}", uri, description)
        tags = {HISTORY_TAG: name, "mlflow.note.content": description}
        run_id = mlflow_client.create_run(exp_id, run_name=f"{name} history", tags=tags).info.run_id
        mlflow_client.set_terminated(run_id, "FINISHED")
    mlflow_client.set_tag(run_id, key, json.dumps(full, sort_keys=True))


def _history_runs(mlflow_client: MlflowClient, name: str) -> list[Any]:
    experiment = mlflow_client.get_experiment_by_name(f"{name}{HISTORY_EXPERIMENT}")
    if experiment is None:
        return []
    query = f"tags.`{HISTORY_TAG}` = '{name}'"
    return mlflow_client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time ASC"])


def history(mlflow_client: MlflowClient, uri: str, name: str) -> list[dict[str, Any]]:
    """Every record of `name`'s history (alias moves, reused versions), oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        raise ValueError(f"no registered model {name!r} in the store {uri}") from exc
    # Stores written before the history had a run of its own kept each move as a registered-model tag.
    found = {k: v for k, v in model.tags.items() if k.startswith(LEGACY_ALIAS_LOG)}
    for run in _history_runs(mlflow_client, name):
        found.update({k: v for k, v in run.data.tags.items() if k.startswith(HISTORY_RECORD)})
    return [json.loads(found[k]) for k in sorted(found, key=lambda k: k.partition(".")[2])]


def version_decision(mlflow_client: MlflowClient, name: str, version: str) -> dict[str, Any] | None:
    """The gate decision recorded when `version` was registered (its gate.evidence), or None if it has none."""
    import mlflow

    where = model_version(mlflow_client, name, version).tags.get("gate.evidence")
    if not where:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(mlflow.artifacts.download_artifacts(where, dst_path=tmp)).read_text())


def checkpoint_path(mlflow_client: MlflowClient, name: str, version: str, into: Path) -> Path:
    """Download a version's checkpoint (the pyfunc's data file) into `into`; returns its path."""
    import mlflow
    from mlflow.models import Model

    uri = f"models:/{name}/{version}"
    flavor = Model.load(uri).flavors["python_function"]
    return Path(mlflow.artifacts.download_artifacts(f"{uri}/{flavor['data']}", dst_path=str(into)))


def load_pyfunc(uri: str) -> Any:
    """A model through MLflow's pyfunc loader, as `mlflow models serve` loads it."""
    import mlflow

    return mlflow.pyfunc.load_model(uri)


def describe_model(mlflow_client: MlflowClient, uri: str) -> dict[str, Any]:
    """A model's name and version (for registry URIs), input and output columns, and its serving input example."""
    from mlflow.models import Model
    from mlflow.models.utils import load_serving_example

    model = Model.load(uri)
    title = uri
    if uri.startswith("models:/"):
        name, _, ref = uri.removeprefix("models:/").partition("@")
        version = alias_version(mlflow_client, name, ref) if ref else model_version(mlflow_client, *name.split("/", 1))
        if version is not None:
            version = model_version(mlflow_client, version.name, version.version)  # with its aliases
            aliases = ", ".join(f"@{a}" for a in sorted(version.aliases)) or "no aliases"
            title = f"{version.name} v{version.version} ({aliases}) from {uri}"
    example = load_serving_example(uri)
    return {
        "title": title,
        "inputs": [(spec.name, spec.type.name) for spec in model.signature.inputs.inputs],
        "outputs": model.signature.outputs.input_names(),
        "example": None if example is None else json.loads(example),
    }
