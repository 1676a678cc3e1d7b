"""Every MLflow call of the pipeline: the store's URI, runs, tags, batched metrics, datasets, models, aliases."""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import files
from pipeline.interrupts import Interrupted, deferred

if TYPE_CHECKING:  # mlflow costs ~1.4 s to import: only the functions that talk to the store import it
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

LOCK_SUFFIX = ".lock"  # the registry lock on a tracking server: a registered model named <model>.lock
LOCK_WAIT_S, LOCK_STALE_S = 600, 900  # how long to wait for it; when a holder is presumed dead
REACH_TIMEOUT_S = 5  # how long a tracking server may take to answer the first request
# MLflow retries a server that does not answer 7 times over about 4 minutes, each try waiting up to 120 s: a
# dead server hung a pipeline for good. Bounded here (unless set), a call gives up within about 35 s.
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
HURRIED = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAM_VALUE = 6000  # MLflow's param value limit
FAMILY_TAG = "pipeline.family"  # "model" (BinaryClassifier), "baseline" (scikit-learn) or "execution" (parent)
PARENT_TAG = "mlflow.parentRunId"  # what nests a run under its parent in the UI
LABEL_TAG = "pipeline.label_key"  # a hash of a parent's label (commit or DVC experiment, changed params)
HOST_TAG, PID_TAG = "pipeline.host", "pipeline.pid"  # which process owns a RUNNING run (to spot dead owners)
SHA_TAG = "model_sha256"  # on a model version: its fingerprint (checkpoint and serving config)
CHECKPOINT_TAG = "pipeline.checkpoint_sha256"  # on a model run: the sha256 of the checkpoint file it wrote
CHALLENGER = "challenger"
CHAMPION = "champion"
HISTORY_EXPERIMENT = " · history"  # the experiment `<model> · history` holds each registered model's history run
HISTORY_TAG = "pipeline.history_of"  # names the registered model whose history a run holds
HISTORY_RECORD = "record."  # one tag per record of that history
LEGACY_ALIAS_LOG = "alias_log."  # where stores written before kept alias moves: registered-model tags
MAX_REASON = 4000  # a record stays well under MLflow's 8000-character tag value
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
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


def tracking_uri(root: Path, env: Mapping[str, str]) -> str:
    """MLFLOW_TRACKING_URI when set, else sqlite:///<root>/mlflow.db (never relative to cwd)."""
    return env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def identity(root: Path, env: Mapping[str, str]) -> str:
    """Which store a workspace records to, as its outputs name it.

    The repository's own sqlite file by its path in the repository (the same in every clone and copy), any
    other store by its URI without a password.
    """
    from urllib.parse import urlsplit

    uri = tracking_uri(root, env)
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        return f"{database.relative_to(root)} in this repository" if database.is_relative_to(root) else uri
    parts = urlsplit(uri)
    if parts.password:
        uri = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
    return uri


def artifact_location(uri: str) -> str | None:
    """For a sqlite store, artifacts live in mlartifacts/ beside the database; servers decide their own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def client(uri: str) -> MlflowClient:
    """A client bound to one store (tracking and registry); fluent calls go to the same store.

    A new sqlite store is created and migrated by the first client that opens it; several processes
    doing that at once leave it broken for good (`table _alembic_tmp_tags already exists`), so for
    sqlite the opening is serialised by a file lock beside the database.
    """
    import mlflow
    from mlflow import MlflowClient

    sqlite = uri.startswith("sqlite:///")
    _check_reachable(uri)
    for name, value in HTTP_BOUNDS.items():  # MLflow's own settings, unless the user set them
        os.environ.setdefault(name, value)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with _sqlite_lock(uri, "open"), deferred() if sqlite else nullcontext():
            opened = MlflowClient(tracking_uri=uri, registry_uri=uri)
            opened.search_experiments(max_results=1)  # the store exists and is migrated before anyone else opens it
            if sqlite:
                _relocate(Path(uri.removeprefix("sqlite:///")).resolve())
            reap_dead_runs(opened)  # runs a SIGKILLed process left RUNNING: whatever command comes next
    except Exception as exc:  # a bad URI or location fails in many libraries' ways: one message naming it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot open the MLflow store {uri} (MLFLOW_TRACKING_URI): {first}") from exc
    # A sqlite write cut by a signal locks the store against this very process; a request to a server is
    # safe to cut, and a server that stopped answering must not hold Ctrl-C for its retries.
    return _Deferring(opened) if sqlite else opened


def _holding(mlflow_client: MlflowClient) -> AbstractContextManager[None]:
    """Hold SIGINT/SIGTERM while a block of calls to a sqlite store runs (see client())."""
    return deferred() if isinstance(mlflow_client, _Deferring) else nullcontext()


@contextmanager
def hurried() -> Iterator[None]:
    """Calls to a server that give up at once: one try, a short timeout (marking runs on the way out)."""
    saved = {name: os.environ.get(name) for name in HURRIED}
    os.environ.update(HURRIED)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def unreachable(exc: BaseException) -> bool:
    """Whether an error says the tracking server did not answer (refused, timed out, gone) after MLflow's retries."""
    import requests

    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return True
    text = str(exc)
    return type(exc).__name__ == "MlflowException" and any(
        sign in text for sign in ("Max retries exceeded", "Connection refused", "Read timed out", "ConnectionError")
    )


