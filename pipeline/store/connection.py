"""Opening the store, and runs that end true: signal-safe sqlite calls, bounded network calls, dead runs reaped."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import files
from pipeline.interrupts import Interrupted, deferred
from pipeline.store import location

if TYPE_CHECKING:  # mlflow is slow to import: only the functions that talk to the store import it
    from mlflow import MlflowClient


REACH_TIMEOUT_S = 5  # how long a tracking server may take to answer the first request

# MLflow's defaults retry a server that does not answer 7 times over minutes, each try waiting up to 120 s: a
# dead server hung a pipeline for good. Bounded here (unless set): 2 retries, 10 s each, backoff factor 1.
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

HURRIED = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}

HOST_TAG, PID_TAG = "pipeline.host", "pipeline.pid"  # which process owns a RUNNING run (to spot dead owners)


def connect(uri: str) -> MlflowClient:
    """A client bound to one store (tracking and registry); fluent calls go to the same store.

    A new sqlite store is created and migrated by the first client that opens it; several processes
    doing that at once leave it broken for good (`table _alembic_tmp_tags already exists`), so for
    sqlite the opening is serialised by a file lock beside the database.
    """
    import mlflow
    from mlflow import MlflowClient

    sqlite = uri.startswith("sqlite:///")
    kind = _deferring_client() if sqlite else MlflowClient
    _check_reachable(uri)
    for name, value in HTTP_BOUNDS.items():  # MLflow's own settings, unless the user set them
        os.environ.setdefault(name, value)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with location.sqlite_lock(uri, "open"), deferred() if sqlite else nullcontext():
            opened = kind(tracking_uri=uri, registry_uri=uri)
            opened.search_experiments(max_results=1)  # the store exists and is migrated before anyone else opens it
            if sqlite:
                location.relocate(Path(uri.removeprefix("sqlite:///")).resolve())
            reap_dead_runs(opened)  # runs a SIGKILLed process left RUNNING: whatever command comes next
    except Exception as exc:  # a bad URI or location fails in many libraries' ways: one message naming it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot open the MLflow store {uri} (MLFLOW_TRACKING_URI): {first}") from exc
    return opened


@functools.cache
def _deferring_client() -> type[MlflowClient]:
    """An MlflowClient whose every public call completes before a signal is acted on (see pipeline.interrupts).

    For a sqlite store: a write cut by a signal locks the store against this very process. A request to a
    server is safe to cut, and a server that stopped answering must not hold Ctrl-C for its retries.
    """
    from mlflow import MlflowClient

    class DeferringClient(MlflowClient):
        def __getattribute__(self, name: str) -> Any:
            attr = super().__getattribute__(name)
            if name.startswith("_") or not callable(attr):
                return attr

            @functools.wraps(attr)
            def call(*args: Any, **kwargs: Any) -> Any:
                with deferred():
                    return attr(*args, **kwargs)

            return call

    return DeferringClient


def holding(mlflow_client: MlflowClient) -> AbstractContextManager[None]:
    """Hold SIGINT/SIGTERM while a block of calls to a sqlite store runs (see _deferring_client)."""
    return deferred() if isinstance(mlflow_client, _deferring_client()) else nullcontext()


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


UNANSWERED = ("Connection refused", "Read timed out", "Max retries exceeded", "ConnectionError")  # most telling first


def unreachable(exc: BaseException) -> str | None:
    """How an error says the tracking server did not answer after MLflow's retries (e.g. `Connection refused`).

    None when it says something else. MLflow's HTTP client wraps the cause in a message that runs to the whole
    retry history: the gist is the first sign of UNANSWERED in it.
    """
    import requests

    text = str(exc)
    sign = next((sign for sign in UNANSWERED if sign in text), None)
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return sign or type(exc).__name__
    return sign if type(exc).__name__ == "MlflowException" else None


def terminate(mlflow_client: MlflowClient, run_id: str, status: str) -> None:
    """Mark a run on the way out of a failure; a server that does not answer at once leaves it for later.

    The next command that opens the store marks a run whose process is gone KILLED (reap_dead_runs).
    """
    if isinstance(mlflow_client, _deferring_client()):
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


@dataclass(frozen=True)
class RunRef:
    """A run and whether this process owns its lifecycle (False for the run `mlflow run` made)."""

    run_id: str
    experiment_id: str
    owned: bool = True


_OPEN: dict[str, tuple[Any, RunRef]] = {}  # runs this process created and has not terminated yet

_GONE: list[str] = []  # runs left RUNNING because the server stopped answering while they were marked


def opened(mlflow_client: MlflowClient, run: RunRef) -> RunRef:
    """Note a run this process just created: marked FAILED or KILLED if the process fails before `running`."""
    _OPEN[run.run_id] = (mlflow_client, run)
    return run


def terminate_open(status: str) -> None:
    """Mark every run this process opened and left RUNNING (a failure before `running` took it over)."""
    with deferred():
        while _OPEN:
            _, (mlflow_client, run) = _OPEN.popitem()
            terminate(mlflow_client, run.run_id, status)


def owner_tags() -> dict[str, str]:
    """Tags naming the current process as owner of a run: the next run marks it KILLED if that process died."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def owner_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process that owner_tags() named was on this host and no longer exists."""
    pid = tags.get(PID_TAG, "")
    return tags.get(HOST_TAG) == socket.gethostname() and pid.isdigit() and not files.process_alive(int(pid))


