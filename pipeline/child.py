"""Run a stage's compute half in a fresh process, beside the MLflow half in this one."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

_fork = {"safe": False}


def fork_is_safe() -> None:
    """Let InChild fork rather than start a new interpreter: this process is a fork of the warm server."""
    _fork["safe"] = True


def _one_thread() -> bool:
    """Whether this process runs a single thread, as forking it safely needs.

    Python's own count misses the threads native code started, such as a Ray client's gRPC ones, which outlive
    ray.shutdown(): a fork after them hung, or died without a word, when it started Ray again.
    """
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:  # no /proc (macOS): the threads Python knows of
        return threading.active_count() == 1


class InChild:
    """fn(*args) running in a fresh process, so its torch/sklearn imports overlap this process's MLflow ones.

    Use it as a context manager: leaving the block kills the child if it is still running.

    A small stage is dominated by imports (torch, sklearn, mlflow) and opening the store; on two cores
    overlapping them takes about one import's time off each of train and evaluate.
    With stream=True, fn gets a first argument `emit`: what it emits reaches result()'s on_items
    while fn goes on, so training metrics are persisted on the other core as they come.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, stream: bool = False) -> None:
        # Fork after torch's threads or an open sqlite connection is unsafe: a new interpreter, unless this is
        # a fork of the warm server (imports done, one thread; the child uses no store), whose fork costs nothing.
        warm = _fork["safe"] and _one_thread()
        context = multiprocessing.get_context("fork" if warm else "spawn")
        self._name = fn.__name__
        self._conn, child_end = context.Pipe(duplex=False)
        target_args = (child_end, fn, args, stream)
        self._process = context.Process(target=_child_main, args=target_args, daemon=True)
        self._process.start()
        child_end.close()

    def __enter__(self) -> InChild:
        return self

    def __exit__(self, *exc: object) -> None:
        """If this process failed or was interrupted first, the child must not outlive it (nor go on training)."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=5)

    def result(self, on_items: Callable[[list[Any]], None] | None = None) -> Any:
        """The function's return value, or its exception raised here; emitted items go to on_items.

        on_items gets every item that has arrived since its last call, in order: one call for many items
        when they come faster than it handles them.
        """
        try:
            while True:
                kind, value = self._conn.recv()
                items = []
                while kind == "item":
                    items.append(value)
                    if not self._conn.poll():
                        kind = None
                        break
                    kind, value = self._conn.recv()
                if items and on_items is not None:
                    on_items(items)
                if kind is not None:
                    break
        except EOFError:
            self._process.join()
            raise RuntimeError(f"the {self._name} process died (exit code {self._process.exitcode})") from None
        finally:
            self._conn.close()
        if kind == "error":
            raise value
        return value


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple, stream: bool) -> None:
    def emit(item: Any) -> None:
        conn.send(("item", item))

    try:
        outcome = ("result", fn(emit, *args) if stream else fn(*args))
    except BaseException as exc:
        exc.add_note(f"in the {fn.__name__} process:\n{traceback.format_exc()}")
        outcome = ("error", exc)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        conn.send(outcome)
    except OSError:
        pass  # the parent stopped listening (it failed first and says why)
    except Exception as exc:  # an unpicklable result or exception: say so rather than hang
        conn.send(("error", RuntimeError(f"{fn.__name__}: cannot send the outcome back: {exc!r}")))
    conn.close()
    os._exit(0)  # skip interpreter teardown: slow with torch and sklearn loaded