def _terminate(mlflow_client: MlflowClient, run_id: str, status: str) -> None:
    """Mark a run on the way out of a failure; a server that does not answer at once leaves it for later.

    The next command that opens the store marks a run whose process is gone KILLED (reap_dead_runs).
    """
    if isinstance(mlflow_client, _Deferring):
        mlflow_client.set_terminated(run_id, status)
        return
    if _GONE:  # one call found the server gone: the others would wait for nothing
        return
    try:
        with hurried():
            mlflow_client.set_terminated(run_id, status)
    except Exception as exc:
        if not unreachable(exc):
            raise
        _GONE.append(run_id)


# Where a sqlite store records artifact locations (absolute paths or file:// URIs), and the folders MLflow
# and this pipeline name them after.
LOCATION_COLUMNS = {
    "experiments": "artifact_location",
    "runs": "artifact_uri",
    "logged_models": "artifact_location",
    "model_versions": "storage_location",
}
ARTIFACT_FOLDERS = ("mlartifacts", "mlruns")


def _relocate(database: Path) -> None:
    """Point a copied or moved sqlite store's artifact locations under its own folder.

    A sqlite store records absolute artifact locations, so a checkout copied with its store would
    write new artifacts into the folder it was copied from. Each experiment whose location lies in
    an `mlartifacts/` or `mlruns/` folder outside the store's own folder names the store's old
    folder: every location under that folder is rewritten to the same place under this one. MLflow
    has no call to move an experiment's artifacts, so this is SQL on its tables (under the open lock).
    """
    import sqlite3

    here = database.parent
    with closing(sqlite3.connect(database, timeout=60)) as db, db:
        moved = set()
        for (location,) in db.execute("SELECT artifact_location FROM experiments"):
            path = Path(location.removeprefix("file://")) if location.startswith(("file:///", "/")) else None
            if path is None or path.is_relative_to(here):
                continue
            old = next((p.parent for p in (path, *path.parents) if p.name in ARTIFACT_FOLDERS), None)
            if old is not None and old != here:
                moved.add(old)
        runs = 0  # runs whose artifacts moved: none for a store just created from another folder
        for old in moved:
            for table, column in LOCATION_COLUMNS.items():
                for before, after in ((old.as_uri() + "/", here.as_uri() + "/"), (f"{old}/", f"{here}/")):
                    changed = db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # names from LOCATION_COLUMNS
                        f"WHERE substr({column}, 1, ?) = ?",
                        (after, len(before) + 1, len(before), before),
                    ).rowcount
                    runs += changed if table == "runs" else 0
                    db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (after[:-1], before[:-1]))
    if runs:
        where = ", ".join(map(str, sorted(moved)))
        print(f"note: {database} was made in {where}: its artifact locations now point under {here}", file=sys.stderr)


