"""SIGINT, SIGTERM and SIGHUP as one exception, raised between store calls and never inside one.

A write to the sqlite store cut mid-transaction keeps the database locked against this very process,
which then cannot mark its run KILLED (seen as a long hang and a traceback after Ctrl-C). So a
signal that arrives inside `deferred()` is held until the block ends; anywhere else it raises at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal
_state: dict[str, int | None] = {"depth": 0, "pending": None}


class Interrupted(BaseException):
    """The process got SIGINT, SIGTERM or SIGHUP (a BaseException: `except Exception` lets it by)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def install() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into Interrupted in this process (the main thread of a CLI command)."""
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def _handler(signum: int, frame: FrameType | None) -> None:
    signalled(signum)


def signalled(signum: int) -> None:
    """Act on signum as if it had just arrived: raise Interrupted, or hold it inside `deferred()`."""
    if _state["depth"]:
        _state["pending"] = signum
        return
    raise Interrupted(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while the block runs; raise Interrupted as it ends if one came."""
    _state["depth"] = (_state["depth"] or 0) + 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if not _state["depth"] and pending is not None:
            _state["pending"] = None
            raise Interrupted(pending)
