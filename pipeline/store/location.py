"""Where the MLflow store is: its URI and identity, where its artifacts go; a sqlite store read and relocated in SQL."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any


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


# Where a sqlite store records artifact locations (absolute paths or file:// URIs), and the folders MLflow
# and this pipeline name them after.
LOCATION_COLUMNS = {
    "experiments": "artifact_location",
    "runs": "artifact_uri",
    "logged_models": "artifact_location",
    "model_versions": "storage_location",
}

ARTIFACT_FOLDERS = ("mlartifacts", "mlruns")


def relocate(database: Path) -> None:
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


def read_sqlite(uri: str, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The rows of a read-only query on a sqlite store, with sqlite3 rather than MLflow (whose import costs more).

    No rows for any other store, for a file not there, or for one that is not (yet) an MLflow store.
    """
    import sqlite3

    database = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or not database.exists():
        return []
    try:
        with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            return db.execute(query, args).fetchall()
    except sqlite3.Error:
        return []


@contextmanager
def sqlite_lock(uri: str, purpose: str) -> Iterator[None]:
    """A file lock beside a sqlite database (<db>.<purpose>.lock); nothing for other stores."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.{purpose}.lock", timeout=600):
        yield
