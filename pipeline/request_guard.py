"""The request guard of `mlflow models serve`: the checks MLflow's scoring server leaves out, and its metrics."""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import numpy as np
import pandas as pd

from pipeline.tables import TableError, cell_problem, feature_matrix, refused

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_log = logging.getLogger(__name__)
SERVER_APP_MODULE = "mlflow.pyfunc.scoring_server.app"  # what `mlflow models serve` runs under uvicorn


class RequestGuard:
    """ASGI wrapper around MLflow's scoring app: the request checks MLflow's server leaves out, and metrics.

    Refuses a missing Content-Type (MLflow answers 500) and an oversized body (MLflow reads any size)
    before MLflow parses anything; checks every feature cell of a JSON body with the validator batch
    scoring uses (MLflow reads `true` and "1" as numbers, and names no row); answers an empty batch
    with an empty list (MLflow refuses a column-less empty frame); drops `stack_trace` from error
    bodies (kept in the server log). GET /metrics gives Prometheus counts of /invocations answers by
    status and their latency.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_body_bytes: int, features: tuple[str, ...]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.app = app
        self.max_body_bytes = max_body_bytes  # 0: no limit
        self.features = features
        self.registry = CollectorRegistry()  # this app's own: no clash with anything else in the process
        self.answers = Counter(
            "invocations", "Answers to POST /invocations by HTTP status", ["status"], registry=self.registry
        )
        self.latency = Histogram(
            "invocation_seconds", "Time to answer POST /invocations", registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check and count /invocations requests, answer /metrics; everything else goes straight to MLflow."""
        if scope["type"] == "http" and scope["path"] == "/metrics" and scope["method"] == "GET":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            await _answer(send, 200, None, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())
            return
        if scope["type"] != "http" or scope["path"] != "/invocations" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]  # what an answer that never started counts as

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._invocation(scope, receive, counted)
        finally:
            self.answers.labels(str(status[0])).inc()
            self.latency.observe(time.perf_counter() - started)

    async def _invocation(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1").strip()
        if not content_type:
            await _answer(
                send,
                415,
                "missing Content-Type header; send application/json, text/csv or application/vnd.apache.parquet",
            )
            return
        declared = headers.get(b"content-length", b"")
        if self.max_body_bytes and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _answer(send, 413, self._too_large(int(declared)))
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        if content_type.startswith("application/json"):
            try:
                payload = json.loads(body)  # once, for both checks below
            except RecursionError:
                problem = "request body is not a table: JSON nested too deeply"
            except ValueError as exc:  # UnicodeDecodeError included
                problem = f"request body is not valid JSON: {exc}"
            else:
                if _is_empty_batch(payload):
                    await _answer(send, 200, None, b'{"predictions": []}')
                    return
                problem = json_problem(payload, self.features)
        elif content_type.startswith("text/csv"):
            problem = csv_problem(body, self.features)
        else:
            problem = None
        if problem:
            await _answer(send, 400, problem)
            return
        await self.app(scope, _replay(body, receive), _scrubbing(send))

    def _too_large(self, size: int) -> str:
        return (
            f"request body of {size} bytes is over the limit of {self.max_body_bytes} bytes; send smaller "
            "batches, or score files with `python -m pipeline predict`"
        )

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once a 413 was sent or the client went away."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if self.max_body_bytes and size > self.max_body_bytes:
                await _answer(send, 413, self._too_large(size))
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def json_problem(payload: Any, features: tuple[str, ...]) -> str | None:
    """The first feature cell of a parsed JSON payload that cell_problem refuses, by row."""
    if _plain_numbers(payload, features):
        return None
    for i, row in enumerate(_payload_rows(payload)):
        for name in features:
            if name in row:
                problem = cell_problem(row[name])
                if problem:
                    return f"request row {i + 1}, column {name!r}: {problem}"
    return None


def _plain_numbers(payload: Any, features: tuple[str, ...]) -> bool:
    """True when every feature cell of a dataframe_split payload is an int or float within float32: checked in bulk.

    The common request, and the cells json_problem would pass one by one: cell_problem, cell by cell, would
    cost more than the scoring. Anything else (booleans, strings, None, other payloads) is
    left to the cell-by-cell check, which names the first bad cell.
    """
    columns, rows = _split_table(payload)
    at = [j for j, name in enumerate(columns) if name in features]
    cells = [row[j] for row in rows for j in at]
    if not cells:  # another payload (records, inputs): cell by cell
        return False
    if not {type(cell) for cell in cells} <= {int, float}:  # type(True) is bool: refused cell by cell
        return False
    try:
        X = np.array(cells, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        return False
    return not refused(X).any()


def csv_problem(body: bytes, features: tuple[str, ...]) -> str | None:
    """The first row of a CSV body that is not what the client meant, or whose feature cell cell_problem refuses.

    Rows are named by line (the header is line 1). pandas' reader makes a row's extra field the index and
    shifts every column (the row `1,2,3` under `x1,x2` would be scored as x1=2, x2=3), and fills a short row
    with NaN: every row must have the header's number of fields, and every column a name.
    """
    import io

    problem = _csv_shape_problem(body)
    if problem:
        return problem
    try:
        frame = pd.read_csv(io.BytesIO(body), skipinitialspace=True)
    except Exception:  # pandas raises many types for text that is not a table: MLflow's parser says why
        return None
    if not set(features) <= set(frame.columns):
        return None  # MLflow names the missing columns
    try:
        feature_matrix(frame, features, first_row=2)
    except TableError as exc:
        return f"request {exc}"
    return None


def _csv_shape_problem(body: bytes) -> str | None:
    """A header with an unnamed column (an index), or a row with another number of fields than the header."""
    import csv
    import io

    try:
        reader = csv.reader(io.StringIO(body.decode("utf-8-sig"), newline=""), strict=True)
        header = next(reader, None)
        if header is None:
            return None  # no table at all: MLflow's parser says so
        unnamed = [i + 1 for i, name in enumerate(header) if not name.strip()]
        if unnamed:
            return (
                f"request CSV header: column {unnamed[0]} has no name (an index column?); send a header naming "
                "every column, and only the columns' values on each row"
            )
        for row in reader:
            if row and len(row) != len(header):  # (an empty line is skipped, as pandas does)
                return (
                    f"request row {reader.line_num}: {len(row)} fields, but the header has {len(header)} "
                    f"({','.join(header)})"
                )
    except UnicodeDecodeError:
        return None  # not text: MLflow's parser says why
    except csv.Error as exc:  # an unterminated quote, say
        return f"request body is not valid CSV at line {reader.line_num}: {exc}"
    return None


def _payload_rows(payload: Any) -> Iterator[dict[str, Any]]:
    """The rows of MLflow's JSON payloads as dicts; nothing for shapes MLflow itself will refuse."""
    if not isinstance(payload, dict) or len(payload) != 1:
        return
    ((key, table),) = payload.items()
    if key == "dataframe_split":
        columns, rows = _split_table(payload)
        yield from (dict(zip(columns, row, strict=True)) for row in rows)
    elif key in ("dataframe_records", "inputs", "instances") and isinstance(table, list):
        yield from (row for row in table if isinstance(row, dict))
    elif key in ("inputs", "instances") and isinstance(table, dict):
        columns = {k: v if isinstance(v, list) else [v] for k, v in table.items()}
        for i in range(max(map(len, columns.values()), default=0)):
            yield {k: v[i] for k, v in columns.items() if i < len(v)}


def _split_table(payload: Any) -> tuple[list[str | None], list[list[Any]]]:
    """A dataframe_split payload's column names (None for one that is not text) and its rows of the right length.

    Empty for any other payload, or one whose columns or data are not lists: MLflow refuses those itself.
    """
    table = payload.get("dataframe_split") if isinstance(payload, dict) and len(payload) == 1 else None
    columns, data = (table.get("columns"), table.get("data")) if isinstance(table, dict) else (None, None)
    if not (isinstance(columns, list) and isinstance(data, list)):
        return [], []
    rows = [row for row in data if isinstance(row, list) and len(row) == len(columns)]
    return [c if isinstance(c, str) else None for c in columns], rows


def _is_empty_batch(payload: Any) -> bool:
    """True for a JSON payload whose rows are an empty list (dataframe_split data, or the others)."""
    if not isinstance(payload, dict) or len(payload) != 1:
        return False
    ((key, rows),) = payload.items()
    if key == "dataframe_split" and isinstance(rows, dict):
        rows = rows.get("data")
    return key in ("dataframe_split", "dataframe_records", "inputs", "instances") and rows == []


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then defers to the real one."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _scrubbing(send: Send) -> Send:
    """A send that removes `stack_trace` from JSON error bodies and logs it instead."""
    held: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def scrubbed(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held["start"] = message
            return
        if "start" in held and message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _without_stack_trace(b"".join(chunks))
            start = held.pop("start")
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await send(message)

    return scrubbed


def _without_stack_trace(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict) or "stack_trace" not in payload:
        return body
    _log.warning("request failed: %s\n%s", payload.get("message"), payload.pop("stack_trace"))
    return json.dumps(payload).encode()


async def _answer(
    send: Send, status: int, message: str | None, body: bytes | None = None, content_type: bytes = b"application/json"
) -> None:
    """A JSON response in MLflow's error shape (or the given body)."""
    if body is None:
        code = "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
        body = json.dumps({"error_code": code, "message": message}).encode()
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _GuardedAppModule(types.ModuleType):
    """MLflow's app module, whose `app` attribute comes back wrapped in a RequestGuard."""

    _guard_settings: tuple[int, tuple[str, ...]]

    @property
    def app(self) -> RequestGuard:
        """The guard around the FastAPI app the module body assigned."""
        state = self.__dict__
        if "app" not in state:
            raise AttributeError("app")
        if state.get("_guarded") is None or state["_guarded"].app is not state["app"]:
            state["_guarded"] = RequestGuard(state["app"], *state["_guard_settings"])
        return state["_guarded"]


def guard_scoring_server(max_body_bytes: int, features: tuple[str, ...]) -> bool:
    """Wrap the app of `mlflow models serve` when the model is loaded to build it; True if installed.

    uvicorn imports mlflow.pyfunc.scoring_server.app, whose body loads the model (we run here) and
    then assigns `app`; uvicorn reads that attribute afterwards. Changing the module's class makes
    the read return the guarded app; outside the server this does nothing.
    """
    module = sys.modules.get(SERVER_APP_MODULE)
    if module is None or "app" in vars(module):
        return False  # not building the server (or it is built already)
    module.__dict__["_guard_settings"] = (max_body_bytes, features)
    module.__class__ = _GuardedAppModule
    return True
