"""A warm interpreter for DVC's stages: each `python -m pipeline <stage>` forked from it with the heavy imports done.

A small `dvc repro` is mostly imports: each stage that records to MLflow is a new interpreter importing MLflow,
torch, scikit-learn and matplotlib, seconds apiece, to do a fraction of a second of work. So, when DVC runs a stage
(DVC_STAGE is set), `python -m pipeline` first offers its command to a server that has imported all of that once
(a command typed by hand, `pipeline predict` after `dvc repro` say, uses a server already running but starts none):
the server forks, and the fork takes the command's argv, working directory, environment, umask and its stdin,
stdout and stderr (passed over a unix socket), runs the command as `python -m pipeline` would, and sends back
its exit code, which the command exits with. SIGINT, SIGTERM and SIGHUP sent to the command are forwarded to the
fork; if the command dies without forwarding (SIGKILL), the fork sees its socket close and stops as on SIGHUP.

multiprocessing's own forkserver cannot do this: it lives and dies with one parent process, and each DVC stage is
a new process. Gradle's daemon and nailgun are the same idea for the JVM.

No server: the command runs in its own interpreter, as without this module, and a stage starts a server for the
stages after it. The server belongs to one key: the interpreter, sys.path, the package's folder and the bytes of every
file in it, the installed packages' folders and the environment less DVC's own variables and the shell's
bookkeeping (_SHELL); so edited code or a changed environment never runs in a server that imported something
else. It exits after IDLE_S seconds without a command, or on SIGTERM, SIGHUP or SIGINT, removing its socket, lock
and log; a server starting removes what servers killed outright (SIGKILL, a machine stopped) left in the folder.
PIPELINE_FORKSERVER=0 turns all of this off (each stage its own interpreter, as before).
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import importlib
import io
import json
import os
import pkgutil
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from pipeline import child, interrupts

IDLE_S = 120  # a sweep's next `dvc exp run` comes sooner; an idle server holds a few hundred MiB
STALE_S = 60  # a lock no server holds for this long is a dead server's (a starting one takes it within a second)
STOPS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
SWITCH = "PIPELINE_FORKSERVER"
# What the stages import on their paths besides this package (each module imports the rest lazily). torch._dynamo:
# torch.optim's first optimizer imports it (train with lbfgs or adam), seconds before the first epoch otherwise;
# git and opentelemetry's metrics: MLflow's run creation (the commit, read with GitPython) and its tracing set-up.
PRELOAD = (
    "mlflow", "mlflow.pytorch", "mlflow.pyfunc", "mlflow.models", "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store", "sqlalchemy.dialects.sqlite", "git", "opentelemetry.sdk.metrics",
    "filelock", "torch", "torch._dynamo", "sklearn.linear_model", "sklearn.metrics", "matplotlib.figure",
    "matplotlib.backends.backend_agg", "pandas", "pyarrow.parquet", "pyarrow.csv",
)  # fmt: skip
SERVERS = ("serve", "ui", "server")  # commands that run until stopped: a process of the user's own, as typed
SERVE = "--serve-warm"  # `python -m pipeline --serve-warm SOCKET`: the server, as forward() starts it
_INT = struct.Struct("!i")
_PATH_MAX = 107  # a unix socket's path, in bytes, on Linux
# What a shell changes from one command to the next and no import reads (the working directory is in sys.path)
_SHELL = {"OLDPWD", "PWD", "SHLVL", "_", "COLUMNS", "LINES"}


def forward(argv: list[str], env: dict[str, str]) -> int | None:
    """Run this command in a fork of the warm server and return its exit code; None: run it here.

    A DVC stage starts a server for later commands when none is running for this key.
    """
    by_hand = not env.get("DVC_STAGE")
    if env.get(SWITCH) == "0" or "LOCAL_RANK" in env or (by_hand and len(argv) > 1 and argv[1] in SERVERS):
        return None  # torchrun's ranks, and a server for the terminal, run in their own interpreter
    folder = _folder()
    if folder is None:
        return None
    path = folder / f"{_key(env)}.sock"
    if len(os.fsencode(path)) > _PATH_MAX - 12:  # bind() refuses longer socket paths (TMPDIR too long)
        return None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
    except OSError:
        sock.close()
        if not by_hand:  # a command typed in a shell leaves nothing running after it
            _start(path, env)
        return None
    with sock:
        return _client(sock, argv, env)


def _folder() -> Path | None:
    """The folder for server sockets, private to this user; None if it is not (then no server)."""
    folder = Path(tempfile.gettempdir()) / f"pipeline-forkserver-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.stat()
    except OSError:
        return None
    return folder if st.st_uid == os.getuid() and not st.st_mode & 0o077 else None


def _key(env: dict[str, str]) -> str:
    """What a server must share with a command to run it: interpreter, import path, this package's bytes, env."""
    import pipeline

    digest = hashlib.sha256()
    package = Path(pipeline.__path__[0]).resolve()
    kept = sorted((k, v) for k, v in env.items() if not k.startswith("DVC_") and k not in _SHELL)
    # pip adds and removes folders in site-packages, which changes its mtime
    installed = [(p, os.stat(p).st_mtime_ns) for p in sorted({sysconfig.get_path(n) for n in ("purelib", "platlib")})]
    # The fork keeps the server's limits (`ulimit -v`, open files...): a command with others needs its own server.
    limits = [resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_")]
    digest.update(json.dumps([sys.executable, sys.version, sys.path, str(package), kept, installed, limits]).encode())
    for file in sorted(package.rglob("*.py")):
        digest.update(str(file.relative_to(package)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def _start(path: Path, env: dict[str, str]) -> None:
    """Start a server for this key in the background, unless one is already starting."""
    lock = path.with_suffix(".lock")
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a server holds it: starting, or running with its socket just replaced
    server_env = {k: v for k, v in env.items() if not k.startswith("DVC_")}
    with open(path.with_suffix(".log"), "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", SERVE, str(path)], env=server_env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True, close_fds=True,
        )  # fmt: skip


def _client(sock: socket.socket, argv: list[str], env: dict[str, str]) -> int:
    """Hand the command to the server; forward signals to the fork that runs it (Ctrl-Z too); its exit code."""
    pid: list[int] = []
    pending: list[int] = []

    def relay(signum: int, frame: FrameType | None) -> None:
        if not pid:
            pending.append(signum)
            return
        try:
            os.kill(pid[0], signum)
        except ProcessLookupError:
            pass  # it has just ended; its exit code is on the way

    def suspend(signum: int, frame: FrameType | None) -> None:  # Ctrl-Z: stop the fork, then this process
        relay(signal.SIGSTOP, frame)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)

    def resume(signum: int, frame: FrameType | None) -> None:  # fg or bg: the fork goes on too
        signal.signal(signal.SIGTSTP, suspend)
        relay(signal.SIGCONT, frame)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, relay)
    signal.signal(signal.SIGTSTP, suspend)
    signal.signal(signal.SIGCONT, resume)
    fds = [fd for fd in (0, 1, 2) if _is_open(fd)]
    request = {"argv": argv, "cwd": os.getcwd(), "env": env, "umask": _umask(), "fds": fds, "path": sys.path}
    body = json.dumps(request).encode()
    socket.send_fds(sock, [b"r"], fds)
    sock.sendall(_INT.pack(len(body)) + body)
    answer = _recv_int(sock)
    if answer is None:  # the server took the socket but never forked: it is stopping
        print("error: the warm pipeline server did not take the command; run it again", file=sys.stderr)
        return 1
    pid.append(answer)
    for signum in pending:
        relay(signum, None)
    code = _recv_int(sock)
    if code is None:
        print(f"error: the stage's process {pid[0]} ended without an exit status (killed?)", file=sys.stderr)
        return 1
    return code


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Exactly `size` bytes from the socket; None if it closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _recv_int(sock: socket.socket) -> int | None:
    data = _recv_exact(sock, _INT.size)
    return None if data is None else _INT.unpack(data)[0]


