"""A team's MLflow tracking server in the foreground: PostgreSQL behind `mlflow server`, all its state in one folder."""

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

from pipeline import files

READY_TIMEOUT_S = 60  # PostgreSQL and MLflow (which migrates a new database first) each get this long to answer
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent exits


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

    @property
    def owner(self) -> Path:
        """Which `pipeline server` runs on this folder, and the processes it started (to clean up after a crash)."""
        return self.root / "owner.json"

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


def _die_with_parent(signum: int) -> None:
    """Have the kernel send `signum` to this process when its parent exits, however it exits (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


def _child(signum: int, user: str | None = None) -> Callable[[], None]:
    """What a server process runs before it starts: its own user (PostgreSQL's, as root), dying with us."""
    parent = os.getpid()
    ids = None
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        ids = entry.pw_uid, entry.pw_gid

    def setup() -> None:
        if ids is not None:  # before the death signal: a change of user clears it
            os.setgroups([])
            os.setgid(ids[1])
            os.setuid(ids[0])
        _die_with_parent(signum)
        if os.getppid() != parent:  # we died before the kernel was told
            os._exit(1)

    return setup


def _command_line(pid: int) -> str:
    """A process's command line ('' if it is gone or not ours to read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(pid: int, marker: str) -> bool:
    """Whether `pid` is alive and its command line names `marker` (our folder): never a reused pid's process."""
    return pid > 0 and files.process_alive(pid) and marker in _command_line(pid)


def _take_over(layout: Layout, bindir: Path) -> None:
    """Refuse while a live `pipeline server` owns the folder; else clear what a dead one left running or locked.

    The processes a crashed server started (recorded in owner.json) are stopped if they are still ours; a
    PostgreSQL lock file whose process is gone, or is not this folder's postgres, is removed.
    """
    owner = files.read_json(layout.owner) if layout.owner.exists() else {}
    if _ours(int(owner.get("server", 0)), "pipeline"):
        raise ValueError(
            f"{layout.root}: `pipeline server` (pid {owner['server']}) already runs on this folder; stop it, or "
            "choose another --folder"
        )
    for name in ("mlflow", "postgres"):
        pid = int(owner.get(name, 0))
        if _ours(pid, str(layout.root)):
            click.echo(f"stopping the {name} server a stopped `pipeline server` left running (pid {pid})")
            os.kill(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)  # PostgreSQL: fast shutdown
            deadline = time.monotonic() + 15
            while files.process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if files.process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    lock = layout.database / "postmaster.pid"
    if lock.exists():
        first = lock.read_text(errors="replace").split("\n", 1)[0].strip()
        if first.isdigit() and _ours(int(first), str(layout.database)):
            stop = [*_as_postgres(), bindir / "pg_ctl", "stop", "-D", layout.database, "-m", "fast", "-w"]
            _run(stop, "stopping the PostgreSQL server left running on this folder")
        else:
            lock.unlink(missing_ok=True)  # a crash's lock file: its process is gone (or the pid is another's)


def run(folder: Path, host: str, port: int, workers: int, jobs: bool) -> None:
    """Start PostgreSQL, then `mlflow server` on it with proxied artifacts; stop both on Ctrl-C, kill or hangup.

    Both die with this process, however it ends (SIGKILL included: the kernel signals them), and it dies with
    whatever started it (`make`, a closed terminal). `workers` uvicorn processes serve requests; MLflow's job
    runner (huey consumers, for GenAI jobs) only with `jobs`.
    """
    import requests

    _die_with_parent(signal.SIGTERM)
    bindir = pg_bindir()
    layout = Layout(folder.resolve())
    url = f"http://{host}:{port}"

    def answers() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    if layout.root.exists():
        _take_over(layout, bindir)
    if answers():
        raise ValueError(f"something already answers on {url}: stop it, or choose another SERVER_PORT")
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
            [bindir / "postgres", "-D", layout.database, "-k", layout.sockets,
             "-c", "listen_addresses=", "-c", "unix_socket_permissions=0770"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_child(signal.SIGINT, "postgres" if os.geteuid() == 0 else None),  # SIGINT: fast shutdown
        )  # fmt: skip
        files.write_json(layout.owner, {"server": os.getpid(), "postgres": postgres.pid})
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
             "--artifacts-destination", str(layout.artifacts), "--host", host, "--port", str(port),
             "--workers", str(workers)],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(jobs).lower()},
            start_new_session=True, preexec_fn=_child(signal.SIGTERM),  # MLflow forwards it to uvicorn
        )  # fmt: skip
        files.write_json(layout.owner, {"server": os.getpid(), "postgres": postgres.pid, "mlflow": server.pid})
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
        layout.owner.unlink(missing_ok=True)
