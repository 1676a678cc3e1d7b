"""server: a team's tracking server in the foreground: PostgreSQL behind `mlflow server`, state in one folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

READY_TIMEOUT_S = 60  # PostgreSQL and MLflow (which migrates a new database first) each get this long to answer


@dataclass(frozen=True)
class Layout:
    """Everything the server keeps, under one folder: the database cluster, its socket, the artifacts, logs."""

    root: Path

    @property
    def database(self) -> Path:
        """PostgreSQL's data directory (owned by the postgres user when run as root)."""
        return self.root / "postgres"

    @property
    def sockets(self) -> Path:
        """Where PostgreSQL listens: a Unix socket only, so no TCP port to collide or expose."""
        return self.root / "run"

    @property
    def artifacts(self) -> Path:
        """Where `mlflow server` keeps the artifacts it proxies."""
        return self.root / "artifacts"

    @property
    def log(self) -> Path:
        """PostgreSQL's log."""
        return self.root / "postgres.log"

    def database_uri(self) -> str:
        """The SQLAlchemy URI of the MLflow database, over the Unix socket."""
        return f"postgresql://mlflow@/mlflow?host={self.sockets}"


def pg_bindir() -> Path:
    """PostgreSQL's binaries, from `pg_config --bindir` (Debian keeps them off PATH)."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        raise ValueError("PostgreSQL not found: `pg_config` is not on PATH (Debian: apt install postgresql)")
    return Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: as root, its commands run as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _own(layout: Layout) -> None:
    """Make the folders PostgreSQL writes to its own (as root), and check it can reach them."""
    for folder in (layout.database, layout.sockets):
        folder.mkdir(parents=True, exist_ok=True)
    layout.artifacts.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    for folder in (layout.database, layout.sockets):
        shutil.chown(folder, "postgres", "postgres")
    layout.database.chmod(0o700)
    for parent in layout.root.parents:  # the postgres user must be able to walk down to its folders
        if not parent.stat().st_mode & 0o001:
            raise ValueError(f"{parent}: the postgres user cannot enter it (chmod o+x {parent}, or choose --folder)")
    shutil.chown(layout.root, "root", "postgres")
    layout.root.chmod(0o750)


def _run(args: list[str | Path], what: str) -> None:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")


def _wait(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            state = f"exited {proc.returncode}" if proc.returncode is not None else "did not answer in time"
            raise ValueError(f"{what} {state}\n{tail}".strip())
        time.sleep(0.2)


def _stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM a process group we started, then SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def execute(folder: Path, host: str, port: int) -> None:
    """Start PostgreSQL, then `mlflow server` on it with proxied artifacts; stop both on Ctrl-C or SIGTERM."""
    import requests

    bindir = pg_bindir()
    layout = Layout(folder.resolve())
    url = f"http://{host}:{port}"

    def answers() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    if answers():
        raise ValueError(f"something already answers on {url}: stop it, or choose another SERVER_PORT")
    status = [*_as_postgres(), bindir / "pg_ctl", "status", "-D", layout.database]
    if layout.database.exists() and subprocess.run(status, capture_output=True).returncode == 0:
        raise ValueError(f"{layout.database}: a PostgreSQL server already runs on it (another `make server`?)")
    _own(layout)
    postgres = server = None
    try:
        if not (layout.database / "PG_VERSION").exists():
            click.echo(f"creating a PostgreSQL cluster in {layout.database}")
            _run([*_as_postgres(), bindir / "initdb", "-D", layout.database, "-U", "mlflow", "-A", "trust"], "initdb")
        log = layout.log.open("a")
        if os.geteuid() == 0:
            shutil.chown(layout.log, "postgres", "postgres")
        postgres = subprocess.Popen(
            [*_as_postgres(), bindir / "postgres", "-D", layout.database, "-k", layout.sockets,
             "-c", "listen_addresses=", "-c", "unix_socket_permissions=0770"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        ready = [bindir / "pg_isready", "-q", "-h", layout.sockets, "-U", "mlflow"]
        _wait(lambda: subprocess.run(ready).returncode == 0, postgres, "PostgreSQL", layout.log)
        exists = subprocess.run(
            [bindir / "psql", "-h", layout.sockets, "-U", "mlflow", "-d", "postgres", "-tAc",
             "SELECT 1 FROM pg_database WHERE datname = 'mlflow'"],
            capture_output=True, text=True,
        )  # fmt: skip
        if exists.stdout.strip() != "1":
            _run([bindir / "createdb", "-h", layout.sockets, "-U", "mlflow", "mlflow"], "createdb")
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", layout.database_uri(),
             "--artifacts-destination", str(layout.artifacts), "--host", host, "--port", str(port)],
            start_new_session=True,
        )  # fmt: skip
        _wait(answers, server, f"mlflow server on {url}")
        click.echo(
            f"MLflow tracking server on {url}: PostgreSQL in {layout.database}, artifacts in {layout.artifacts}.\n"
            f"  export MLFLOW_TRACKING_URI={url}   # then make run, make serve, python -m pipeline predict ...\n"
            "Ctrl-C stops both."
        )
        code = server.wait()
        raise ValueError(f"mlflow server exited ({code})")
    finally:
        _stop(server)
        if postgres is not None and postgres.poll() is None:
            stop = [*_as_postgres(), bindir / "pg_ctl", "stop", "-D", layout.database, "-m", "fast", "-w"]
            subprocess.run([str(a) for a in stop], capture_output=True)
            _stop(postgres)