def _check_reachable(uri: str) -> None:
    """A tracking server must answer within REACH_TIMEOUT_S; MLflow's own retries would take minutes to give up."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S)
    except requests.RequestException as exc:
        raise ValueError(
            f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer ({type(exc).__name__}): "
            "start it (`make server`) or unset MLFLOW_TRACKING_URI to use the local store"
        ) from None


class _Deferring:
    """An MlflowClient whose every call completes before a SIGINT/SIGTERM is acted on (see pipeline.interrupts)."""

    def __init__(self, wrapped: MlflowClient) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._wrapped, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with deferred():
                return attr(*args, **kwargs)

        return call


@contextmanager
def _sqlite_lock(uri: str, purpose: str) -> Iterator[None]:
    """A file lock beside a sqlite database (<db>.<purpose>.lock); nothing for other stores."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.{purpose}.lock", timeout=600):
        yield


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
            return mlflow_client.create_experiment(name, artifact_location=artifact_location(uri), tags=tags)
        except MlflowException as exc:  # another pipeline created it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = mlflow_client.get_experiment_by_name(name)
    for key, value in {"mlflow.note.content": description, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}.items():
        if key not in experiment.tags:
            mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


# ---------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunRef:
    """A run and whether this process owns its lifecycle (False for the run `mlflow run` made)."""

    run_id: str
    experiment_id: str
    owned: bool = True


_OPEN: dict[str, tuple[Any, RunRef]] = {}  # runs this process created and has not terminated yet
_GONE: list[str] = []  # runs left RUNNING because the server stopped answering while they were marked


def _opened(mlflow_client: MlflowClient, run: RunRef) -> RunRef:
    _OPEN[run.run_id] = (mlflow_client, run)
    return run


def terminate_open(status: str) -> None:
    """Mark every run this process opened and left RUNNING (a failure before `running` took it over)."""
    with deferred():
        while _OPEN:
            _, (mlflow_client, run) = _OPEN.popitem()
            _terminate(mlflow_client, run.run_id, status)


def owner_tags() -> dict[str, str]:
    """Tags naming the current process as owner of a run: the next run marks it KILLED if that process died."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _owner_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process that owner_tags() named was on this host and no longer exists."""
    pid = tags.get(PID_TAG, "")
    return tags.get(HOST_TAG) == socket.gethostname() and pid.isdigit() and not files.process_alive(int(pid))


def reap_dead_runs(mlflow_client: MlflowClient) -> list[str]:
    """Mark KILLED every RUNNING run, in any experiment, whose owning process on this host is gone (SIGKILL)."""
    host = socket.gethostname().replace("'", "")
    ids = [e.experiment_id for e in mlflow_client.search_experiments(max_results=50000)]
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    found = mlflow_client.search_runs(ids, query, max_results=1000) if ids else []
    dead = [r.info.run_id for r in found if _owner_gone(r.data.tags)]
    for run_id in dead:
        mlflow_client.set_terminated(run_id, "KILLED")
    return dead


def dead_owners_recorded(uri: str) -> bool:
    """Whether a sqlite store holds RUNNING runs whose owner on this host is gone; read with sqlite3, no MLflow."""
    import sqlite3

    database = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or not database.exists():
        return False
    query = (
        "SELECT host.value, pid.value FROM runs JOIN tags host ON host.run_uuid = runs.run_uuid AND host.key = ? "
        "JOIN tags pid ON pid.run_uuid = runs.run_uuid AND pid.key = ? WHERE runs.status = 'RUNNING'"
    )
    try:
        with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            owners = db.execute(query, (HOST_TAG, PID_TAG)).fetchall()
    except sqlite3.Error:  # not (yet) an MLflow store
        return False
    return any(_owner_gone({HOST_TAG: host, PID_TAG: pid}) for host, pid in owners)