def reap_dead_runs(mlflow_client: MlflowClient) -> list[str]:
    """Mark KILLED every RUNNING run, in any experiment, whose owning process on this host is gone (SIGKILL)."""
    host = socket.gethostname().replace("'", "")
    ids = [e.experiment_id for e in mlflow_client.search_experiments(max_results=50000)]
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    found = mlflow_client.search_runs(ids, query, max_results=1000) if ids else []
    dead = [r.info.run_id for r in found if owner_gone(r.data.tags)]
    for run_id in dead:
        mlflow_client.set_terminated(run_id, "KILLED")
    return dead


def dead_owners_recorded(uri: str) -> bool:
    """Whether a sqlite store holds RUNNING runs whose owner on this host is gone; read with sqlite3, no MLflow."""
    query = (
        "SELECT host.value, pid.value FROM runs JOIN tags host ON host.run_uuid = runs.run_uuid AND host.key = ? "
        "JOIN tags pid ON pid.run_uuid = runs.run_uuid AND pid.key = ? WHERE runs.status = 'RUNNING'"
    )
    owners = location.read_sqlite(uri, query, (HOST_TAG, PID_TAG))
    return any(owner_gone({HOST_TAG: host, PID_TAG: pid}) for host, pid in owners)


@contextmanager
def running(mlflow_client: MlflowClient, *runs: RunRef) -> Iterator[None]:
    """RUNNING while the body works; then FINISHED, or FAILED (KILLED on SIGINT/SIGTERM) if it raised.

    Runs we do not own (`mlflow run`'s) only get FAILED/KILLED: their FINISHED is MLflow's to set.
    A run a previous stage finished is RUNNING again while this one works on it, owned by this process.
    """
    with holding(mlflow_client):  # every run taken over, or none (a signal raises only after the block)
        for run in runs:
            created_here = run.run_id in _OPEN  # RUNNING already, and tagged with this process as its owner
            _OPEN[run.run_id] = (mlflow_client, run)
            if run.owned and not created_here:
                mlflow_client.log_batch(run.run_id, tags=as_tags(owner_tags()))
                mlflow_client.update_run(run.run_id, status="RUNNING")
    try:
        yield
    except BaseException as exc:
        with deferred():  # a second Ctrl-C must not leave the others RUNNING
            status = "KILLED" if isinstance(exc, KeyboardInterrupt | Interrupted) else "FAILED"
            for run in runs:
                _OPEN.pop(run.run_id, None)
                terminate(mlflow_client, run.run_id, status)
        raise
    with holding(mlflow_client):
        for run in runs:
            _OPEN.pop(run.run_id, None)
            if run.owned:
                mlflow_client.set_terminated(run.run_id, "FINISHED")


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


def as_tags(tags: Mapping[str, Any]) -> list[Any]:
    """Tags as MLflow's RunTag entities, for log_batch."""
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]
