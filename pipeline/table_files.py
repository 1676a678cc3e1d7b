"""Where a table's files are: a local path, or a URI on a filesystem pyarrow opens; checked, and a dataset listed.

A Location is a local file's Path, or the URI of a file on an object store (s3://bucket/key, gs://, abfs://,
hdfs://) with its options in the query (?endpoint_override=...) and credentials from the environment, which
pipeline.tables reads alike.
"""

from __future__ import annotations

import fnmatch
import glob
import itertools
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.tables import Location, TableError, file_format


def location(given: str) -> Location:
    """A path as a user gave it: a URI stays text (pyarrow opens it on its filesystem), anything else a Path."""
    return given if "://" in given else Path(given)


def _filesystem(uri: str) -> tuple[Any, str]:
    """The pyarrow filesystem of a URI and the path on it."""
    from pyarrow.fs import FileSystem

    try:
        return FileSystem.from_uri(uri)
    except Exception as exc:  # an unknown scheme, a bad option, a bucket whose region cannot be found
        raise TableError(f"{uri}: cannot open: {exc}") from None


def _info(fs: Any, what: Any, uri: str) -> Any:
    """fs.get_file_info(what); a store out of reach or a request refused is a TableError naming the URI."""
    try:
        return fs.get_file_info(what)
    except OSError as exc:
        raise TableError(f"{uri}: cannot read: {exc}") from None


def check_file(path: Location) -> str:
    """A readable CSV or Parquet file: its format, or an error naming what is wrong with the path."""
    fmt = file_format(path)
    if isinstance(path, str):
        from pyarrow.fs import FileType

        if fmt == "csv":  # read in byte ranges cut at line ends, by Python: a local file's
            raise TableError(f"{path}: a CSV must be a local file; on an object store, write the table as Parquet")
        fs, key = _filesystem(path)
        kind = _info(fs, key, path).type
        is_dir, is_file = kind == FileType.Directory, kind == FileType.File
    else:
        is_dir, is_file = path.is_dir(), path.is_file()
    if is_dir:
        raise TableError(f"{path}: is a directory, not a {fmt} file")
    if not is_file:
        raise TableError(f"{path}: file not found")
    return fmt


def dataset_files(source: str) -> list[Location] | None:
    """The files of a Parquet dataset in name order; None when `source` is neither a folder nor a glob.

    A folder's .parquet files at any depth (as Spark, pandas and pyarrow write a partitioned table; hidden and
    `_` files such as `_SUCCESS` left out), or those a glob matches; on a local disk or, by URI, an object store.
    """
    path = location(source)
    if isinstance(path, str):
        return _dataset_uris(path)
    if path.is_dir() and path.suffix.lower() != ".csv":  # Spark names a dataset's folder `<table>.parquet`
        found = sorted(p for p in path.rglob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))
    elif glob.has_magic(source):
        found = sorted(Path(p) for p in glob.glob(source, recursive=True) if p.lower().endswith(".parquet"))
    else:
        return None
    if not found:
        raise TableError(f"{source}: no .parquet file in this folder or glob")
    return found


def _dataset_uris(source: str) -> list[Location] | None:
    """dataset_files on a pyarrow filesystem: a folder (a prefix) listed at any depth, or a glob's matches."""
    from pyarrow.fs import FileSelector, FileType

    fs, path = _filesystem(source)
    pattern = path.split("/") if glob.has_magic(path) else None
    if pattern:  # list below the glob's fixed folders and match: an object store has no globbing of its own
        base = "/".join(itertools.takewhile(lambda part: not glob.has_magic(part), pattern))
    else:
        kind = _info(fs, path, source).type
        if kind == FileType.NotFound:
            raise TableError(f"{source}: not found{_bucket_missing(fs, path, source)}")
        if kind != FileType.Directory or path.lower().endswith(".csv"):
            return None
        base = path
    listed = _info(fs, FileSelector(base, recursive=True, allow_not_found=True), source)
    found = sorted(
        info.path for info in listed
        if info.type == FileType.File and info.path.lower().endswith(".parquet")
        and not info.base_name.startswith((".", "_")) and (not pattern or _matches(info.path.split("/"), pattern))
    )  # fmt: skip
    if not found:
        raise TableError(f"{source}: no .parquet file in this folder or glob{_bucket_missing(fs, base, source)}")
    given = urlsplit(source)  # each file by the same scheme and options
    return [f"{given.scheme}://{key}" + (f"?{given.query}" if given.query else "") for key in found]


def _bucket_missing(fs: Any, path: str, source: str) -> str:
    """What to add where an object store's path names a bucket (a container) that does not exist; else ""."""
    from pyarrow.fs import FileType

    scheme, bucket = urlsplit(source).scheme, path.split("/")[0]
    kind = {"s3": "bucket", "gs": "bucket", "gcs": "bucket", "abfs": "container", "abfss": "container"}.get(scheme)
    if kind and bucket and _info(fs, bucket, source).type == FileType.NotFound:
        return f": there is no {kind} {bucket!r} at {scheme}://"
    return ""


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """A path's components against a glob's, as glob.glob(recursive=True) matches: `**` is any number of folders."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])