def open_parent(
    mlflow_client: MlflowClient, experiment: str, uri: str, label: str, tags: Mapping[str, str], run_id: str | None
) -> tuple[RunRef, str, str | None]:
    """The execution's parent run: the one `mlflow run` made (run_id), else a new one in `experiment`.

    Returns the run, its name (`label`, or `label #n` for the n-th execution with that label) and, under
    `mlflow run`, a warning when its run is not in `experiment`.
    """
    tags = {**tags, LABEL_TAG: hashlib.sha256(label.encode()).hexdigest()[:16]}
    if run_id:
        run = mlflow_client.get_run(run_id)
        exp = mlflow_client.get_experiment(run.info.experiment_id)
        mlflow_client.log_batch(run_id, tags=_tags(tags))
        name = _unique_name(mlflow_client, RunRef(run_id, exp.experiment_id, owned=False), label, tags[LABEL_TAG])
        warning = None
        if exp.name != experiment:
            warning = (
                f"`mlflow run` created run {run_id} in experiment {exp.name!r}, not {experiment!r} where the "
                f"pipeline's other runs are: use `mlflow run . --experiment-name {experiment}` "
                f"(or export MLFLOW_EXPERIMENT_NAME={experiment}) to keep them together"
            )
        return RunRef(run_id, run.info.experiment_id, owned=False), name, warning
    exp_id = experiment_id(mlflow_client, experiment, uri)
    with _holding(mlflow_client):  # created and recorded as open in one step
        run = mlflow_client.create_run(exp_id, run_name=label, tags={**tags, **owner_tags()})
        ref = _opened(mlflow_client, RunRef(run.info.run_id, exp_id))
    return ref, _unique_name(mlflow_client, ref, label, tags[LABEL_TAG]), None


def _unique_name(mlflow_client: MlflowClient, run: RunRef, label: str, label_key: str) -> str:
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


def create_child(mlflow_client: MlflowClient, parent: RunRef, name: str, tags: Mapping[str, str]) -> RunRef:
    """A run nested under the parent in the UI."""
    tags = {**tags, **owner_tags(), PARENT_TAG: parent.run_id}
    with _holding(mlflow_client):
        run = mlflow_client.create_run(parent.experiment_id, run_name=name, tags=tags)
        return _opened(mlflow_client, RunRef(run.info.run_id, parent.experiment_id))


def run_ref(mlflow_client: MlflowClient, run_id: str, owned: bool = True) -> RunRef:
    """A run known by id; raises MlflowException when this store does not have it."""
    run = mlflow_client.get_run(run_id)
    return RunRef(run.info.run_id, run.info.experiment_id, owned)


def trained(mlflow_client: MlflowClient, experiment: str, checkpoint_sha256: str) -> tuple[RunRef, RunRef] | None:
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
            owned = PID_TAG in parent.data.tags  # `mlflow run` made the ones without: their FINISHED is its own
            return RunRef(parent_id, exp.experiment_id, owned), RunRef(run.info.run_id, exp.experiment_id)
    return None


def holds_checkpoint(uri: str, experiment: str, checkpoint_sha256: str) -> bool:
    """Whether the store holds a model run that wrote this checkpoint.

    A sqlite store is read with sqlite3 (a check DVC makes on every repro: MLflow's import and store open would
    cost it about 2 s); other stores through MLflow.
    """
    if not uri.startswith("sqlite:///"):
        return trained(client(uri), experiment, checkpoint_sha256) is not None
    import sqlite3

    database = Path(uri.removeprefix("sqlite:///"))
    if not database.exists():
        return False
    query = (
        "SELECT 1 FROM tags JOIN runs ON runs.run_uuid = tags.run_uuid JOIN experiments ON "
        "experiments.experiment_id = runs.experiment_id WHERE tags.key = ? AND tags.value = ? "
        "AND runs.lifecycle_stage = 'active' AND experiments.name = ? LIMIT 1"
    )
    try:
        with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            return db.execute(query, (CHECKPOINT_TAG, checkpoint_sha256, experiment)).fetchone() is not None
    except sqlite3.Error:  # not (yet) an MLflow store
        return False


def run_params(mlflow_client: MlflowClient, run_id: str) -> dict[str, str]:
    """A run's params."""
    return dict(mlflow_client.get_run(run_id).data.params)


def run_name(mlflow_client: MlflowClient, run_id: str) -> str:
    """The run's name as the UI shows it."""
    return mlflow_client.get_run(run_id).info.run_name or run_id


