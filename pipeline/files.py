"""Atomic writes: a reader sees the old file or the new one, never half of either.

Temp files and folders are named `.<name>.<pid>-<random>.tmp` beside their target: a process that
fails or is interrupted removes its own; one killed outright (SIGKILL, power loss) leaves them, and
the next write to the same target removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

TEMP_NAME = re.compile(r"\..+\.(\d+)-[^.]*\.tmp")  # `.<name>.<pid>-<random>.tmp`, as _prefix and mkstemp make
# The kernel gives a file's page cache folios as large as each write (up to 2 MiB); on a VM whose host backs guest
# memory lazily (these machines'), 2 MiB blocks are the ones handed back to the host when free, and writing into
# them costs several times what writes of this size do (benchmarks/pipeline_scale.py: prepare writes X this way).
WRITE_BYTES = 1 << 18


def _prefix(path: Path) -> str:
    """Temp names beside `path` carry this process's id (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    return f".{path.name}.{os.getpid()}-"


def remove_stale(path: Path) -> list[Path]:
    """Remove the temp files and folders beside `path` left by processes that no longer exist."""
    return _remove_dead(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove every temp file and folder in `folder` whose process no longer exists (whatever its target)."""
    return _remove_dead(folder.glob(".*.tmp")) if folder.is_dir() else []


def _remove_dead(candidates: Iterable[Path]) -> list[Path]:
    removed = []
    for tmp in candidates:
        owner = TEMP_NAME.fullmatch(tmp.name)
        if owner and not process_alive(int(owner.group(1))):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: put it straight back (once per process)
    os.umask(mask)
    return mask


def _temp_file(path: Path) -> tuple[int, str]:
    """A temp file beside `path` with the mode an ordinary new file gets (mkstemp gives 0600: owner only)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def write_all(fh: BinaryIO, data: bytes | memoryview) -> None:
    """Write `data` to a binary file at its position, WRITE_BYTES at a time."""
    view = memoryview(data).cast("B")
    for start in range(0, len(view), WRITE_BYTES):
        fh.write(view[start : start + WRITE_BYTES])


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write_all(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write pretty, key-sorted JSON (stable bytes for DVC hashes)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """Read JSON, naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: not found (run the stage that writes it first)") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc


def write_dir(path: str | Path, fill: Callable[[Path], None]) -> None:
    """Build a directory in a temp sibling with `fill`, then swap it in place of `path`."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp"))
    tmp.chmod(0o777 & ~_umask())  # as an ordinary new folder (mkdtemp's is 0700: owner only)
    old = path.with_name(f".{path.name}.old")
    try:
        fill(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    fd, name = _temp_file(path)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