def serve(path: Path, command: Callable[[], int]) -> None:
    """The server: import what the stages need, then fork a process per command until IDLE_S pass without one.

    `command` runs the command in sys.argv and returns its exit code (pipeline.__main__'s).
    """
    lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (held for the server's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server has this key
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")  # who holds it: `kill $(cat <key>.lock)` stops the server
    lock.flush()
    stopped: list[int] = []
    for signum in STOPS:  # the loop ends at its next turn, and tidies up after itself
        signal.signal(signum, lambda signum, frame: stopped.append(signum))
    _sweep(path)
    started = time.monotonic()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temp = path.with_name(f"{path.name}.{os.getpid()}")
    listener.bind(str(temp))  # first: a server that cannot serve fails before seconds of imports
    import pipeline

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # GitPython without a git executable, say: the stage meets it as it would unforked
            pass
    for module in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if module.name != "pipeline.__main__":
            importlib.import_module(module.name)
    # The imports' objects live as long as the server: out of the collector's way in every fork. A full collection
    # in a fork otherwise walks them all, writing to each one's header, and so copies the pages that hold them.
    gc.freeze()
    listener.listen(16)
    os.replace(temp, path)  # clients see the socket only once it accepts
    _log(f"pid {os.getpid()} serving {path.name} after {time.monotonic() - started:.1f} s of imports")
    own = os.stat(path).st_ino
    children: set[int] = set()
    last = time.monotonic()
    while True:
        ready, _, _ = select.select([listener], [], [], 1.0)
        while children:
            done, _ = os.waitpid(-1, os.WNOHANG)
            if not done:
                break
            children.discard(done)
            last = time.monotonic()
        if ready:
            conn, _ = listener.accept()
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != os.getuid():
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                for signum in STOPS:
                    signal.signal(signum, signal.SIG_DFL)  # until the command installs its own
                listener.close()
                _run_forked(conn, command)  # never returns
            conn.close()
            _log(f"forked {pid}")
            children.add(pid)
            last = time.monotonic()
        elif not children and time.monotonic() - last > IDLE_S:
            _log(f"idle for {IDLE_S} s: exiting")
            break
        if stopped:
            _log(f"{signal.Signals(stopped[0]).name}: exiting")  # commands running in forks carry on
            break
    try:
        if os.stat(path).st_ino == own:
            path.unlink()
    except OSError:
        pass
    # Still holding the lock: a command that opened this file now fails to lock it and runs in its own
    # interpreter; one that opens the path afterwards makes a new file and starts a new server.
    path.with_suffix(".lock").unlink(missing_ok=True)
    path.with_suffix(".log").unlink(missing_ok=True)


def _sweep(own: Path) -> None:
    """Remove the socket, lock and log of every server in the folder that died without tidying up."""
    for lock in own.parent.glob("*.lock"):
        if lock.stem == own.stem:
            continue
        try:
            with open(lock, "a") as fh:
                if time.time() - os.fstat(fh.fileno()).st_mtime < STALE_S:
                    continue  # perhaps a server starting
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while its server lives
                for leftover in (*lock.parent.glob(f"{lock.stem}.sock*"), lock.with_suffix(".log"), lock):
                    leftover.unlink(missing_ok=True)
        except OSError:
            continue


def _log(message: str) -> None:
    """A line of the server's log (its stdout: <key>.log beside the socket)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def _run_forked(conn: socket.socket, command: Callable[[], int]) -> None:
    """In the fork: become the command (its fds, cwd, environment, argv), run it, send its exit code, exit."""
    code = 1
    try:
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        size = _recv_int(conn)
        body = None if size is None else _recv_exact(conn, size)
        if body is None:
            return  # the command went away before saying what to run
        request = json.loads(body)
        for fd, target in zip(fds, request["fds"], strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.umask(request["umask"])
        sys.argv[:] = request["argv"]
        sys.path[:] = request["path"]
        _reopen_stdio(request["env"])
        child.fork_is_safe()  # imports done, one thread, nothing opened: the stage's child can be a fork too
        import numpy as np

        np.random.seed()  # as a new interpreter would be; `random` reseeds itself after a fork
        interrupts.install()  # before the command learns this pid: whatever it forwards is handled
        _watch_client(conn)
        conn.sendall(_INT.pack(os.getpid()))
        code = command()
    except interrupts.Interrupted as stop:  # before the command got going: nothing was recorded
        code = 128 + stop.signum
    finally:
        # The command exits once it has the code, and its socket closing must not read as "killed" (SIGIO).
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(_INT.pack(code))
        except BaseException:  # the command went away: nobody to tell
            pass
        os._exit(code)


def _reopen_stdio(env: dict[str, str]) -> None:
    """sys.stdin/stdout/stderr on the command's fds, buffered as a new interpreter would buffer them."""
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        old = getattr(sys, name)
        if mode == "w" and old is not None:
            old.flush()
        if not _is_open(fd):
            setattr(sys, name, None)
            continue
        tty = os.isatty(fd)
        raw = open(fd, mode + "b", closefd=False)  # noqa: SIM115 (sys.stdout's own file)
        stream = io.TextIOWrapper(
            raw, encoding=old.encoding if old else "utf-8", errors=old.errors if old else "strict",
            line_buffering=tty or name == "stderr", write_through=unbuffered,
        )  # fmt: skip
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _watch_client(conn: socket.socket) -> None:
    """SIGIO when the command's socket closes (the command killed outright): stop as a closed terminal would."""

    def gone(signum: int, frame: FrameType | None) -> None:
        try:
            if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        interrupts.signalled(signal.SIGHUP)

    signal.signal(signal.SIGIO, gone)
    fcntl.fcntl(conn.fileno(), fcntl.F_SETOWN, os.getpid())
    flags = fcntl.fcntl(conn.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(conn.fileno(), fcntl.F_SETFL, flags | os.O_ASYNC)