@contextmanager
def running(mlflow_client: MlflowClient, *runs: RunRef) -> Iterator[None]:
    """RUNNING while the body works; then FINISHED, or FAILED (KILLED on SIGINT/SIGTERM) if it raised.

    Runs we do not own (`mlflow run`'s) only get FAILED/KILLED: their FINISHED is MLflow's to set.
    A run a previous stage finished is RUNNING again while this one works on it, owned by this process.
    """
    with _holding(mlflow_client):  # every run taken over, or none (a signal raises only after the block)
        for run in runs:
            _OPEN[run.run_id] = (mlflow_client, run)
            if run.owned:
                mlflow_client.log_batch(run.run_id, tags=_tags(owner_tags()))
                mlflow_client.update_run(run.run_id, status="RUNNING")
    try:
        yield
    except BaseException as exc:
        with deferred():  # a second Ctrl-C must not leave the others RUNNING
            status = "KILLED" if isinstance(exc, KeyboardInterrupt | Interrupted) else "FAILED"
            for run in runs:
                _OPEN.pop(run.run_id, None)
                _terminate(mlflow_client, run.run_id, status)
        raise
    with _holding(mlflow_client):
        for run in runs:
            _OPEN.pop(run.run_id, None)
            if run.owned:
                mlflow_client.set_terminated(run.run_id, "FINISHED")


def _tags(tags: Mapping[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


def log_params(mlflow_client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """All params in one call, written as params.yaml would hold them (null, lists as JSON)."""
    from mlflow.entities import Param

    def text(value: Any) -> str:
        value = "null" if value is None else json.dumps(value) if isinstance(value, list) else str(value)
        return value[:MAX_PARAM_VALUE]

    mlflow_client.log_batch(run_id, params=[Param(k, text(v)) for k, v in params.items()])


def set_tags(mlflow_client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Several tags in one call."""
    mlflow_client.log_batch(run_id, tags=_tags(tags))


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
        local = Path(split.source)
        source_type, source = ("local", {"uri": local.resolve().as_uri()}) if local.suffix else ("code", {})
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


# ---------------------------------------------------------------- models and the registry
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


def log_model(
    mlflow_client: MlflowClient,
    run: RunRef,
    spec: dict[str, Any],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    split: Split,
) -> str:
    """Log the pyfunc into the run as a LoggedModel whose metrics are its evaluation metrics; returns its id.

    log_model() would link the run's step-0 metrics to the model (epoch 0's cost and accuracy), so
    the LoggedModel is created first, its evaluation metrics logged against it, and the artifacts
    logged with no active run; the run then lists it as an output.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput

    with _holding(mlflow_client):
        logged = mlflow.initialize_logged_model(
            name="model",
            source_run_id=run.run_id,
            params={k: str(v) for k, v in params.items()},
            experiment_id=run.experiment_id,
        )
        log_metrics(mlflow_client, run.run_id, metrics, split=split, model_id=logged.model_id)
        mlflow.pyfunc.log_model(name="model", model_id=logged.model_id, **spec)
        mlflow_client.log_outputs(run.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id


def register(mlflow_client: MlflowClient, name: str, model_id: str, tags: Mapping[str, str]) -> ModelVersion:
    """A new version of `name` from a logged model; a registered model made here says what it holds."""
    import mlflow

    with _holding(mlflow_client):
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
        with _sqlite_lock(uri, "registry"):
            yield
        return
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:  # the client defers signals around each call (see _Deferring)
            mlflow_client.create_registered_model(lock, tags={**owner_tags(), "since": str(time.time())})
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        holder = _lock_holder(mlflow_client, lock)
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
        mlflow_client.delete_registered_model(lock)


def _lock_holder(mlflow_client: MlflowClient, lock: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_registered_model(lock)
    except MlflowException:
        return None  # released meanwhile


def _stale(tags: Mapping[str, str]) -> bool:
    """A lock whose owner on this host is gone, or that is older than LOCK_STALE_S."""
    return _owner_gone(tags) or time.time() - float(tags.get("since") or 0) > LOCK_STALE_S


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
    runs = _history_runs(mlflow_client, name)
    if runs:
        run_id = runs[0].info.run_id
    else:
        description = HISTORY_DESCRIPTION.format(name=name)
        exp_id = experiment_id(mlflow_client, f"{name}{HISTORY_EXPERIMENT}", uri, description)
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


@contextmanager
def absent_as_error(what: str, uri: str, hint: str = "") -> Iterator[None]:
    """What this store does not have (a run, model or version) as one line naming it and the store."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ValueError(f"the store {uri} has no {what}{hint}") from None


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
