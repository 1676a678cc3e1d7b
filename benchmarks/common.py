"""What the benchmarks share: a clean environment, a copy of the project in a temp git repo, a process-tree sampler."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.forkserver import SERVE

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pipeline", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots", ".dvcignore", ".gitignore")
STAGES = ("prepare", "train", "evaluate", "register", "predict")


def clean_env() -> dict[str, str]:
    """This venv first on PATH, no MLflow or DVC settings from the caller's shell, a git identity."""
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="b")
    env.update(GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    return env


def project_copy(root: Path, extra: tuple[str, ...] = (), edit: Callable[[Path], None] | None = None) -> Path:
    """The project's code and config (plus `extra` paths) copied to `root`, `edit`ed, committed to a new git repo."""
    for name in (*PROJECT_FILES, *extra):
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    if edit:
        edit(root)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "b"]):
        subprocess.run(cmd, cwd=root, env=clean_env(), check=True, capture_output=True)
    return root


def stage_of(cmd: list[str]) -> str | None:
    """The stage a `python -m pipeline <stage>` process runs (None for anything else): a name for Watch."""
    return cmd[3] if len(cmd) > 3 and cmd[1:3] == ["-m", "pipeline"] and cmd[3] in STAGES else None


def _tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc (children of every thread)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            tasks = list(Path(f"/proc/{pids[i]}/task").glob("*/children"))
        except OSError:  # the process ended meanwhile
            tasks = []
        pids += [int(c) for task in tasks for c in _read(str(task)).split()]  # b"" if the thread ended
        i += 1
    return pids


def _pss(pid: int) -> int:
    """A process's proportional set size in bytes (0 if it has ended)."""
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith(b"Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _forkservers() -> list[int]:
    """The pids of the warm pipeline servers running now, and of their forks."""
    flag = b"\0" + SERVE.encode() + b"\0"
    return [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline") if flag in _read(str(p))]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


class Watch:
    """Run commands, sampling their process tree's summed PSS every 20 ms; per named process when `name_of` says.

    PSS, not RSS: a page several processes share counts once in the sum (split among them), as a stage forked from
    the warm server shares its imports with its own child, where summed RSS counted them twice. For one process,
    or processes that share only libraries, the two differ by a few MiB.

    Reads /proc directly: psutil's process walk every 20 ms took enough of one of the two cores to stall
    torch's threads (the train stage took 46 s instead of 6 s under it).
    """

    def __init__(self, name_of: Callable[[list[str]], str | None] = lambda cmd: None) -> None:
        self.name_of, self.peak = name_of, 0
        self.named: dict[str, dict[str, float]] = {}  # name -> first and last seen, peak RSS of the tree

    def run(self, args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
        """Wall seconds, exit status and the tail of the output of one command."""
        started = time.perf_counter()
        with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would stall the command
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
            servers, scanned = [], 0.0
            while proc.poll() is None:
                if time.perf_counter() - scanned > 1:
                    servers, scanned = _forkservers(), time.perf_counter()
                # A stage forked from the warm server (pipeline/forkserver.py) is the server's child, not DVC's.
                # (Its forks show the server's command line too: each pid counted once.)
                pids = list(dict.fromkeys(_tree(proc.pid) + [p for server in servers for p in _tree(server)[1:]]))
                rss = sum(_pss(p) for p in pids)
                self.peak = max(self.peak, rss)
                cmds = [_read(f"/proc/{p}/cmdline").decode().split("\0") for p in pids]
                name = next((n for cmd in cmds if (n := self.name_of(cmd))), None)
                if name:
                    now = time.perf_counter()
                    seen = self.named.setdefault(name, {"first": now, "last": now, "peak_rss": 0})
                    seen["last"], seen["peak_rss"] = now, max(seen["peak_rss"], rss)
                time.sleep(0.02)
            log.seek(0)
            tail = log.read().decode(errors="replace")[-4000:]
        return time.perf_counter() - started, proc.returncode, tail

    def check(self, args: list[str], cwd: Path, env: dict[str, str]) -> float:
        """Wall seconds of a command that must succeed; exits with its output if it fails."""
        seconds, status, tail = self.run(args, cwd, env)
        if status != 0:
            sys.exit(f"{' '.join(args)} failed (exit {status}):\n{tail}")
        return seconds


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """Start a server command (its port appended by the caller) and wait for /ping."""
    port = free_port()
    proc = subprocess.Popen(
        [a.replace("{port}", str(port)) for a in args],
        cwd=cwd,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"server {args} did not start:\n{log.read_text()}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    """Stop the server and its uvicorn children."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def post(conn: http.client.HTTPConnection, body: bytes) -> bytes:
    """One POST /invocations of a JSON body on a kept-alive connection, its answer; exits on a non-200."""
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    if response.status != 200:
        sys.exit(f"request failed with {response.status}: {answer[:300]!r}")
    return answer


def latency(port: int, n: int, body: bytes, warm: int = 50) -> tuple[float, float]:
    """p50 and p99 in ms of n sequential requests of one body on a kept-alive connection, after `warm` untimed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)  # a wide batch can take seconds
    for _ in range(warm):
        post(conn, body)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        post(conn, body)
        times.append(time.perf_counter() - t0)
    conn.close()
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)
